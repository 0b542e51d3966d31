"""The trace layer's path with an OTel SDK (issue 18, fourth round): one coroutine per
request, the status responder doing the context creator's header emission, and the
span's attributes, status and parent exactly as before."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode, get_current_span
from opentelemetry.util.types import Attributes
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.middleware.metrics import MetricsMiddleware
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.observability.metrics import RpcMetrics

pytestmark = pytest.mark.anyio

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def _scope(*headers: tuple[bytes, bytes], kind: str = "http") -> dict[str, Any]:
    scope: dict[str, Any] = {"type": kind, "path": "/x", "headers": list(headers)}
    if kind == "http":
        scope["method"] = "POST"
    return scope


async def _run(app: Any, scope: dict[str, Any]) -> tuple[RequestContext, list[Message], Any]:
    """Run ``app`` alone; returns the context, the messages and the server's ``send``."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return scope[CONTEXT_KEY], sent, send


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _app(status: int, seen: list[Any], *, late_header: bool = True) -> Any:
    """Answers ``status``; records the ``send`` it was given and the current span."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(send)
        seen.append(get_current_span())
        if late_header:  # a header asked for while the app runs: still on the response
            scope[CONTEXT_KEY].add_response_header(b"x-late", b"1")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _headers(message: Message) -> list[tuple[bytes, bytes]]:
    return list(message["headers"])


async def test_alone_with_sdk_one_wrapper_between_app_and_server() -> None:
    """Alone, the layer's status responder wraps the server's ``send`` itself and emits
    the context's response headers (was: a status responder around the creator's
    header emitter, two calls per message)."""
    provider, exporter = _provider()
    seen: list[Any] = []
    ctx, sent, server_send = await _run(
        TracePropagationMiddleware(_app(200, seen), tracer_provider=provider), _scope())
    assert seen[0].send is server_send
    headers = _headers(sent[0])
    assert headers[0] == (b"content-type", b"text/plain")
    assert [k for k, _ in headers].count(b"traceresponse") == 1
    assert (b"traceresponse", f"00-{ctx.trace_id}-{ctx.span_id}-01".encode()) in headers
    assert (b"x-late", b"1") in headers
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}
    (span,) = exporter.get_finished_spans()
    assert seen[1].get_span_context().span_id == span.context.span_id  # current in the app
    assert span.attributes == {"rpc.system": "aduib_rpc", "http.response.status_code": 200}
    assert span.status.status_code == StatusCode.UNSET
    assert span.kind == SpanKind.SERVER and span.name == "POST"


async def test_alone_with_metrics_no_sdk_one_wrapper_and_status_recorded() -> None:
    reader = InMemoryMetricReader()
    metrics = RpcMetrics(MeterProvider(metric_readers=[reader]))
    seen: list[Any] = []
    ctx, sent, server_send = await _run(
        TracePropagationMiddleware(_app(418, seen), metrics=metrics), _scope())
    assert seen[0].send is server_send
    headers = _headers(sent[0])
    assert (b"traceresponse", f"00-{ctx.trace_id}-{ctx.span_id}-01".encode()) in headers
    assert (b"x-late", b"1") in headers
    data = reader.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "rpc.server.duration" for p in m.data.data_points]
    assert [p.attributes["http.response.status_code"] for p in points] == [418]


async def test_metrics_layer_alone_shares_the_responder_one_wrapper_and_status() -> None:
    """MetricsMiddleware runs the same ``observe`` as the trace layer without an SDK:
    alone, its status responder also does the context creator's header emission."""
    reader = InMemoryMetricReader()
    metrics = RpcMetrics(MeterProvider(metric_readers=[reader]))
    seen: list[Any] = []
    _, sent, server_send = await _run(MetricsMiddleware(_app(418, seen), metrics=metrics),
                                      _scope())
    assert seen[0].send is server_send
    assert (b"x-late", b"1") in _headers(sent[0])
    data = reader.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "rpc.server.duration" for p in m.data.data_points]
    assert [p.attributes["http.response.status_code"] for p in points] == [418]


async def test_behind_a_context_creator_in_front_the_outer_send_is_kept() -> None:
    """Not the first layer: the ``send`` it wraps is not the creator's, left as is."""
    provider, exporter = _provider()
    seen: list[Any] = []
    inner = TracePropagationMiddleware(_app(200, seen), tracer_provider=provider)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        scope[CONTEXT_KEY] = RequestContext(raw_headers=scope["headers"])
        await inner(scope, receive, wrapped)

    _, sent, _ = await _run(outer, _scope())
    assert seen[0].send.__qualname__.endswith("wrapped")
    # no creator here: the context's headers are nobody's to emit but the creator's
    assert [k for k, _ in _headers(sent[0])] == [b"content-type"]
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 200


async def test_plain_500_sets_error_status_with_the_status_attribute_alone() -> None:
    provider, exporter = _provider()
    await _run(TracePropagationMiddleware(_app(503, [], late_header=False),
                                          tracer_provider=provider), _scope())
    (span,) = exporter.get_finished_spans()
    assert span.attributes == {"rpc.system": "aduib_rpc", "http.response.status_code": 503}
    assert span.status.status_code == StatusCode.ERROR


async def test_learnt_attributes_still_set_together_with_the_status() -> None:
    provider, exporter = _provider()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[CONTEXT_KEY].tenant_id = "acme"
        await _app(200, [], late_header=False)(scope, receive, send)

    await _run(TracePropagationMiddleware(app, tracer_provider=provider), _scope())
    (span,) = exporter.get_finished_spans()
    assert span.attributes == {"rpc.system": "aduib_rpc", "aduib.tenant_id": "acme",
                               "http.response.status_code": 200}


async def test_websocket_denial_status_and_headers_through_the_fused_responder() -> None:
    """A WebSocket handshake refused with a response: status on the span, our headers on
    the denial response."""
    provider, exporter = _provider()

    async def deny(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    ctx, sent, _ = await _run(TracePropagationMiddleware(deny, tracer_provider=provider),
                              _scope(kind="websocket"))
    assert sent[0]["type"] == "websocket.http.response.start"
    assert (b"traceresponse", f"00-{ctx.trace_id}-{ctx.span_id}-01".encode()) in sent[0]["headers"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "WEBSOCKET"
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 403


class _Recording(Sampler):
    """Samples everything; remembers the attributes and parent each decision saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], Any]] = []

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        sc = get_current_span(parent_context).get_span_context()
        self.seen.append((dict(attributes or {}), sc))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "recording"


async def test_sampler_sees_the_start_attributes_and_the_remote_parent() -> None:
    sampler = _Recording()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    scope = _scope((b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode()),
                   (b"tracestate", b"k=v"))
    ctx, _, _ = await _run(TracePropagationMiddleware(_app(200, [], late_header=False),
                                                      tracer_provider=provider), scope)
    ((attrs, parent),) = sampler.seen
    assert attrs == {"rpc.system": "aduib_rpc"}
    assert parent.is_remote and f"{parent.span_id:016x}" == CALLER_SPAN
    assert parent.trace_state.to_header() == "k=v"
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and f"{span.parent.trace_id:032x}" == CALLER_TRACE
    assert ctx.parent_span_id == CALLER_SPAN and ctx.tracestate == "k=v"
