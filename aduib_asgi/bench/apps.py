"""The apps under test: references, plain inner apps and the helper layers.

* :func:`bare_asgi_app` — a pure-ASGI app answering a fixed body (the floor);
* :func:`starlette_app` — a bare Starlette route answering the same body, with
  optional ``middleware`` (how both our layers and the peers are mounted, so they
  are compared on the same app);
* :func:`starlette_json_app` — a bare Starlette JSON echo route: decodes the
  request envelope and answers its ``data`` in a success envelope (the yardstick
  for the dispatcher, in-process and over HTTP);
* :class:`NoopLayer` — a pure-ASGI layer that does nothing (the ≤ 1 µs yardstick);
* :class:`LimitsLayer` — ``limits.aio`` fixed-window ``hit`` in a pure-ASGI layer
  (the cost of the rate-limit library alone).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context

__all__ = [
    "BIG_SIZES",
    "ECHO_BODY",
    "ECHO_REPLY",
    "RPC_PATH",
    "ContextSeed",
    "LimitsLayer",
    "NoopLayer",
    "bare_asgi_app",
    "big_body",
    "starlette_app",
    "starlette_json_app",
]

RPC_PATH = "/aduib_rpc/v2/rpc"
ECHO_BODY = json.dumps(
    {"aduib_rpc": "2.0", "id": "bench-1", "method": "rpc.v2/Echo/echo",
     "data": {"msg": "hello", "n": 1}},
    separators=(",", ":"),
).encode()
ECHO_REPLY = json.dumps(
    {"aduib_rpc": "2.0", "id": "bench-1", "status": "success",
     "result": {"msg": "hello", "n": 1}},
    separators=(",", ":"),
).encode()
BIG_SIZES = {"20k": 20 * 1024, "1m": 1024 * 1024}
_TEXT = (b'{"text":"The quick brown fox jumps over the lazy dog. ' * 4)[:200]


def big_body(size: int) -> bytes:
    """``size`` bytes of compressible JSON-ish text (like the demo's Echo/big)."""
    reps = size // len(_TEXT) + 1
    return (_TEXT * reps)[:size]


def bare_asgi_app(body: bytes = ECHO_REPLY) -> ASGIApp:
    """The cheapest correct HTTP app: reads nothing, answers ``body`` as JSON."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    done = {"type": "http.response.body", "body": body, "more_body": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send(start)
        await send(done)

    return app


def starlette_app(middleware: Sequence[Any] = (), *, big: bool = False) -> ASGIApp:
    """A bare Starlette route at ``RPC_PATH`` (and ``/plain``), ``/fail`` raising, ``/big/*``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        await request.body()
        return Response(ECHO_REPLY, media_type="application/json")

    async def fail(request: Request) -> Response:
        from aduib_asgi.errors import RpcError

        raise RpcError(4001, "no such method")

    routes = [Route(RPC_PATH, echo, methods=["POST"]), Route("/plain", echo, methods=["POST"]),
              Route("/fail", fail, methods=["POST"])]
    if big:
        for name, size in BIG_SIZES.items():
            payload = big_body(size)

            async def big_endpoint(request: Request, payload: bytes = payload) -> Response:
                return Response(payload, media_type="application/json")

            routes.append(Route(f"/big/{name}", big_endpoint, methods=["GET", "POST"]))
    return Starlette(routes=routes, middleware=list(middleware))


def starlette_json_app() -> ASGIApp:
    """A bare Starlette JSON echo at ``RPC_PATH``: what a user writes without the protocol.

    Decodes the body (``request.json()``), answers ``{"aduib_rpc", "id", "status",
    "result": data}`` with ``JSONResponse``: the same request and reply shape as the
    dispatcher's ``Echo/echo``, minus everything the protocol adds.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        envelope = await request.json()
        return JSONResponse({"aduib_rpc": "2.0", "id": envelope.get("id"),
                             "status": "success", "result": envelope.get("data")})

    return Starlette(routes=[Route(RPC_PATH, echo, methods=["POST"])])


class NoopLayer:
    """A pure-ASGI layer that passes everything through (the no-op yardstick)."""

    layer_name = "noop"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class LimitsLayer:
    """One ``limits.aio`` window hit per request in a pure-ASGI layer (library cost)."""

    def __init__(self, app: ASGIApp, *, limit: str = "1000000000/minute",
                 strategy: str = "fixed-window") -> None:
        from limits import parse
        from limits.aio import storage, strategies

        self.app = app
        self.item = parse(limit)
        self.storage = storage.MemoryStorage()
        self.limiter: strategies.RateLimiter
        if strategy == "moving-window":
            self.limiter = strategies.MovingWindowRateLimiter(self.storage)
        elif strategy == "sliding-window-counter":
            self.limiter = strategies.SlidingWindowCounterRateLimiter(self.storage)
        else:
            self.limiter = strategies.FixedWindowRateLimiter(self.storage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not await self.limiter.hit(self.item, "bench", "default"):
            raise RuntimeError("limits refused a request the bench meant to admit")
        await self.app(scope, receive, send)


class ContextSeed:
    """Creates the request context, as the outermost layer of a stack does.

    Put in front of one layer, it makes that layer's time its marginal cost in
    a stack (the context already exists), rather than its cost alone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await run_with_context(self._call, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        await self.app(scope, receive, send)
