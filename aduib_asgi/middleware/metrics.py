"""MetricsMiddleware: RPC server metrics, and a Prometheus endpoint when configured.

The trace layer records the same metrics when given ``metrics=`` (that is how the
demo does it); use this standalone layer to count from further out (just inside
the error mapper, so requests refused by outer layers are counted too) or
around a plain app. See :mod:`aduib_asgi.observability.metrics` for the
instruments. ``endpoint="/metrics"`` serves the Prometheus text exposition of
``registry`` (built with :func:`prometheus_meter_provider` when no meter
provider is given; needs the ``prometheus`` extra).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from opentelemetry.metrics import MeterProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import (
    REGISTRY_KEY,
    ContextHandler,
    RequestContext,
    emitter_parts,
    run_with_context,
    with_response_headers,
)
from aduib_asgi.observability.metrics import (
    PrometheusApp,
    RpcMetrics,
    prometheus_meter_provider,
    record_request,
)
from aduib_asgi.observability.outcome import record_exception, watch_error_code

__all__ = ["MetricsMiddleware", "StatusResponder", "observe"]


class MetricsMiddleware:
    """Count, time and track in-flight requests; optionally serve ``/metrics``."""

    layer_name = "metrics"

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: RpcMetrics | None = None,
        meter_provider: MeterProvider | None = None,
        endpoint: str | None = None,
        registry: Any = None,
        tenant_attribute: bool = False,
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self._exposition: PrometheusApp | None = None
        if endpoint is not None:
            if metrics is None and meter_provider is None:
                meter_provider, registry = prometheus_meter_provider(registry)
            self._exposition = PrometheusApp(registry)
        self.metrics = metrics if metrics is not None else RpcMetrics(
            meter_provider, tenant_attribute=tenant_attribute)

    def context_routes(self) -> dict[str, ContextHandler]:
        """What ``__call__`` runs with the context (aduib_asgi.stack fuses); with an
        exposition endpoint, ``__call__`` itself (it tells the endpoint apart)."""
        return {} if self._exposition is not None else {"http": self._handle}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif self._exposition is not None and scope["path"] == self.endpoint:
            await self._exposition(scope, receive, send)
        else:
            await run_with_context(self._handle, scope, receive, send)

    def _handle(self, scope: Scope, receive: Receive, send: Send,
                ctx: RequestContext) -> Awaitable[None]:
        return observe(self.app, self.metrics, scope, receive, send, ctx)


async def observe(app: ASGIApp, m: RpcMetrics, scope: Scope, receive: Receive, send: Send,
                  ctx: RequestContext) -> None:
    """Run ``app`` and record the RPC server metrics of the request (this layer's
    work; the trace layer's too when it records metrics without an SDK span)."""
    watch_error_code(ctx)  # also read by layers further in (the circuit breaker)
    responder = StatusResponder(send)
    m.active.add(1)
    try:
        await app(scope, receive, responder)
    except Exception as exc:
        record_exception(ctx, exc)
        raise
    finally:
        m.active.add(-1)
        record_request(m, ctx, responder.status, scope.get(REGISTRY_KEY))


class StatusResponder:
    """Remembers the response status; does the context creator's header emission
    itself when it wraps it (one call per message less, as the error layer does)."""

    __slots__ = ("ctx", "send", "status")

    def __init__(self, send: Send) -> None:
        self.send, self.ctx = emitter_parts(send)
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        t = message["type"]
        if t == "http.response.start" or t == "websocket.http.response.start":
            self.status = message["status"]
            ctx = self.ctx
            if ctx is not None and ctx.response_headers:
                message = with_response_headers(message, ctx)
        await self.send(message)
