"""Logs stamped with the request context, RPC metrics, Prometheus, and no credential leaks."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aduib_asgi.auth import BearerAuthenticator, Identity
from aduib_asgi.context import RequestContext, current_context
from aduib_asgi.demo.security import demo_auth_options
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.metrics import MetricsMiddleware
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.observability import (
    CONTEXT_FIELDS,
    JsonFormatter,
    RequestContextFilter,
    RpcMetrics,
    add_request_context,
    configure_logging,
)
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, make_registry, rpc_app

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    out: list[Any] = []
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out.extend(m.data.data_points)
    return out


def _full_stack(reader: InMemoryMetricReader, via: str = "trace", **auth: Any) -> Any:
    """Metrics recorded by the trace layer (as in the demo) or by the standalone layer."""
    registry = make_registry()
    metrics = RpcMetrics(MeterProvider(metric_readers=[reader]), tenant_attribute=True)
    standalone = [Layer.of(MetricsMiddleware, metrics=metrics)] if via == "layer" else []
    return rpc_app([
        *standalone,
        Layer.of(TracePropagationMiddleware, metrics=None if standalone else metrics),
        Layer.of(TenantScopeMiddleware, default="default"),
        Layer.of(AuthMiddleware, **{**demo_auth_options(registry), **auth}),
    ], registry)


async def test_one_request_log_record_metric_and_trace_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = InMemoryMetricReader()
    app = _full_stack(reader)
    caplog.handler.addFilter(RequestContextFilter())
    caplog.set_level(logging.INFO)
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/log", {"tag": "x"}, id="req-1"),
                         headers={"traceparent": TRACEPARENT, "X-Tenant-ID": "acme"})
    assert r.status_code == 200
    tc = r.json()["trace_context"]
    assert tc["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    (rec,) = [x for x in caplog.records if x.name == "tests.handler"]
    assert {k: getattr(rec, k) for k in CONTEXT_FIELDS} == {
        "request_id": "req-1", "trace_id": tc["trace_id"], "span_id": tc["span_id"],
        "tenant_id": "acme", "method": "rpc.v2/T/log"}
    (point,) = _points(reader, "rpc.server.requests")
    assert point.value == 1
    assert point.attributes == {"rpc.method": "rpc.v2/T/log", "rpc.aduib_rpc.code": 0,
                                "http.response.status_code": 200, "aduib.tenant_id": "acme"}


@pytest.mark.parametrize("via", ["trace", "layer"])
async def test_metrics_codes_durations_in_flight_and_rejections(via: str) -> None:
    reader = InMemoryMetricReader()
    app = _full_stack(reader, via)
    async with client_for(app) as c:
        await c.post(RPC, json=call("rpc.v2/T/echo"))
        await c.post(RPC, json=call("rpc.v2/T/echo"))
        await c.post(RPC, json=call("rpc.v2/T/fail", {"code": 4010}))
        await c.post(RPC, json=call("rpc.v2/Admin/secret"))
        await c.post(RPC, json=call("rpc.v2/T/echo"), headers={"X-Tenant-ID": "bad tenant"})
        await c.post(RPC, json=call("rpc.v2/Nope/x"))
        await c.post(RPC, json=call("rpc.v2/T/crash"))
    counts = {(p.attributes["rpc.method"], p.attributes.get("rpc.aduib_rpc.code")): p.value
              for p in _points(reader, "rpc.server.requests")}
    assert counts == {
        ("rpc.v2/T/echo", 0): 2, ("rpc.v2/T/fail", 4010): 1, ("rpc.v2/Admin/secret", 3000): 1,
        ("rpc.v2/T/echo", 2003): 1, ("other", 4002): 1, ("rpc.v2/T/crash", 5000): 1}
    rejections = {(p.attributes["rpc.method"], p.attributes["reason"]): p.value
                  for p in _points(reader, "rpc.server.rejections")}
    assert rejections == {("rpc.v2/Admin/secret", "unauthenticated"): 1,
                          ("rpc.v2/T/echo", "invalid_field_value"): 1}
    durations = _points(reader, "rpc.server.duration")
    assert sum(p.count for p in durations) == 7
    assert all(p.min >= 0 for p in durations)
    (active,) = _points(reader, "rpc.server.active_requests")
    assert active.value == 0


async def test_metric_duration_matches_response_metadata_clock() -> None:
    reader = InMemoryMetricReader()
    app = _full_stack(reader)
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/interleave", {"ms": 30}))
    (point,) = _points(reader, "rpc.server.duration")
    # Same start (context creation); the metric also covers sending the response.
    assert point.sum >= r.json()["metadata"]["duration_ms"] >= 30


async def test_prometheus_endpoint() -> None:
    app = rpc_app([Layer.of(MetricsMiddleware, endpoint="/metrics")])
    async with client_for(app) as c:
        await c.post(RPC, json=call("rpc.v2/T/echo"))
        r = await c.get("/metrics")
        post = await c.post("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'rpc_server_requests_total{' in r.text and 'rpc_method="rpc.v2/T/echo"' in r.text
    assert "rpc_server_duration_milliseconds_bucket" in r.text
    assert post.status_code == 405


async def test_metrics_alone_around_plain_app() -> None:
    reader = InMemoryMetricReader()

    async def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = MetricsMiddleware(Starlette(routes=[Route("/x", view)]),
                            meter_provider=MeterProvider(metric_readers=[reader]))
    async with client_for(app) as c:
        await c.get("/x")
        await c.get("/missing")
    got = {p.attributes["http.response.status_code"]: p.attributes.get("rpc.aduib_rpc.code")
           for p in _points(reader, "rpc.server.requests")}
    assert got == {200: 0, 404: None}


async def test_json_formatter_and_configure_logging() -> None:
    stream = io.StringIO()
    handler = configure_logging(logging.INFO, json_format=True, stream=stream)
    try:
        app = rpc_app([Layer.of(TracePropagationMiddleware),
                       Layer.of(TenantScopeMiddleware)])
        async with client_for(app) as c:
            await c.post(RPC, json=call("rpc.v2/T/log", {"tag": "j"}, id="jr"),
                         headers={"X-Tenant-ID": "jt"})
        logging.getLogger("tests.outside").warning("no request", extra={"k": 1})
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    inside = next(x for x in lines if x["logger"] == "tests.handler")
    assert inside["message"] == "handled j" and inside["level"] == "WARNING"
    assert (inside["request_id"], inside["tenant_id"], inside["method"]) == (
        "jr", "jt", "rpc.v2/T/log")
    assert len(inside["trace_id"]) == 32 and len(inside["span_id"]) == 16
    outside = next(x for x in lines if x["logger"] == "tests.outside")
    assert outside["request_id"] is None and outside["k"] == 1


def test_structlog_processor() -> None:
    ctx = RequestContext(request_id="r9")
    ctx.tenant_id, ctx.method, ctx.trace_id, ctx.span_id = "t", "rpc.v2/A/b", "a" * 32, "b" * 16
    token = current_context.set(ctx)
    try:
        out = add_request_context(None, "info", {"event": "x", "tenant_id": "explicit"})
    finally:
        current_context.reset(token)
    assert out == {"event": "x", "request_id": "r9", "trace_id": "a" * 32, "span_id": "b" * 16,
                   "tenant_id": "explicit", "method": "rpc.v2/A/b"}
    assert add_request_context(None, "info", {"event": "y"}) == {"event": "y"}


def test_json_formatter_exception() -> None:
    rec = logging.LogRecord("n", logging.ERROR, __file__, 1, "m %s", ("a",), None)
    try:
        raise ValueError("v")
    except ValueError:
        import sys
        rec.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "m a" and "ValueError: v" in out["exc_info"]


SECRETS = ("demo-admin-token", "sekrit-bearer-0001", "demo-key", "sekrit-key-0002",
           "sekrit-envelope-0003")


async def test_credentials_never_in_any_response_or_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tokens sent in every credential field, valid or not, never come back or get logged."""
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RequestContextFilter())

    def verify(token: str) -> Identity | None:
        if token == "demo-admin-token":
            return Identity("admin", ("admin",))
        if token == "sekrit-bearer-0001":
            raise RuntimeError(f"backend choked on {token}")  # must not leak either
        return None

    reader = InMemoryMetricReader()
    app = _full_stack(reader, authenticators=[
        BearerAuthenticator(verify),
        *[a for a in demo_auth_options(None)["authenticators"] if a.scheme == "api_key"]])
    responses = []
    async with client_for(app) as c:
        for method in ("rpc.v2/T/context", "rpc.v2/Admin/secret", "rpc.v2/T/crash",
                       "rpc.v2/T/fail", "rpc.v2/Nope/x"):
            for secret in ("demo-admin-token", "sekrit-bearer-0001"):
                responses.append(await c.post(RPC, json=call(method),
                                              headers={"Authorization": f"Bearer {secret}"}))
                responses.append(await c.post(RPC, json=call(
                    method, metadata={"auth": {"scheme": "bearer", "credentials": secret}})))
            for key in ("demo-key", "sekrit-key-0002"):
                responses.append(await c.post(RPC, json=call(method), headers={"X-API-Key": key}))
                responses.append(await c.post(RPC, json=call(
                    method, metadata={"auth": {"scheme": "api_key", "credentials": key}})))
            responses.append(await c.post(RPC, json=call(method, metadata={
                "auth": {"scheme": "mtls", "credentials": "sekrit-envelope-0003"}})))
            responses.append(await c.post(RPC, json=call(method, metadata={
                "auth": {"credentials": "sekrit-envelope-0003"}})))
    statuses = {r.status_code for r in responses}
    assert {200, 401, 403, 500}.issubset(statuses)  # both paths exercised, debug mode on
    assert any("debug" in r.json().get("error", {}) for r in responses)
    for r in responses:
        blob = r.text + repr(r.headers.raw)
        for s in SECRETS:
            assert s not in blob, (s, r.text)
    assert caplog.records
    for rec in caplog.records:
        text = caplog.handler.format(rec) + repr(rec.__dict__)
        for s in SECRETS:
            assert s not in text, (s, text)


