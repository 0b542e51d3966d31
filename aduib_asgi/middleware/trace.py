"""TracePropagationMiddleware: continue the caller's trace; the server span is a child.

The caller's trace comes from the envelope's ``trace_context`` (when a layer in
front decoded the envelope) or, failing that, from the W3C ``traceparent`` /
``tracestate`` headers, extracted with OpenTelemetry's propagators; ``baggage``
comes from the W3C ``baggage`` header, overridden key by key by the envelope's
``trace_context.baggage``. Invalid values are ignored (a new trace starts).

With an OpenTelemetry SDK ``TracerProvider`` (passed in, or set globally) the
server span is a real OTel span, current while the request runs. Without one,
ids are still generated and propagated, cheaply. Either way the ids land on the
request context (``ctx.trace_id``/``span_id``/``parent_span_id``), so the
response envelope carries ``trace_context`` and the response a ``traceresponse``
header (``00-<trace_id>-<server span_id>-<flags>``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from random import getrandbits
from time import monotonic
from typing import Any, ClassVar

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import (
    REGISTRY_KEY,
    SERVER_VERSION,
    RequestContext,
    run_with_context,
)
from aduib_asgi.middleware.metrics import StatusResponder, observe
from aduib_asgi.observability.metrics import RpcMetrics, method_label, record_request
from aduib_asgi.observability.outcome import error_code, record_exception, watch_error_code

__all__ = ["TracePropagationMiddleware", "new_span_id", "new_trace_id"]

_TRACEPARENT = b"traceparent"
_BAGGAGE = b"baggage"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_SERVER = SpanKind.SERVER  # an Enum member looked up once, not per request
_MASK64 = (1 << 64) - 1


def _hex128(v: int) -> str:
    """``f"{v:032x}"``, the fast way for an id in range (the OTel SDK's always are)."""
    try:
        return v.to_bytes(16, "big").hex()
    except OverflowError:  # an id generator out of its range: as the format spells it
        return f"{v:032x}"


def _hex64(v: int) -> str:
    """``f"{v:016x}"``, the fast way for an id in range."""
    try:
        return v.to_bytes(8, "big").hex()
    except OverflowError:
        return f"{v:016x}"


def new_trace_id() -> str:
    """A random 128-bit trace id as 32 lowercase hex characters (never all zero)."""
    v = getrandbits(128)
    while not v:
        v = getrandbits(128)
    return v.to_bytes(16, "big").hex()


def new_span_id() -> str:
    """A random 64-bit span id as 16 lowercase hex characters (never all zero)."""
    v = getrandbits(64)
    while not v:
        v = getrandbits(64)
    return v.to_bytes(8, "big").hex()


def _new_ids() -> tuple[str, str]:
    """A new trace id and span id from one random draw (neither all zero)."""
    v = getrandbits(192)
    while not (v > _MASK64 and v & _MASK64):
        v = getrandbits(192)
    h = v.to_bytes(24, "big").hex()
    return h[:32], h[32:]


#: The header names OTel's propagators ask for, as the context's header index keys them.
_KEYS = {"traceparent": b"traceparent", "tracestate": b"tracestate", "baggage": b"baggage"}


class _ContextGetter(Getter[RequestContext]):
    """Lets OTel propagators read request headers straight from the context."""

    def get(self, carrier: RequestContext, key: str) -> list[str] | None:
        name = _KEYS.get(key)
        v = carrier.header(key.encode("latin-1") if name is None else name)
        return None if v is None else [v.decode("latin-1")]

    def keys(self, carrier: RequestContext) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.raw_headers]


_GETTER = _ContextGetter()


