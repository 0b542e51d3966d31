"""TracePropagationMiddleware through the real stack, with and without an OTel SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aduib_asgi.context import RequestContext
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, rpc_app

pytestmark = pytest.mark.anyio

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
ENV_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ENV_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


def _hex(v: int, n: int) -> str:
    return f"{v:0{n}x}"


# -- without an SDK: ids are generated and propagated ------------------------------------


async def test_traceparent_header_is_continued_without_sdk() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    body = r.json()
    seen, tc = body["result"], body["trace_context"]
    assert tc["trace_id"] == CALLER_TRACE == seen["trace_id"]
    assert tc["parent_span_id"] == CALLER_SPAN == seen["parent_span_id"]
    assert tc["span_id"] == seen["span_id"] != CALLER_SPAN
    assert len(tc["span_id"]) == 16 and int(tc["span_id"], 16) != 0
    assert tc["sampled"] is True
    assert r.headers["traceresponse"] == f"00-{CALLER_TRACE}-{tc['span_id']}-01"


async def test_envelope_trace_context_wins_over_header() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    env = call("rpc.v2/T/context",
               trace_context={"trace_id": ENV_TRACE, "span_id": ENV_SPAN, "sampled": True})
    async with client_for(app) as c:
        r = await c.post(RPC, json=env, headers={"traceparent": TRACEPARENT})
    tc = r.json()["trace_context"]
    assert tc["trace_id"] == ENV_TRACE
    assert tc["parent_span_id"] == ENV_SPAN
    assert r.json()["result"]["trace_id"] == ENV_TRACE


@pytest.mark.parametrize("bad", [
    "garbage",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
])
async def test_invalid_traceparent_starts_a_new_trace(bad: str) -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"traceparent": bad})
    assert r.status_code == 200
    tc = r.json()["trace_context"]
    assert tc["trace_id"] != CALLER_TRACE.lower() and len(tc["trace_id"]) == 32
    assert "parent_span_id" not in tc


async def test_invalid_envelope_trace_context_is_ignored_and_header_used() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    env = call("rpc.v2/T/context", trace_context={"trace_id": "xyz", "span_id": "1"})
    async with client_for(app) as c:
        r = await c.post(RPC, json=env, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    assert r.json()["trace_context"]["trace_id"] == CALLER_TRACE


async def test_no_caller_trace_gives_fresh_distinct_ids() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    async with client_for(app) as c:
        a = (await c.post(RPC, json=call("rpc.v2/T/context"))).json()["trace_context"]
        b = (await c.post(RPC, json=call("rpc.v2/T/context"))).json()["trace_context"]
    assert a["trace_id"] != b["trace_id"] and a["span_id"] != b["span_id"]
    assert "parent_span_id" not in a


async def test_baggage_from_header_merged_with_envelope_and_tracestate_kept() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers={
            "traceparent": TRACEPARENT, "tracestate": "vendor=abc", "baggage": "user=bob,k=1"})
        env = call("rpc.v2/T/context", trace_context={
            "trace_id": ENV_TRACE, "span_id": ENV_SPAN, "baggage": {"k": "env"}})
        r2 = await c.post(RPC, json=env, headers={"baggage": "user=bob,k=1"})
    assert r.json()["trace_context"]["baggage"] == {"user": "bob", "k": "1"}
    assert r2.json()["trace_context"]["baggage"] == {"user": "bob", "k": "env"}


async def test_unsampled_caller_flags_are_kept() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"),
                         headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})
    assert r.json()["trace_context"]["sampled"] is False
    assert r.headers["traceresponse"].endswith("-00")


async def test_error_responses_carry_trace_context() -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/fail", {"code": 4001}),
                         headers={"traceparent": TRACEPARENT})
    assert r.status_code == 404
    assert r.json()["trace_context"]["trace_id"] == CALLER_TRACE
    assert "traceresponse" in r.headers


async def test_works_alone_around_plain_starlette_app() -> None:
    async def view(request: Request) -> JSONResponse:
        ctx: RequestContext = request.scope["aduib.context"]
        return JSONResponse({"trace_id": ctx.trace_id, "parent": ctx.parent_span_id})

    app = TracePropagationMiddleware(Starlette(routes=[Route("/x", view)]))
    async with client_for(app) as c:
        r = await c.get("/x", headers={"traceparent": TRACEPARENT})
    assert r.json() == {"trace_id": CALLER_TRACE, "parent": CALLER_SPAN}
    assert r.headers["traceresponse"].startswith(f"00-{CALLER_TRACE}-")


# -- with an SDK: one real server span, child of the caller ------------------------------


async def test_sdk_server_span_is_child_of_caller(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware, tracer_provider=provider),
                   Layer.of(TenantScopeMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"),
                         headers={"traceparent": TRACEPARENT, "x-tenant-id": "acme"})
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    span = spans[0]
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.is_remote
    assert _hex(span.parent.span_id, 16) == CALLER_SPAN
    assert _hex(span.context.trace_id, 32) == CALLER_TRACE
    tc = r.json()["trace_context"]
    assert tc["span_id"] == _hex(span.context.span_id, 16)
    assert tc["parent_span_id"] == CALLER_SPAN
    # the span is the current OTel span inside the handler
    assert r.json()["result"]["otel_span_id"] == tc["span_id"]
    assert span.name == "rpc.v2/T/context"
    assert span.attributes["rpc.method"] == "rpc.v2/T/context"
    assert span.attributes["rpc.service"] == "T"
    assert span.attributes["rpc.system"] == "aduib_rpc"
    assert span.attributes["aduib.tenant_id"] == "acme"
    assert span.attributes["http.response.status_code"] == 200
    assert "rpc.aduib_rpc.error_code" not in span.attributes


async def test_sdk_envelope_parent_wins(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware, tracer_provider=provider)])
    env = call("rpc.v2/T/echo", trace_context={"trace_id": ENV_TRACE, "span_id": ENV_SPAN})
    async with client_for(app) as c:
        await c.post(RPC, json=env, headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    assert _hex(span.context.trace_id, 32) == ENV_TRACE
    assert span.parent is not None and _hex(span.parent.span_id, 16) == ENV_SPAN


async def test_sdk_span_records_error_codes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware, tracer_provider=provider)], debug=False)
    async with client_for(app) as c:
        r1 = await c.post(RPC, json=call("rpc.v2/T/fail", {"code": 4001}))
        r2 = await c.post(RPC, json=call("rpc.v2/T/crash"))
    assert (r1.status_code, r2.status_code) == (404, 500)
    s1, s2 = exporter.get_finished_spans()
    assert s1.attributes["rpc.aduib_rpc.error_code"] == 4001
    assert s1.status.status_code is StatusCode.UNSET
    assert s2.attributes["rpc.aduib_rpc.error_code"] == 5000
    assert s2.status.status_code is StatusCode.ERROR


async def test_sdk_new_root_span_without_caller(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = rpc_app([Layer.of(TracePropagationMiddleware, tracer_provider=provider)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"))
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert r.json()["trace_context"]["trace_id"] == _hex(span.context.trace_id, 32)


@pytest.mark.parametrize("flags", ["01", "00", "03"])
async def test_sdk_remote_parent_from_headers_keeps_flags_state_and_baggage(
    provider: TracerProvider, exporter: InMemorySpanExporter, flags: str
) -> None:
    """The header parent as the SDK sees it: ids, sampled flag only, tracestate, baggage."""
    from opentelemetry.trace import TraceState

    app = rpc_app([Layer.of(TracePropagationMiddleware, tracer_provider=provider)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers={
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}",
            "tracestate": "vendor=abc", "baggage": "user=bob"})
    assert r.status_code == 200
    tc = r.json()["trace_context"]
    assert tc["trace_id"] == CALLER_TRACE and tc["parent_span_id"] == CALLER_SPAN
    assert tc["baggage"] == {"user": "bob"}
    spans = exporter.get_finished_spans()
    if flags == "00":  # the caller did not sample: the parent-based sampler records nothing
        assert not spans and tc["sampled"] is False
        return
    (span,) = spans
    assert tc["sampled"] is True and tc["span_id"] == _hex(span.context.span_id, 16)
    assert span.parent is not None and span.parent.is_remote
    assert _hex(span.parent.span_id, 16) == CALLER_SPAN
    assert int(span.parent.trace_flags) == 1  # only the sampled bit is carried over
    assert span.parent.trace_state == TraceState([("vendor", "abc")])
    assert span.context.trace_state == TraceState([("vendor", "abc")])
