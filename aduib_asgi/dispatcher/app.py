"""RpcDispatcher: the thin ASGI app behind the middleware stack.

It routes ``{base_path}/...`` endpoints, validates the envelope (unless the
content-negotiation layer already did), resolves the method, calls the handler
(sync handlers in a worker thread) and answers with the response envelope. It
never re-reads a body another layer decoded, and encodes once in the codec
negotiated for the request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import anyio.to_thread
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.body import DEFAULT_MAX_BODY, ClientDisconnected, parse_envelope, read_body
from aduib_asgi.codecs import JSON
from aduib_asgi.context import CONTEXT_KEY, RequestContext, run_with_context
from aduib_asgi.dispatcher.registry import MethodRegistry, MethodSpec
from aduib_asgi.errors import RpcError
from aduib_asgi.gate import GATE_KEY, Gate, admit
from aduib_asgi.models import RpcRequest
from aduib_asgi.qos.retry import install_retry
from aduib_asgi.responses import build_envelope, refuse_websocket, send_envelope, send_error
from aduib_asgi.streaming.endpoints import install_streaming
from aduib_asgi.versioning.routes import install_version_routes

__all__ = ["DocumentedRoute", "Route", "RpcDispatcher", "to_jsonable"]

#: An endpoint handler: ``async (scope, receive, send, ctx) -> None``.
Endpoint = Callable[[Scope, Receive, Send, RequestContext], Awaitable[None]]


class Route:
    __slots__ = ("allow_header", "endpoint", "methods")

    def __init__(self, endpoint: Endpoint, methods: tuple[str, ...]) -> None:
        self.endpoint = endpoint
        self.methods = methods
        self.allow_header = ", ".join(methods).encode("latin-1")


#: Builds the OpenAPI operations of a route, ``{"get": {...}}``, given a function that
#: returns the ``$ref`` of a model's (serialization) schema.
Describe = Callable[[Callable[[type[BaseModel]], dict[str, Any]]], dict[str, dict[str, Any]]]


class DocumentedRoute:
    """A route answered in front of the dispatcher (the probes...), as the OpenAPI
    document describes it: its HTTP methods, the models its operations refer to,
    and the function that builds them."""

    __slots__ = ("describe", "methods", "models")

    def __init__(self, methods: tuple[str, ...], describe: Describe,
                 models: tuple[type[BaseModel], ...] = ()) -> None:
        self.methods = methods
        self.describe = describe
        self.models = models


def to_jsonable(value: Any) -> Any:
    """Handler results as JSON-like values (pydantic models dumped in JSON mode)."""
    if value.__class__ is dict:  # the usual result, as it is
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple) and value and isinstance(value[0], BaseModel):
        return [to_jsonable(v) for v in value]
    return value


class RpcDispatcher:
    """The RPC application: endpoints under ``base_path`` over a :class:`MethodRegistry`.

    Other parts of the package add endpoints with :meth:`add_route` (streaming,
    cancel, WebSocket, tasks, health, capabilities, v1).
    """

    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http", "websocket": "_websocket"}

    def __init__(
        self,
        registry: MethodRegistry | None = None,
        *,
        base_path: str = "/aduib_rpc",
        debug: bool = False,
        max_body_size: int = DEFAULT_MAX_BODY,
        server_id: str | None = None,
    ) -> None:
        self.registry = registry if registry is not None else MethodRegistry()
        self.base_path = base_path.rstrip("/")
        self.debug = debug
        self.max_body_size = max_body_size
        self.server_id = server_id
        self._routes: dict[str, Route] = {}
        self._ws_routes: dict[str, Endpoint] = {}
        #: Full path -> a route another layer answers in front of this dispatcher,
        #: for the OpenAPI document (:meth:`document_route`).
        self.documented_routes: dict[str, DocumentedRoute] = {}
        #: Entered at ASGI lifespan startup, exited at shutdown (task workers...).
        self.lifespan_hooks: list[Callable[[], AbstractAsyncContextManager[Any]]] = []
        #: The lifespan scope's gate (:func:`aduib_asgi.gate.lifespan_gate`), once started.
        self.lifespan_gate: Gate | None = None
        self.add_route("/v2/rpc", self._unary, methods=("POST",))
        install_version_routes(self)  # capabilities + v1 endpoint (aduib_asgi.versioning)
        install_retry(self)  # server-side retry of idempotent methods (aduib_asgi.qos)
        self.streaming = install_streaming(self)  # /rpc/stream, /rpc/cancel, /rpc/ws

    # -- routing -------------------------------------------------------------------

    def add_route(self, path: str, endpoint: Endpoint, *, methods: tuple[str, ...]) -> None:
        """Serve ``base_path + path`` with ``endpoint`` for the given HTTP methods
        (HEAD wherever GET is: the same headers, no body)."""
        if "GET" in methods and "HEAD" not in methods:
            methods = (*methods, "HEAD")
        self._routes[self.base_path + path] = Route(endpoint, methods)

    def document_route(self, full_path: str, methods: tuple[str, ...], describe: Describe, *,
                       models: tuple[type[BaseModel], ...] = ()) -> None:
        """Describe in ``GET {base}/v2/openapi.json`` a route that a layer in front of
        this dispatcher answers itself (e.g. :class:`~aduib_asgi.health.ProbeMiddleware`).

        ``describe(ref)`` returns the route's operations by lower-case HTTP method;
        ``ref(model)`` is the ``$ref`` of one of ``models`` (serialization schema).
        """
        self.documented_routes[full_path] = DocumentedRoute(methods, describe, models)

    def add_websocket_route(self, path: str, endpoint: Endpoint) -> None:
        self._ws_routes[self.base_path + path] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t == "http":
            await run_with_context(self._http, scope, receive, send)
        elif t == "websocket":
            await run_with_context(self._websocket, scope, receive, send)
        elif t == "lifespan":
            # decisions the layers in front offer for work outside requests (aduib_asgi.gate)
            self.lifespan_gate = scope.get(GATE_KEY)
            await _lifespan(receive, send, self.lifespan_hooks)

    async def _http(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        if self.debug:
            ctx.debug = True
        if self.server_id is not None:
            ctx.server_id = self.server_id
        route = self._routes.get(scope["path"])
        try:
            if route is None:
                raise RpcError(4000, f"No endpoint at {scope['path']}")
            method = scope["method"]
            if method not in route.methods:
                raise RpcError(2000, f"Method {method} not allowed",
                               headers={"Allow": route.allow_header.decode()}, http_status=405)
            await route.endpoint(scope, receive, _HeadSend(send) if method == "HEAD" else send,
                                 ctx)
        except ClientDisconnected:
            return
        except Exception as exc:
            await send_error(scope, send, exc, ctx=ctx)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        endpoint = self._ws_routes.get(scope["path"])
        if endpoint is None:
            await refuse_websocket(scope, send, RpcError(
                4000, f"No WebSocket endpoint at {scope['path']}"), ctx=ctx)
            return
        await endpoint(scope, receive, send, ctx)

    # -- request helpers used by every endpoint ------------------------------------

    async def read_payload(self, receive: Receive, ctx: RequestContext) -> Any:
        """The decoded body: from the context when a layer decoded it, else read it here."""
        if ctx.payload is not None or ctx.body is not None:
            return ctx.payload
        ctype = ctx.header(b"content-type")
        if ctx.request_codec is None and ctype and \
                not ctype.lower().startswith(b"application/json"):
            raise RpcError(1003, f"Unsupported Content-Type {ctype.decode('latin-1')!r}",
                           http_status=415, headers={"Accept-Post": "application/json"})
        limit = self.max_body_size
        message = await receive()  # servers pass a small body in one message: take it as is
        body = message.get("body", b"") if message["type"] == "http.request" and \
            not message.get("more_body", False) else None
        if body is None or len(body) > limit:  # the rest, a disconnect, or 413: read_body's
            body = await read_body(receive, limit=limit, first=message)
        ctx.body = body
        codec = ctx.request_codec or JSON
        if not body:
            raise RpcError(1002, "Empty request body")
        ctx.payload = codec.decode(body)
        return ctx.payload

    async def read_envelope(self, receive: Receive, ctx: RequestContext) -> RpcRequest:
        """The validated request envelope (parsed once; reused when a layer did it)."""
        env = ctx.envelope
        if env is not None:
            return env
        # also applies an auth layer's late check
        return parse_envelope(ctx, await self.read_payload(receive, ctx))

    def call_unary(self, spec: MethodSpec, env: RpcRequest,
                   ctx: RequestContext) -> Awaitable[Any]:
        """The call of a unary handler (sync ones in a worker thread): await it for the
        handler's result (:func:`to_jsonable` makes it JSON-like). Bad ``data`` raises
        2001 here. An async handler's own coroutine is returned: no frame of ours."""
        data = spec.parse_input(env.data)
        args = (data, ctx) if spec.takes_context else (data,)
        if spec.is_async:
            result: Awaitable[Any] = spec.func(*args)
            return result
        # A thread cannot be killed: on cancellation (deadline) it is abandoned and
        # its result discarded (docs/qos.md).
        return anyio.to_thread.run_sync(spec.func, *args, abandon_on_cancel=True)

    # -- endpoints -----------------------------------------------------------------

    async def _unary(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        env = ctx.envelope  # read by a layer in front, or by the cancel registration
        if env is None:
            env = await self.read_envelope(receive, ctx)
        spec = self.registry.resolve(env.method, ctx=ctx)  # version ranges, deprecation
        if spec.streaming:
            raise RpcError(2000, f"{env.method} is a streaming method; call it on /v2/rpc/stream")
        if ctx.deferred:  # layers in front could not see the method
            async with admit(ctx, env.method, scope):
                result = to_jsonable(await self.call_unary(spec, env, ctx))
                await send_envelope(send, ctx, build_envelope(ctx, result=result), 200)
            return
        result = to_jsonable(await self.call_unary(spec, env, ctx))
        await send_envelope(send, ctx, build_envelope(ctx, result=result), 200)


class _HeadSend:
    """A HEAD response: the GET response's status and headers, without the body."""

    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self.send(message)


async def _lifespan(
    receive: Receive,
    send: Send,
    hooks: Sequence[Callable[[], AbstractAsyncContextManager[Any]]] = (),
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in hooks:
                        await stack.enter_async_context(hook())
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                break
    await send({"type": "lifespan.shutdown.complete"})


def request_context(scope: Scope) -> RequestContext | None:
    ctx: RequestContext | None = scope.get(CONTEXT_KEY)
    return ctx
