"""Helpers for the QoS tests: a minimal envelope decoder in front, and polling by events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.body import parse_envelope, read_body, replay_receive
from aduib_asgi.codecs import JSON
from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ErrorMappingMiddleware
from aduib_asgi.stack import Layer, build_stack


class EnvelopeLayer:
    """Test stand-in for the content layer: decodes the JSON envelope onto the context."""

    layer_name = "content"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await run_with_context(self._http, scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        body = await read_body(receive)
        ctx.body = body
        if body:
            ctx.payload = JSON.decode(body)
            parse_envelope(ctx, ctx.payload)
        await self.app(scope, replay_receive(body, receive), send)


def rpc_stack(registry: MethodRegistry, *layers: Layer) -> tuple[ASGIApp, RpcDispatcher]:
    """errors -> envelope decoder -> ``layers`` -> dispatcher over ``registry``."""
    dispatcher = RpcDispatcher(registry)
    app = build_stack(dispatcher, [Layer.of(ErrorMappingMiddleware), Layer.of(EnvelopeLayer),
                                   *layers])
    return app, dispatcher


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Yield to the event loop until ``predicate()`` holds (fails after ``timeout``)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.001)
