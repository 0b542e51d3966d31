"""The HealthService endpoints: ``{base}/v2/HealthService/{Check,Watch}``.

Both answer POST (a HealthCheckRequest body) and GET (``?service=NAME``).
Check answers the bare HealthCheckResponse; an unknown ``service`` is 4002
(404). Watch streams a HealthCheckResponse first and then each change (checks
re-run every ``watch_interval`` seconds) until the client goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import anyio
from starlette.types import Receive, Scope, Send

from aduib_asgi.body import ClientDisconnected
from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.health.checks import HealthRegistry
from aduib_asgi.models import HealthCheckRequest, HealthCheckResponse
from aduib_asgi.streaming import raw_item, select_framing, send_stream_error, stream_response
from aduib_asgi.tasks.service import read_model, send_model

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import RpcDispatcher

__all__ = ["HealthService", "install_health_service"]

PREFIX = "/v2/HealthService/"


class HealthService:
    """Binds a :class:`HealthRegistry` to a dispatcher's routes."""

    def __init__(self, dispatcher: RpcDispatcher, registry: HealthRegistry,
                 watch_interval: float = 1.0) -> None:
        self.dispatcher = dispatcher
        self.registry = registry
        self.watch_interval = watch_interval

    async def _response(self, req: HealthCheckRequest) -> HealthCheckResponse:
        resp = await self.registry.check(req.service)
        if resp is None:
            raise RpcError(4002, f"Service {req.service!r} not found")
        return resp

    async def _request(self, scope: Scope, receive: Receive,
                       ctx: RequestContext) -> HealthCheckRequest:
        """The body's HealthCheckRequest; for GET, ``?service=NAME`` (or none)."""
        if scope["method"] in ("GET", "HEAD"):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            names = query.get("service")
            return HealthCheckRequest(service=names[0] if names else None)
        return await read_model(self.dispatcher, receive, ctx, HealthCheckRequest)

    async def check(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        req = await self._request(scope, receive, ctx)
        await send_model(send, ctx, await self._response(req))

    async def watch(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        """The status as SSE (the streaming module's framing): now, then on every change."""
        cfg = self.dispatcher.streaming
        try:
            select_framing(ctx, cfg.default_framing)
            req = await self._request(scope, receive, ctx)
            first = await self._response(req)  # unknown service: a plain 404 first
        except ClientDisconnected:
            return
        except Exception as exc:
            await send_stream_error(scope, send, exc, ctx=ctx)
            return
        await stream_response(scope, receive, send, ctx, self.changes(req, first),
                              default_framing=cfg.default_framing,
                              heartbeat_interval=cfg.heartbeat_interval, item_encoder=raw_item)

    async def changes(
        self, req: HealthCheckRequest, first: HealthCheckResponse | None = None
    ) -> AsyncIterator[HealthCheckResponse]:
        """``first`` (or the current status), then every change (checked each interval)."""
        last = first if first is not None else await self._response(req)
        yield last
        while True:
            await anyio.sleep(self.watch_interval)
            resp = await self._response(req)
            if resp != last:
                last = resp
                yield resp


def install_health_service(
    dispatcher: RpcDispatcher, registry: HealthRegistry | None = None, *,
    watch_interval: float = 1.0,
) -> HealthRegistry:
    """Serve the HealthService on ``dispatcher``; returns its registry (add checks there).

    The registry is also stored as ``dispatcher.health`` so that other services
    (the task store) can register their checks.
    """
    if registry is None:
        reg = dispatcher.registry
        registry = HealthRegistry(services=lambda: {spec.service for spec in reg})
    service = HealthService(dispatcher, registry, watch_interval)
    dispatcher.add_route(PREFIX + "Check", service.check, methods=("POST", "GET"))
    dispatcher.add_route(PREFIX + "Watch", service.watch, methods=("POST", "GET"))
    dispatcher.health = registry  # type: ignore[attr-defined]
    return registry