class TracePropagationMiddleware:
    """Continue W3C / envelope trace context; one server span per request.

    Precedence: envelope ``trace_context`` > ``traceparent`` header > new trace.
    ``tracer_provider`` defaults to the global one, looked up per request so an
    SDK configured after the app was built is picked up; with the API's no-op
    provider no OTel span is created. ``response_header`` names the header that
    carries the server span (empty to disable). ``metrics`` (an
    :class:`~aduib_asgi.observability.metrics.RpcMetrics`) also records the RPC
    server metrics for the requests that reach this layer.
    """

    layer_name = "trace"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_handle", "websocket": "_handle"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        response_header: str = "traceresponse",
        span_attributes: Mapping[str, str] | None = None,
        metrics: RpcMetrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self._provider = tracer_provider
        self._tracer: Tracer | None = (
            None if tracer_provider is None or _is_noop(tracer_provider)
            else tracer_provider.get_tracer("aduib_asgi", SERVER_VERSION)
        )
        # Looking for a global SDK provider (none given): at most once a second.
        self._global = tracer_provider is None
        self._recheck_at = 0.0
        self._response_header = response_header.lower().encode("latin-1") or None
        self._static_attrs: dict[str, Any] = {"rpc.system": "aduib_rpc",
                                               **(span_attributes or {})}
        self._tc = TraceContextTextMapPropagator()
        self._bg = W3CBaggagePropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _tracer_now(self) -> Tracer | None:
        tracer = self._tracer
        if tracer is not None or not self._global:
            return tracer
        now = monotonic()  # look for a global SDK provider at most once a second
        if now < self._recheck_at:
            return None
        self._recheck_at = now + 1.0
        provider = trace.get_tracer_provider()
        if _is_noop(provider):
            return None
        self._tracer = provider.get_tracer("aduib_asgi", SERVER_VERSION)
        return self._tracer

    def _handle(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> Awaitable[None]:
        """Fill the context's trace ids; the awaitable that runs the app (under a span).

        Not a coroutine itself: without an SDK and metrics the layer adds no frame.
        """
        tracer = self._tracer
        if tracer is None and self._global and monotonic() >= self._recheck_at:
            tracer = self._tracer_now()
        # -- the caller's trace: envelope first, then W3C headers ---------------------
        parent_tid: str | None = None
        parent_sid: str | None = None
        sampled = True
        state: TraceState | None = None
        bag: dict[str, str] | None = None
        remote: SpanContext | None = None  # the header's parent, as the propagator read it
        extracted: Context | None = None  # the propagator's context holding that parent
        header = ctx.header
        env = ctx.envelope
        tc = env.trace_context if env is not None else None
        if tc is not None:
            parent_tid, parent_sid, sampled = tc.trace_id, tc.span_id, tc.sampled
            if tc.baggage:
                bag = tc.baggage
        elif header(_TRACEPARENT) is not None:
            carried = self._tc.extract(ctx, getter=_GETTER)
            sc = trace.get_current_span(carried).get_span_context()
            if sc.is_valid:
                remote = sc
                # the propagator parsed 16 hex digits: in range, no fallback needed
                parent_sid = sc.span_id.to_bytes(8, "big").hex()
                flags = sc.trace_flags
                sampled = bool(flags & _SAMPLED)  # TraceFlags.sampled, without the call
                state = sc.trace_state
                if flags == (_SAMPLED if sampled else _NOT_SAMPLED):
                    extracted = carried  # the parent _traced would build from the ids
        if header(_BAGGAGE) is not None:
            found = otel_baggage.get_all(self._bg.extract(ctx, getter=_GETTER))
            if found:
                merged = {k: str(v) for k, v in found.items()}
                if bag:
                    merged.update(bag)
                bag = merged

        if tracer is None:
            if remote is not None:
                parent_tid = _hex128(remote.trace_id)
            if parent_tid is None:
                v = getrandbits(192)
                if v > _MASK64 and v & _MASK64:  # neither half all zero (the usual draw)
                    h = v.to_bytes(24, "big").hex()
                    tid, sid = h[:32], h[32:]
                else:
                    tid, sid = _new_ids()
            else:
                tid, sid = parent_tid, new_span_id()
            ctx.trace_id = tid
            ctx.span_id = sid
            ctx.parent_span_id = parent_sid
            ctx.sampled = sampled
            ctx.trace_baggage = bag
            if state:
                ctx.tracestate = state.to_header()
            if self._response_header is not None:
                ctx.response_headers.append((self._response_header, (
                    f"00-{tid}-{sid}-01" if sampled else f"00-{tid}-{sid}-00"
                ).encode("latin-1")))
            if self.metrics is None:
                return self.app(scope, receive, send)
            return observe(self.app, self.metrics, scope, receive, send, ctx)
        if remote is not None and extracted is None:
            parent_tid = _hex128(remote.trace_id)
        return self._traced(tracer, scope, receive, send, ctx, parent_tid, parent_sid,
                            sampled, state, bag, extracted)

    async def _traced(
        self,
        tracer: Tracer,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        parent_tid: str | None,
        parent_sid: str | None,
        sampled: bool,
        state: TraceState | None,
        bag: dict[str, str] | None,
        extracted: Context | None,
    ) -> None:
        """Run the app under the server span (child of the caller's); finish it.

        Fills the context's trace ids from the span. The response status is watched
        only for whoever reads it: a recording span (its status attribute) or the
        metrics; a span the sampler dropped records nothing, so it only ends.
        """
        if extracted is not None:  # the propagator's context: the same remote parent
            parent = extracted
        elif parent_tid is not None and parent_sid is not None:
            remote = SpanContext(
                trace_id=int(parent_tid, 16), span_id=int(parent_sid, 16), is_remote=True,
                trace_flags=_SAMPLED if sampled else _NOT_SAMPLED, trace_state=state,
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote), Context())
        else:
            parent = Context()
        if bag:
            for k, v in bag.items():
                parent = otel_baggage.set_baggage(k, v, parent)
        attrs = dict(self._static_attrs)
        # never a client-chosen name; no method known yet (nothing decoded it): no label
        label = None if ctx.method is None else method_label(ctx, scope.get(REGISTRY_KEY))
        if label is not None:
            attrs["rpc.method"] = label
            if ctx.service is not None:
                attrs["rpc.service"] = ctx.service
        if ctx.request_id is not None:
            attrs["aduib.request_id"] = ctx.request_id
        name = label or str(scope.get("method", "WEBSOCKET"))
        span = tracer.start_span(name, context=parent, kind=_SERVER, attributes=attrs)
        sc = span.get_span_context()
        ctx.trace_id = tid = _hex128(sc.trace_id)
        ctx.span_id = sid = _hex64(sc.span_id)
        ctx.parent_span_id = parent_sid
        ctx.sampled = sampled = sc.trace_flags.sampled
        ctx.trace_baggage = bag
        if state:
            ctx.tracestate = state.to_header()
        if self._response_header is not None:
            ctx.response_headers.append((self._response_header, (
                f"00-{tid}-{sid}-01" if sampled else f"00-{tid}-{sid}-00"
            ).encode("latin-1")))
        m = self.metrics
        watch_error_code(ctx)  # also read by layers further in (the circuit breaker)
        recording = span.is_recording()
        responder = StatusResponder(send) if recording or m is not None else None
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        if m is not None:
            m.active.add(1)
        try:
            await self.app(scope, receive, send if responder is None else responder)
        except Exception as exc:
            record_exception(ctx, exc)
            if recording:
                span.record_exception(exc)
            raise
        finally:
            otel_context.detach(token)
            status = None if responder is None else responder.status
            if recording:
                _finish_span(span, ctx, name, status, None if ctx.method is None
                             else method_label(ctx, scope.get(REGISTRY_KEY)))
            else:
                span.end()
            if m is not None:
                m.active.add(-1)
                record_request(m, ctx, status, scope.get(REGISTRY_KEY))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(app={self.app!r})"


def _finish_span(span: trace.Span, ctx: RequestContext, name: str, status: int | None,
                 label: str | None) -> None:
    """The attributes learnt while the request ran, in one call; end the span."""
    attrs: dict[str, Any] = {}
    if label is not None and label != name:
        span.update_name(label)  # the envelope was decoded further in
        attrs["rpc.method"] = label
        if ctx.service is not None:
            attrs["rpc.service"] = ctx.service
    if ctx.tenant_id is not None:
        attrs["aduib.tenant_id"] = ctx.tenant_id
    code = error_code(ctx)
    if code is None and not attrs:  # the usual request: its status alone
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        return
    if status is not None:
        attrs["http.response.status_code"] = status
    if code is not None:
        attrs["rpc.aduib_rpc.error_code"] = code
    span.set_attributes(attrs)
    if (code is not None and code >= 5000) or (status is not None and status >= 500):
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _is_noop(provider: TracerProvider) -> bool:
    return isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))
