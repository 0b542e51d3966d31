"""The dispatcher's streaming endpoints: ``/v2/rpc/stream``, ``/v2/rpc/cancel``, ``/v2/rpc/ws``.

:func:`install_streaming` is called once from ``RpcDispatcher.__init__`` and
returns the :class:`StreamingEndpoints` kept as ``dispatcher.streaming``; its
attributes are the streaming configuration of the app (default framing,
heartbeat interval, WebSocket window...), read per request, so they may be set
after the dispatcher is built::

    dispatcher.streaming.configure(default_framing="envelope", heartbeat_interval=5)

Handlers (registered on the dispatcher's registry):

* server streaming: an async or sync generator ``gen(data[, ctx])`` (or a
  function returning an (async) iterable); yield items, or ``Partial(x)``;
* client streaming (WebSocket only): ``register(..., streaming=True,
  stream_mode="client")``, ``async def f(requests[, ctx]) -> result`` where
  ``requests`` is an async iterator of the client's data items;
* bidirectional (WebSocket only): ``stream_mode="bidi"``, an async generator
  ``gen(requests[, ctx])``;
* a unary handler called on a stream endpoint is a one-item stream.

The unary ``/v2/rpc`` route is wrapped so running unary calls can be cancelled
too (they then answer 4011, see docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.body import ClientDisconnected
from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.gate import admit
from aduib_asgi.responses import build_envelope, send_envelope
from aduib_asgi.streaming.inflight import InflightRegistry
from aduib_asgi.streaming.responder import stream_response
from aduib_asgi.streaming.sources import as_async_iterator
from aduib_asgi.streaming.sse import FRAMINGS, MESSAGE, jsonable, select_framing, send_stream_error
from aduib_asgi.streaming.websocket import ClientItems, serve_websocket

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import Endpoint, RpcDispatcher
    from aduib_asgi.dispatcher.registry import MethodSpec

__all__ = ["StreamingEndpoints", "apply_envelope_timeout", "install_streaming", "open_source"]

STREAM_MODES = ("server", "client", "bidi")


def apply_envelope_timeout(ctx: RequestContext, env: Any) -> None:
    """Tighten ``ctx.deadline`` with ``qos.timeout_ms`` / ``meta.timeout_ms`` (0: none).

    DeadlineMiddleware does the same when it is in front; tightening twice is
    harmless. Without it (a dispatcher alone, WebSocket calls) streams still
    honour the caller's budget.
    """
    qos = env.qos
    if qos is not None and qos.timeout_ms:
        ctx.set_deadline_ms(qos.timeout_ms)
    meta = env.meta
    if isinstance(meta, dict):
        v = meta.get("timeout_ms")
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf:
            ctx.set_deadline_ms(v)


def _stream_mode(spec: MethodSpec) -> str:
    mode = spec.options.get("stream_mode")
    if mode in STREAM_MODES:
        return str(mode)
    return "server" if spec.streaming else "unary"


async def _call_once(spec: MethodSpec, args: tuple[Any, ...]) -> AsyncIterator[Any]:
    if spec.is_async:
        result = await spec.func(*args)
    else:
        result = await anyio.to_thread.run_sync(spec.func, *args)
    yield jsonable(result)


async def open_source(
    spec: MethodSpec, data: Any, ctx: RequestContext, requests: ClientItems | None = None
) -> AsyncIterator[Any]:
    """Call ``spec``'s handler for a stream and return the items as an async iterator.

    ``data`` is the envelope's ``data`` (validated against the input model here:
    2001); ``requests`` the client's items for client-streaming/bidi methods.
    """
    mode = _stream_mode(spec)
    if mode in ("client", "bidi"):
        if requests is None:
            raise RpcError(2000, f"{spec.method} streams client data; call it on /v2/rpc/ws")
        args: tuple[Any, ...] = (requests, ctx) if spec.takes_context else (requests,)
        if mode == "client":
            return _call_once(spec, args)
        return as_async_iterator(spec.func(*args))
    parsed = spec.parse_input(data)
    args = (parsed, ctx) if spec.takes_context else (parsed,)
    if mode == "unary":
        return _call_once(spec, args)
    if spec.is_async_gen or spec.is_sync_gen:
        return as_async_iterator(spec.func(*args))
    if spec.is_async:
        return as_async_iterator(await spec.func(*args))
    return as_async_iterator(await anyio.to_thread.run_sync(spec.func, *args))


class _UnaryCall:
    """A running unary call: cancellable by id; tracks whether its response started.

    On asyncio it cancels its task natively (``task.cancel()``, taken back with
    ``uncancel()`` by :meth:`StreamingEndpoints.unary`): entering an anyio
    ``CancelScope`` for every unary call would cost several µs per request for
    the rare call that is cancelled. On other backends it cancels ``scope``.
    """

    __slots__ = ("ctx", "reason", "scope", "send", "started", "task")

    def __init__(self, ctx: RequestContext, send: Send, task: asyncio.Task[Any] | None) -> None:
        self.ctx = ctx
        self.send = send
        self.task = task
        self.scope: anyio.CancelScope | None = None
        self.reason: str | None = None
        self.started = False

    def cancel(self, reason: str | None = None) -> None:
        if self.reason is None:
            self.reason = reason or "canceled"
            self.ctx.cancelled = True
            self.ctx.cancel_reason = self.reason
            if self.task is not None:
                self.task.cancel()
            elif self.scope is not None:
                self.scope.cancel()

    def __call__(self, message: Message) -> Awaitable[None]:
        # The inner send's own awaitable: no coroutine frame of ours per message.
        if message["type"] == "http.response.start":
            self.started = True
        return self.send(message)


if sys.version_info >= (3, 12):  # asyncio.current_task is implemented in C
    def _asyncio_task() -> asyncio.Task[Any] | None:
        """The running asyncio task, or None on another event loop (trio)."""
        try:
            return asyncio.current_task()
        except RuntimeError:
            return None
else:
    # 3.11: asyncio.current_task() asks for the running loop, and the running loop is
    # checked against getpid() — a system call, ~1 µs of a unary call here. The loop
    # seen running in this thread is remembered instead: while it is running here, it
    # is this thread's running loop (one per thread), and ``_current_tasks`` (the table
    # asyncio's C tasks keep, {loop: task in its step}) names the task in its step.
    _current_tasks: dict[Any, asyncio.Task[Any]] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
    _running_loop = asyncio.events._get_running_loop
    _seen = threading.local()

    def _asyncio_task() -> asyncio.Task[Any] | None:
        """The running asyncio task, or None on another event loop (trio)."""
        tasks = _current_tasks
        if len(tasks) == 1:  # no other thread's loop is in a task step right now
            task = tasks.get(getattr(_seen, "loop", None))
            if task is not None:
                return task
        loop = _running_loop()
        if loop is None:
            return None
        _seen.loop = loop
        return tasks.get(loop)


class StreamingEndpoints:
    """Streaming configuration and endpoints of one :class:`RpcDispatcher`."""

    def __init__(self, dispatcher: RpcDispatcher) -> None:
        self.dispatcher = dispatcher
        #: ``message`` (StreamMessage) or ``envelope`` (2.0.1 clients), PROTOCOL.md §5.1.
        self.default_framing: str = MESSAGE
        #: Seconds without a frame before a heartbeat (0: off).
        self.heartbeat_interval: float = 15.0
        #: SSE ``retry:`` hint in ms on the first event (message framing), or None.
        self.retry_ms: int | None = None
        #: WebSocket: unacknowledged data frames the server may have outstanding (0: no limit).
        self.window: int = 64
        #: WebSocket: unread client data frames buffered before 5021.
        self.max_client_buffer: int = 1024
        #: WebSocket: seconds for the request envelope after the accept (0: no limit).
        self.ws_request_timeout: float = 30.0
        #: WebSocket: seconds a full window waits for an ack before 5003 (0: no limit).
        self.ack_timeout: float = 60.0
        #: Register unary calls for ``/rpc/cancel`` too.
        self.cancel_unary: bool = True
        self.inflight = InflightRegistry()
        self._unary: Endpoint | None = None

    def configure(
        self,
        *,
        default_framing: str | None = None,
        heartbeat_interval: float | None = None,
        retry_ms: int | None = None,
        window: int | None = None,
        max_client_buffer: int | None = None,
        cancel_unary: bool | None = None,
        ws_request_timeout: float | None = None,
        ack_timeout: float | None = None,
    ) -> StreamingEndpoints:
        """Set configuration values (None leaves a value unchanged); returns self."""
        if default_framing is not None:
            if default_framing not in FRAMINGS:
                raise ValueError(f"default_framing must be one of {FRAMINGS}")
            self.default_framing = default_framing
        if heartbeat_interval is not None:
            if heartbeat_interval < 0:
                raise ValueError("heartbeat_interval must be >= 0")
            self.heartbeat_interval = float(heartbeat_interval)
        if retry_ms is not None:
            self.retry_ms = int(retry_ms)
        if window is not None:
            if window < 0:
                raise ValueError("window must be >= 0")
            self.window = int(window)
        if max_client_buffer is not None:
            self.max_client_buffer = max(1, int(max_client_buffer))
        if cancel_unary is not None:
            self.cancel_unary = cancel_unary
        if ws_request_timeout is not None:
            if ws_request_timeout < 0:
                raise ValueError("ws_request_timeout must be >= 0")
            self.ws_request_timeout = float(ws_request_timeout)
        if ack_timeout is not None:
            if ack_timeout < 0:
                raise ValueError("ack_timeout must be >= 0")
            self.ack_timeout = float(ack_timeout)
        return self

    # -- endpoints ------------------------------------------------------------------

    async def stream(self, scope: Scope, receive: Receive, send: Send,
                     ctx: RequestContext) -> None:
        """``POST .../v2/rpc/stream``: the method's items as SSE."""
        d = self.dispatcher
        try:
            select_framing(ctx, self.default_framing)
            env = await d.read_envelope(receive, ctx)
            spec = d.registry.resolve(env.method)
            ctx.extras["aduib.method_spec"] = spec
            apply_envelope_timeout(ctx, env)
            if ctx.deferred:  # layers in front could not see the method
                async with admit(ctx, env.method, scope):
                    source = await open_source(spec, env.data, ctx)
                    await self._respond(scope, receive, send, ctx, source)
                return
            source = await open_source(spec, env.data, ctx)
        except ClientDisconnected:
            return
        except Exception as exc:
            await send_stream_error(scope, send, exc, ctx=ctx)
            return
        await self._respond(scope, receive, send, ctx, source)

    async def _respond(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                       source: AsyncIterator[Any]) -> None:
        await stream_response(scope, receive, send, ctx, source,
                              default_framing=self.default_framing,
                              heartbeat_interval=self.heartbeat_interval,
                              retry_ms=self.retry_ms, inflight=self.inflight)

    async def cancel(self, scope: Scope, receive: Receive, send: Send,
                     ctx: RequestContext) -> None:
        """``POST .../v2/rpc/cancel {"id", "reason"}``: cancel the caller's own running call."""
        payload = await self.dispatcher.read_payload(receive, ctx)
        if isinstance(payload, dict) and "id" not in payload and isinstance(
                payload.get("data"), dict):
            payload = payload["data"]  # the same body wrapped in an envelope
        if not isinstance(payload, dict) or "id" not in payload:
            raise RpcError(2002, "The cancel request needs the id of a running call",
                           details=[{"type": "missing", "field": "id", "reason": "required"}])
        target = payload["id"]
        reason = payload.get("reason")
        if not isinstance(target, str) or not target:
            raise RpcError(2003, "id must be a non-empty string",
                           details=[{"type": "type_error", "field": "id",
                                     "reason": "not a string"}])
        if reason is not None and not isinstance(reason, str):
            raise RpcError(2003, "reason must be a string",
                           details=[{"type": "type_error", "field": "reason",
                                     "reason": "not a string"}])
        if not await self.inflight.cancel_anywhere(ctx, target, reason, scope):
            raise RpcError(4000, f"No running call with id {target!r}")
        await send_envelope(send, ctx, build_envelope(
            ctx, result={"id": target, "canceled": True}), 200)

    async def websocket(self, scope: Scope, receive: Receive, send: Send,
                        ctx: RequestContext) -> None:
        """WebSocket ``.../v2/rpc/ws``."""
        await serve_websocket(scope, receive, send, ctx,
                              registry=self.dispatcher.registry, open_source=open_source,
                              apply_timeout=apply_envelope_timeout,
                              heartbeat_interval=self.heartbeat_interval, window=self.window,
                              inflight=self.inflight, max_client_buffer=self.max_client_buffer,
                              request_timeout=self.ws_request_timeout,
                              ack_timeout=self.ack_timeout)

    async def unary(self, scope: Scope, receive: Receive, send: Send,
                    ctx: RequestContext) -> None:
        """The dispatcher's unary endpoint, registered for ``/rpc/cancel``."""
        unary = self._unary
        assert unary is not None
        if not self.cancel_unary:
            await unary(scope, receive, send, ctx)
            return
        if ctx.envelope is None:  # the request id is the call's name in the registry
            await self.dispatcher.read_envelope(receive, ctx)
        task = _asyncio_task()
        call = _UnaryCall(ctx, send, task)
        inflight = self.inflight
        key = inflight.register(ctx, call, scope)
        try:
            if task is not None:
                try:
                    await unary(scope, receive, call, ctx)
                except asyncio.CancelledError:
                    # Ours (cancel() ran) and nobody else's: take it back.
                    if call.reason is None or task.uncancel() > 0:
                        raise
                else:
                    if call.reason is not None:  # delivered too late, or swallowed
                        task.uncancel()
            else:
                with anyio.CancelScope() as cs:
                    call.scope = cs
                    await unary(scope, receive, call, ctx)
        finally:
            inflight.unregister(key, call)
        if call.reason is not None and not call.started:
            raise RpcError(4011, f"Call canceled: {call.reason}")

    def install(self) -> StreamingEndpoints:
        d = self.dispatcher
        route = d._routes.get(d.base_path + "/v2/rpc")
        if route is not None:
            self._unary = route.endpoint
            d.add_route("/v2/rpc", self.unary, methods=route.methods)
        d.add_route("/v2/rpc/stream", self.stream, methods=("POST",))
        d.add_route("/v2/rpc/cancel", self.cancel, methods=("POST",))
        d.add_websocket_route("/v2/rpc/ws", self.websocket)
        return self


def install_streaming(dispatcher: RpcDispatcher) -> StreamingEndpoints:
    """Add the streaming endpoints to ``dispatcher``; returns their configuration object."""
    return StreamingEndpoints(dispatcher).install()
