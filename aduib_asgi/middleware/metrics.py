"""MetricsMiddleware: RPC server metrics, and a Prometheus endpoint when configured.

Put it just inside the error mapper so it sees every request, including those
refused by outer layers. See :mod:`aduib_asgi.observability.metrics` for the
instruments. ``endpoint="/metrics"`` serves the Prometheus text exposition of
``registry`` (built with :func:`prometheus_meter_provider` when no meter
provider is given; needs the ``prometheus`` extra).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.metrics import MeterProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.observability.metrics import RpcMetrics, prometheus_meter_provider
from aduib_asgi.observability.outcome import error_code, record_exception, watch_error_code

__all__ = ["MetricsMiddleware"]


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
        self.registry = registry
        if endpoint is not None:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            if metrics is None and meter_provider is None:
                meter_provider, self.registry = prometheus_meter_provider(registry)
            elif self.registry is None:
                from prometheus_client import REGISTRY

                self.registry = REGISTRY
            self._generate = generate_latest
            self._content_type = CONTENT_TYPE_LATEST.encode("latin-1")
        self.metrics = metrics if metrics is not None else RpcMetrics(
            meter_provider, tenant_attribute=tenant_attribute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif self.endpoint is not None and scope["path"] == self.endpoint:
            await self._expose(scope, send)
        else:
            await run_with_context(self._handle, scope, receive, send)

    async def _expose(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = self._generate(self.registry)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", self._content_type),
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        m = self.metrics
        watch_error_code(ctx)
        responder = _MetricsResponder(send)
        m.active.add(1)
        try:
            await self.app(scope, receive, responder)
        except Exception as exc:
            record_exception(ctx, exc)
            raise
        finally:
            m.active.add(-1)
            status = responder.status
            code = error_code(ctx)
            if code is None and status is not None and status < 400:
                code = 0  # else: not an envelope error (a plain app's 404...): no code
            m.record(method=ctx.method, code=code, status=status,
                     duration_ms=(time.monotonic() - ctx.started) * 1000.0,
                     tenant=ctx.tenant_id)


class _MetricsResponder:
    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
