"""StreamMessage frames over WebSocket, with credit-based flow control.

The client sends the request envelope as its first message (a text message:
JSON; a binary message: msgpack — or chosen up front with the subprotocol
``aduib-rpc.json`` / ``aduib-rpc.msgpack``), then may send ``ack``
(``control.ack_sequence``, cumulative), ``cancel`` (``control.reason``) and, for
client-streaming and bidirectional methods, ``data`` frames and one ``end``
frame (end of its input). The server answers with the same StreamMessage frames
as SSE and never has more than ``window`` unacknowledged data/partial frames
outstanding. An invalid client frame ends the stream with ``error`` 1002 then
``end``, and the socket is closed with 1007 (undecodable) or 1008 (invalid).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgpack
import pydantic_core
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.body import parse_envelope
from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.gate import admit
from aduib_asgi.identity import client_address
from aduib_asgi.responses import log_error, to_rpc_error
from aduib_asgi.streaming.engine import StreamRun
from aduib_asgi.streaming.frames import (
    ACK,
    CANCEL,
    DATA,
    END,
    HEARTBEAT,
    PARTIAL,
    Frame,
    FrameMachine,
)
from aduib_asgi.streaming.inflight import InflightRegistry
from aduib_asgi.streaming.sse import message_dict

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.registry import MethodRegistry, MethodSpec

__all__ = ["ClientItems", "WsSink", "close_code_for", "serve_websocket"]

SUBPROTOCOL_JSON = "aduib-rpc.json"
SUBPROTOCOL_MSGPACK = "aduib-rpc.msgpack"

CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

#: ``open_source(spec, env_data, ctx, requests)`` -> the async iterator of the call.
OpenSource = Callable[["MethodSpec", Any, RequestContext, "ClientItems | None"],
                      Awaitable[AsyncIterator[Any]]]


def close_code_for(error: RpcError) -> int:
    """The WebSocket close code after a call refused with ``error``."""
    code = error.code
    if code == 1003:  # undecodable message
        return CLOSE_INVALID_DATA
    if code < 5000:
        return CLOSE_POLICY
    if error.retryable:
        return CLOSE_TRY_AGAIN
    return CLOSE_INTERNAL


def _invalid(reason: str, field: str | None = None) -> RpcError:
    detail: dict[str, Any] = {"type": "invalid_frame", "reason": reason}
    if field is not None:
        detail["field"] = field
    return RpcError(1002, f"Invalid frame: {reason}", details=[detail])


class WsSink:
    """Frames as WebSocket messages (JSON text or msgpack binary), with an ack window."""

    __slots__ = ("_credit", "ack_timeout", "binary", "close_code", "ctx", "flow_controlled",
                 "outstanding", "send", "window")

    http_errors = False

    def __init__(self, ctx: RequestContext, send: Send, *, binary: bool, window: int,
                 ack_timeout: float = 0.0) -> None:
        self.ctx = ctx
        self.send = send
        self.binary = binary
        self.window = window
        #: Seconds to wait for an ack when the window is full before 5003 (0: forever).
        self.ack_timeout = ack_timeout
        self.flow_controlled = window > 0
        self.outstanding: deque[int] = deque()
        self._credit = anyio.Event()
        self.close_code = CLOSE_NORMAL

    def encode(self, frame: Frame) -> Message:
        d = message_dict(self.ctx, frame)
        if self.binary:
            return {"type": "websocket.send", "bytes": msgpack.packb(d, use_bin_type=True)}
        return {"type": "websocket.send", "text": pydantic_core.to_json(d).decode()}

    async def start(self) -> None:
        return None

    async def send_frame(self, frame: Frame) -> None:
        await self.send(self.encode(frame))
        if self.flow_controlled and (frame.type == DATA or frame.type == PARTIAL):
            self.outstanding.append(frame.sequence)

    async def finish(self) -> None:
        await self.send({"type": "websocket.close", "code": self.close_code})

    async def fail_before_start(self, exc: BaseException) -> None:  # never: errors are in-band
        raise AssertionError("WebSocket errors are sent in-band")

    async def acquire_credit(self) -> None:
        if len(self.outstanding) < self.window:
            return
        with anyio.move_on_after(self.ack_timeout or math.inf) as scope:
            while len(self.outstanding) >= self.window:
                self._credit = anyio.Event()
                await self._credit.wait()
        if scope.cancelled_caught:
            self.close_code = CLOSE_TRY_AGAIN
            raise RpcError(5003, f"No ack within {self.ack_timeout:g} s with the window full")

    def ack(self, sequence: int) -> None:
        """The client acknowledged every frame up to ``sequence``."""
        out = self.outstanding
        while out and out[0] <= sequence:
            out.popleft()
        self._credit.set()

    async def reject(self, exc: BaseException) -> None:
        """Refuse the call before it started: ``error`` + ``end`` frames, then close."""
        error = to_rpc_error(exc)
        cause = None if exc is error else exc
        log_error(error, cause, self.ctx)
        machine = FrameMachine()
        self.close_code = close_code_for(error)
        try:
            await self.send_frame(machine.error(error, cause))
            await self.send_frame(machine.end())
            await self.finish()
        except OSError:
            pass


class ClientItems:
    """The client's ``data`` frames as an async iterator (client-streaming and bidi handlers).

    Each item is validated like a unary ``data`` (the method's input model: 2001).
    The client's ``end`` frame ends the iteration.
    """

    __slots__ = ("_recv", "_send", "spec")

    def __init__(self, spec: MethodSpec, max_buffer: int) -> None:
        self.spec = spec
        send: MemoryObjectSendStream[Any]
        recv: MemoryObjectReceiveStream[Any]
        send, recv = anyio.create_memory_object_stream(max_buffer)
        self._send = send
        self._recv = recv

    def __aiter__(self) -> ClientItems:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if item is None or isinstance(item, dict):
            return self.spec.parse_input(item)
        if self.spec.input_model is not None:
            raise RpcError(2001, f"Invalid params for {self.spec.method}: not an object")
        return item

    def push(self, item: Any) -> None:
        """Queue one item; raises 5021 when the handler is ``max_buffer`` items behind."""
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            raise RpcError(5021, "Too many unread client frames") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise _invalid("data after end", "type") from None

    def close(self) -> None:
        self._send.close()


def _decode(message: Message) -> Any:
    # The RpcError is raised outside the ``except`` blocks: raised inside, it would
    # keep the decoder's exception as ``__context__`` (``from None`` only hides it),
    # and msgpack's ExtraData holds a copy of the rest of the message - up to the
    # message size limit per refused frame, alive as long as the error is.
    text = message.get("text")
    if text is not None:
        try:
            return pydantic_core.from_json(text, allow_inf_nan=False)
        except ValueError as exc:
            reason = f"Invalid JSON: {exc}"
        raise RpcError(1003, reason)
    raw = message.get("bytes")
    if raw is None:
        raise RpcError(1003, "Empty WebSocket message")
    try:
        return msgpack.unpackb(raw, raw=False)
    except Exception as exc:
        reason = f"Invalid msgpack: {exc}"
    raise RpcError(1003, reason)


def _control(frame: dict[str, Any]) -> dict[str, Any]:
    payload = frame.get("payload")
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise _invalid("payload must be an object", "payload")
    control = payload.get("control")
    if control is None:
        return {}
    if not isinstance(control, dict):
        raise _invalid("payload.control must be an object", "payload.control")
    return control


def _reader(receive: Receive, sink: WsSink, requests: ClientItems | None) -> Any:
    async def read(run: StreamRun) -> None:
        while True:
            try:
                message = await receive()
            except Exception:
                run.disconnect()
                return
            if message["type"] == "websocket.disconnect":
                run.disconnect()
                return
            if message["type"] != "websocket.receive":
                await checkpoint()
                continue
            try:
                if _handle(message, sink, requests, run):
                    return
            except RpcError as exc:
                sink.close_code = close_code_for(exc)
                if requests is not None:
                    requests.close()
                run.fail(exc)
                return
            # A turn for the loop per client frame: a flood of acks or heartbeats
            # already buffered by the server would otherwise be read without one.
            await checkpoint()

    return read


def _handle(message: Message, sink: WsSink, requests: ClientItems | None,
            run: StreamRun) -> bool:
    """Apply one client frame; True when the reader is done."""
    frame = _decode(message)
    if not isinstance(frame, dict):
        raise _invalid("a frame must be an object")
    ftype = frame.get("type")
    if ftype == ACK:
        seq = _control(frame).get("ack_sequence")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise _invalid("ack needs an integer control.ack_sequence",
                           "payload.control.ack_sequence")
        if seq > run.machine.sequence:
            raise _invalid("ack_sequence is ahead of the frames sent",
                           "payload.control.ack_sequence")
        sink.ack(seq)
        return False
    if ftype == CANCEL:
        reason = _control(frame).get("reason")
        run.cancel(reason if isinstance(reason, str) else None)
        return True
    if ftype == DATA:
        if requests is None:
            raise _invalid("this method takes no client data frames", "type")
        payload = frame.get("payload")
        requests.push(payload.get("data") if isinstance(payload, dict) else None)
        return False
    if ftype == END:
        if requests is not None:
            requests.close()
        return False
    if ftype == HEARTBEAT:
        return False
    raise _invalid(f"unexpected frame type {ftype!r}", "type")


async def serve_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: RequestContext,
    *,
    registry: MethodRegistry,
    open_source: OpenSource,
    apply_timeout: Callable[[RequestContext, Any], None],
    heartbeat_interval: float,
    window: int,
    inflight: InflightRegistry | None,
    max_client_buffer: int = 1024,
    request_timeout: float = 0.0,
    ack_timeout: float = 0.0,
) -> None:
    """Serve one WebSocket call on ``.../rpc/ws`` (see the module docstring).

    ``request_timeout``: seconds after the accept for the request envelope, else
    ``error`` 5003 + ``end`` and close 1013; ``ack_timeout``: see :class:`WsSink`
    (0: no limit for either).
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or ()
    chosen = next((p for p in offered if p in (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)), None)
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if chosen is not None:
        accept["subprotocol"] = chosen
    await send(accept)
    first: Message | None = None
    with anyio.move_on_after(request_timeout or math.inf):
        first = await receive()
    if first is None:
        late = WsSink(ctx, send, binary=chosen == SUBPROTOCOL_MSGPACK, window=0)
        await late.reject(RpcError(5003, f"No request within {request_timeout:g} s"))
        return
    message = first
    if message["type"] != "websocket.receive":
        return
    binary = chosen == SUBPROTOCOL_MSGPACK or (chosen is None and message.get("text") is None)
    client_address(scope, ctx)  # once per connection: audit events and logs name the client
    sink = WsSink(ctx, send, binary=binary, window=window, ack_timeout=ack_timeout)
    requests: ClientItems | None = None
    async with contextlib.AsyncExitStack() as held:
        try:
            # authorized by the gate below, once the message's tenant applies
            env = parse_envelope(ctx, _decode(message), authorize=False)
            apply_timeout(ctx, env)
            known = registry.get(env.method)
            if known is not None:  # its registration options (concurrency) for the gate
                ctx.extras["aduib.method_spec"] = known
            # the same tenant, auth, rate-limit and admission decisions as over HTTP
            # (auth before the method's existence, as there), held until the call ends
            await held.enter_async_context(admit(ctx, env.method, scope))
            spec = registry.resolve(env.method)
            ctx.extras["aduib.method_spec"] = spec
            md = env.metadata
            if ctx.tenant_id is not None and md is not None and md.tenant_id is not None \
                    and md.tenant_id != ctx.tenant_id:
                raise RpcError(2003, "metadata.tenant_id differs from the connection's tenant")
            if spec.options.get("stream_mode") in ("client", "bidi"):
                requests = ClientItems(spec, max_client_buffer)
                if env.data is not None:
                    requests.push(env.data)
            source = await open_source(spec, env.data, ctx, requests)
        except Exception as exc:
            await sink.reject(exc)
            return
        run = StreamRun(ctx, sink, heartbeat_interval=heartbeat_interval)
        try:
            key = inflight.register(ctx, run, scope) if inflight is not None else None
        except RpcError as exc:  # the registry is full (5021)
            await sink.reject(exc)
            return
        try:
            await run.run(source, _reader(receive, sink, requests))
        finally:
            if inflight is not None and key is not None:
                inflight.unregister(key, run)