async def test_client_chosen_method_names_never_become_metric_labels() -> None:
    """Requests refused before their method resolves are labelled only if it is registered."""
    reader = InMemoryMetricReader()
    app = _full_stack(reader)
    async with client_for(app) as c:
        for i in range(50):
            await c.post(RPC, json=call(f"rpc.v2/Junk/m{i}"), headers={"X-Tenant-ID": "bad t"})
        await c.post(RPC, json=call("rpc.v2/Admin/secret"), headers={"X-Tenant-ID": "bad t"})
    labels = {p.attributes["rpc.method"] for p in _points(reader, "rpc.server.requests")}
    assert labels == {"other", "rpc.v2/Admin/secret"}


async def test_ids_and_methods_ending_in_a_newline_are_not_valid() -> None:
    from aduib_asgi.models import RpcRequest, TraceContext

    with pytest.raises(ValueError):
        TraceContext(trace_id="a" * 32 + "\n", span_id="b" * 16)
    with pytest.raises(ValueError):
        TraceContext(trace_id="a" * 32, span_id="b" * 16 + "\n")
    with pytest.raises(ValueError):
        RpcRequest.model_validate({"aduib_rpc": "2.0", "method": "rpc.v2/T/echo\n"})
    with pytest.raises(ValueError):
        RpcRequest.model_validate({"aduib_rpc": "2.0\n", "method": "rpc.v2/T/echo"})
