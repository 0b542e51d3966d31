"""Helpers for the rate-limit and idempotency tests: a test app over the real dispatcher."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from tests.obs_helpers import EnvelopeLayer as EnvelopeLayer  # shared content-layer stand-in


class Services:
    """Test services with counters the tests can inspect."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.gate = anyio.Event()
        self.started = anyio.Event()
        self.registry = MethodRegistry()
        r = self.registry

        def count(name: str) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1

        async def ping(data: dict[str, Any]) -> dict[str, Any]:
            count("ping")
            return {"pong": True}

        async def fail(data: dict[str, Any]) -> None:
            count("fail")
            raise RpcError(int(data.get("code", 2003)), "it failed")

        async def crash(data: dict[str, Any]) -> None:
            count("crash")
            raise RuntimeError("boom")

        async def incr(data: dict[str, Any]) -> dict[str, Any]:
            count("incr")
            return {"value": self.calls["incr"], "by": data.get("by", 1)}

        async def gated(data: dict[str, Any]) -> dict[str, Any]:
            count("gated")
            self.started.set()
            await self.gate.wait()
            return {"done": data.get("tag")}

        r.register("rpc.v2/Limited/ping", ping)
        r.register("rpc.v2/Echo/fail", fail)
        r.register("rpc.v2/Echo/crash", crash)
        r.register("rpc.v2/Counter/incr", incr)
        r.register("rpc.v2/Slow/gated", gated)

    def dispatcher(self) -> RpcDispatcher:
        return RpcDispatcher(self.registry, debug=False)


class PrincipalLayer:
    """Stands in for the auth layer: ``X-User`` becomes ``ctx.principal``."""

    layer_name = "auth"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      ctx: RequestContext) -> None:
        user = ctx.header(b"x-user")
        ctx.principal = user.decode() if user else None
        await self.app(scope, receive, send)
