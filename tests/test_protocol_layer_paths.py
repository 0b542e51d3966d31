"""The hot paths of the protocol layers (content, version, trace, tenant), restructured for
speed (issue 18): each is checked against what the slower spelling gave."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from starlette.types import Receive, Scope, Send

from aduib_asgi import codecs as codecs_module
from aduib_asgi.codecs import default_registry
from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import trace as trace_module
from aduib_asgi.middleware.content import ContentNegotiationMiddleware
from aduib_asgi.middleware.tenant import (
    TenantScopeMiddleware,
    bind_tenant,
    get_tenant,
    tenant_setting,
    unbind_tenant,
)
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware
from aduib_asgi.observability.metrics import RpcMetrics
from aduib_asgi.responses import send_error
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, rpc_app

pytestmark = pytest.mark.anyio

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
_TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


# -- trace: id formatting -------------------------------------------------------------


@pytest.mark.parametrize("v", [1, 0xABC, int(CALLER_SPAN, 16), 2**64 - 1])
def test_span_id_hex_is_the_format_spelling(v: int) -> None:
    assert trace_module._hex64(v) == f"{v:016x}"


@pytest.mark.parametrize("v", [1, int(CALLER_TRACE, 16), 2**64, 2**128 - 1])
def test_trace_id_hex_is_the_format_spelling(v: int) -> None:
    assert trace_module._hex128(v) == f"{v:032x}"


def test_ids_out_of_range_are_spelled_as_format_would() -> None:
    """An id generator out of its range: the old ``f"{v:032x}"`` text, not an error."""
    assert trace_module._hex128(2**128) == f"{2**128:032x}"
    assert trace_module._hex64(2**64 + 5) == f"{2**64 + 5:016x}"


async def _plain(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/x", "headers": list(headers)}


async def _run(app: Any, scope: dict[str, Any]) -> tuple[RequestContext, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return scope["aduib.context"], sent


def _traceresponse(sent: list[dict[str, Any]]) -> str:
    (value,) = [v for k, v in sent[0]["headers"] if k == b"traceresponse"]
    return str(value.decode())


async def test_new_trace_ids_come_from_one_draw_and_match_the_header() -> None:
    ctx, sent = await _run(TracePropagationMiddleware(_plain), _scope())
    m = _TRACERESPONSE.fullmatch(_traceresponse(sent))
    assert m is not None
    assert (m[1], m[2], m[3]) == (ctx.trace_id, ctx.span_id, "01")
    assert int(m[1], 16) and int(m[2], 16)
    assert ctx.parent_span_id is None and ctx.sampled is True


async def test_new_trace_redraws_when_a_half_of_the_draw_is_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-draw fast path falls back to drawing again, as ``_new_ids`` always did."""
    good = (0x1234 << 64) | 0x5678
    draws = iter([0x1234 << 64, 0x5678, good])  # span half zero, trace half zero, then good
    monkeypatch.setattr(trace_module, "getrandbits", lambda bits: next(draws))
    ctx, sent = await _run(TracePropagationMiddleware(_plain), _scope())
    assert ctx.trace_id == f"{0x1234:032x}" and ctx.span_id == f"{0x5678:016x}"
    assert _traceresponse(sent) == f"00-{ctx.trace_id}-{ctx.span_id}-01"


async def test_header_parent_without_sdk_keeps_trace_and_formats_parent_span() -> None:
    scope = _scope((b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00".encode()))
    ctx, sent = await _run(TracePropagationMiddleware(_plain), scope)
    assert (ctx.trace_id, ctx.parent_span_id, ctx.sampled) == (CALLER_TRACE, CALLER_SPAN, False)
    assert _traceresponse(sent) == f"00-{CALLER_TRACE}-{ctx.span_id}-00"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


@pytest.mark.parametrize("traceparent", [None, f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                                         f"00-{CALLER_TRACE}-{CALLER_SPAN}-03"])
async def test_sdk_span_ids_are_the_context_ids_and_the_header(
    provider: TracerProvider, exporter: InMemorySpanExporter, traceparent: str | None
) -> None:
    """Parent from the propagator's context, rebuilt from ids (flags 03), or none."""
    headers = [] if traceparent is None else [(b"traceparent", traceparent.encode())]
    ctx, sent = await _run(TracePropagationMiddleware(_plain, tracer_provider=provider),
                           _scope(*headers))
    (span,) = exporter.get_finished_spans()
    assert ctx.trace_id == f"{span.context.trace_id:032x}"
    assert ctx.span_id == f"{span.context.span_id:016x}"
    assert _traceresponse(sent) == f"00-{ctx.trace_id}-{ctx.span_id}-01"
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    if traceparent is None:
        assert span.parent is None and ctx.parent_span_id is None
    else:
        assert span.parent is not None and span.parent.is_remote
        assert ctx.trace_id == CALLER_TRACE and ctx.parent_span_id == CALLER_SPAN
        assert int(span.parent.trace_flags) == 1


async def test_sdk_span_sees_the_app_exception(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def boom(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await _run(TracePropagationMiddleware(boom, tracer_provider=provider), _scope())
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.aduib_rpc.error_code"] == 5000
    assert [e.name for e in span.events] == ["exception"]


async def test_sdk_span_dropped_by_the_sampler_still_propagates_and_records_the_code(
    exporter: InMemorySpanExporter,
) -> None:
    """A non-recording span: no status wrapper, no attributes; ids, header and the error
    code (read by the circuit breaker further in) as with a recording one."""
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(scope, send, RpcError(4001, "no such method"), ctx=scope[CONTEXT_KEY])

    ctx, sent = await _run(TracePropagationMiddleware(refuse, tracer_provider=provider),
                           _scope())
    assert exporter.get_finished_spans() == ()
    assert sent[0]["status"] == 404
    assert ctx.extras["aduib.error_code"] == 4001
    assert ctx.sampled is False and ctx.trace_id is not None and ctx.span_id is not None
    assert _traceresponse(sent) == f"00-{ctx.trace_id}-{ctx.span_id}-00"
    assert b'"trace_id":"' + ctx.trace_id.encode() in sent[1]["body"]


async def test_sdk_span_dropped_by_the_sampler_still_feeds_the_metrics_status() -> None:
    reader = InMemoryMetricReader()
    metrics = RpcMetrics(MeterProvider(metric_readers=[reader]))
    layer = TracePropagationMiddleware(_plain, tracer_provider=TracerProvider(sampler=ALWAYS_OFF),
                                       metrics=metrics)
    await _run(layer, _scope())
    data = reader.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "rpc.server.duration" for p in m.data.data_points]
    assert [p.attributes["http.response.status_code"] for p in points] == [200]
    assert metrics.active.value == 0


# -- tenant: the overrides contextvar is set only when it changes --------------------


def _tenant_app(seen: list[tuple[Any, ...]], **kw: Any) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((get_tenant(), tenant_setting("rate_limit", "default-limit")))
        await _plain(scope, receive, send)

    return TenantScopeMiddleware(app, **kw)


async def test_tenant_without_overrides_reads_defaults_and_leaves_nothing_bound() -> None:
    seen: list[tuple[Any, ...]] = []
    app = _tenant_app(seen, overrides={"big": {"rate_limit": "1000/s"}})
    await _run(app, _scope((b"x-tenant-id", b"acme")))
    await _run(app, _scope((b"x-tenant-id", b"big")))
    await _run(app, _scope((b"x-tenant-id", b"acme")))
    assert seen == [("acme", "default-limit"), ("big", "1000/s"), ("acme", "default-limit")]
    assert get_tenant() is None and tenant_setting("rate_limit", "d") == "d"


async def test_tenant_without_overrides_shadows_an_outer_binding_with_overrides() -> None:
    seen: list[tuple[Any, ...]] = []
    app = _tenant_app(seen, default="anon")
    tokens = bind_tenant("outer", {"rate_limit": "5/s"})
    try:
        await _run(app, _scope((b"x-tenant-id", b"acme")))
        await _run(app, _scope())  # the default tenant
        assert (get_tenant(), tenant_setting("rate_limit")) == ("outer", "5/s")  # restored
    finally:
        unbind_tenant(*tokens)
    assert seen == [("acme", "default-limit"), ("anon", "default-limit")]


async def test_tenant_layer_refuses_before_the_app_and_unbinds_after_errors() -> None:
    app = rpc_app([Layer.of(TenantScopeMiddleware, default="anon")])
    async with client_for(app) as c:
        bad = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"X-Tenant-ID": "b d"})
        failed = await c.post(RPC, json=call("rpc.v2/T/fail", {"code": 4001}))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 2003
    assert failed.status_code == 404
    assert get_tenant() is None


# -- version: header negotiation only when a header asks -------------------------------


@pytest.mark.parametrize(("headers", "answer"), [
    ([], None),
    ([(b"aduib-rpc-version", b"1.0")], b"1.0"),
    ([(b"aduib-rpc-supported-versions", b"1.0, 2.0, 9.9")], b"2.0"),
    ([(b"aduib-rpc-supported-versions", b"1.0"), (b"aduib-rpc-version", b"2.0")], b"1.0"),
])
async def test_version_from_headers(headers: list[tuple[bytes, bytes]],
                                    answer: bytes | None) -> None:
    ctx, sent = await _run(VersionNegotiationMiddleware(_plain), _scope(*headers))
    got = [v for k, v in sent[0].get("headers", []) if k == b"aduib-rpc-negotiated-version"]
    assert got == ([] if answer is None else [answer])
    assert ctx.negotiated_version == (None if answer is None else answer.decode())


async def test_version_from_headers_without_a_common_version_is_1001() -> None:
    _ctx, sent = await _run(VersionNegotiationMiddleware(_plain),
                           _scope((b"aduib-rpc-version", b"7.0")))
    assert sent[0]["status"] == 400
    assert b'"code":1001' in sent[1]["body"]


# -- content: the missing-extra lookup, cached with the Content-Type ----------------------


async def test_plain_path_body_of_a_missing_extra_is_415_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not passed through to the app as an unknown type: the cached lookup names the extra."""
    def unavailable() -> Any:
        raise ImportError("No module named 'google.protobuf'")

    monkeypatch.setattr(codecs_module, "_load_protobuf", unavailable)
    called: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["path"])
        await _plain(scope, receive, send)

    layer = ContentNegotiationMiddleware(app, registry=default_registry())
    async with client_for(layer) as c:
        for _ in range(2):
            r = await c.post("/plain", content=b"\x0a\x00",
                             headers={"content-type": "application/protobuf"})
            assert r.status_code == 415 and "aduib-asgi[protobuf]" in r.json()["error"]["message"]
        r = await c.post("/plain", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 200
    assert called == ["/plain"]
    assert layer.request_type(b"application/protobuf") == (None, "application/protobuf")
