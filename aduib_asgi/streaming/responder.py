"""``stream_response``: serve any async iterator as an SSE stream (both framings).

This is the one SSE implementation of the package: ``/rpc/stream``,
TaskService/Subscribe and HealthService/Watch all answer through it::

    async def watch(scope, receive, send, ctx):
        await stream_response(scope, receive, send, ctx, events(),
                              default_framing=cfg.default_framing,
                              heartbeat_interval=cfg.heartbeat_interval,
                              item_encoder=raw_item)   # envelope framing: the model itself

Items are sent as ``data`` frames (wrap one in :class:`~aduib_asgi.streaming.frames.Partial`
for a ``partial`` frame); the first item is pulled before the response starts,
so anything that fails before it is a plain HTTP error. See
:mod:`aduib_asgi.streaming.engine` for heartbeats, cancellation and deadlines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from anyio.lowlevel import checkpoint
from starlette.types import Receive, Scope, Send

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.streaming.engine import StreamRun
from aduib_asgi.streaming.frames import Frame, StreamState
from aduib_asgi.streaming.inflight import InflightRegistry
from aduib_asgi.streaming.sources import as_async_iterator
from aduib_asgi.streaming.sse import (
    ENVELOPE,
    MESSAGE,
    SSE_HEADERS,
    EnvelopeSseEncoder,
    ItemEncoder,
    MessageSseEncoder,
    select_framing,
    send_stream_error,
)

__all__ = ["STREAM_ABORT_KEY", "SseSink", "raw_item", "stream_response"]

#: Scope key of the in-band abort hook the error mapper calls (see middleware/errors.py).
STREAM_ABORT_KEY = "aduib.stream_abort"

_END_BODY = {"type": "http.response.body", "body": b"", "more_body": False}


def raw_item(ctx: RequestContext, value: Any, status: str) -> Any:
    """Envelope-framing item encoder that sends the item itself (TaskEvent, HealthCheckResponse)."""
    return value


class SseSink:
    """Frames as SSE events on an HTTP response; one ``http.response.body`` per frame."""

    __slots__ = ("committed", "ctx", "encode", "framing", "headers", "scope", "send")

    http_errors = True
    flow_controlled = False

    def __init__(
        self,
        scope: Scope,
        send: Send,
        ctx: RequestContext,
        framing: str,
        *,
        item_encoder: ItemEncoder | None = None,
        retry_ms: int | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.scope = scope
        self.send = send
        self.ctx = ctx
        self.framing = framing
        encoder = (EnvelopeSseEncoder(ctx, item_encoder) if framing == ENVELOPE
                   else MessageSseEncoder(ctx, retry_ms))
        self.encode = encoder.encode
        self.headers = [*SSE_HEADERS, *headers]
        #: The 200 response start was sent (it goes with the first encoded frame, so
        #: a first item that cannot be encoded is still a plain HTTP error).
        self.committed = False

    async def start(self) -> None:
        return None  # deferred to the first frame that encodes

    async def _commit(self) -> None:
        self.committed = True
        await self.send({"type": "http.response.start", "status": 200, "headers": self.headers})

    async def send_frame(self, frame: Frame) -> None:
        body = self.encode(frame)
        if not self.committed:
            await self._commit()
        if body:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self) -> None:
        if not self.committed:
            await self._commit()
        await self.send(_END_BODY)

    async def fail_before_start(self, exc: BaseException) -> None:
        await send_stream_error(self.scope, self.send, exc, ctx=self.ctx, framing=self.framing)

    async def acquire_credit(self) -> None:  # SSE relies on TCP back-pressure
        return None


def _disconnect_watcher(receive: Receive) -> Any:
    async def watch(run: StreamRun) -> None:
        while True:
            try:
                message = await receive()
            except Exception:  # the server refuses further receives: treat as gone
                run.disconnect()
                return
            if message["type"] == "http.disconnect":
                run.disconnect()
                return
            # anything else (a wrapper replaying an empty body...): never spin on it
            await checkpoint()

    return watch


async def stream_response(
    scope: Scope,
    receive: Receive,
    send: Send,
    ctx: RequestContext,
    source: Any,
    *,
    default_framing: str = MESSAGE,
    heartbeat_interval: float = 15.0,
    retry_ms: int | None = None,
    item_encoder: ItemEncoder | None = None,
    inflight: InflightRegistry | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> StreamState:
    """Serve ``source`` (async/sync iterable of items) as ``text/event-stream``.

    * framing: ``Aduib-Stream-Framing`` request header, else ``default_framing``;
      the response names it in the same header;
    * ``heartbeat_interval`` seconds without a frame → a heartbeat (0: off);
    * ``retry_ms``: an SSE ``retry:`` hint on the first event (message framing);
    * ``item_encoder(ctx, value, status)``: the JSON of one envelope-framing event
      (default: a response envelope around the item; :func:`raw_item` sends the
      item itself);
    * ``inflight``: register the stream under ``ctx.request_id`` so
      ``POST .../rpc/cancel`` can cancel it;
    * client disconnect cancels the handler; ``ctx.deadline`` ends the stream with
      ``error`` 5003 + ``end``; ``scope["aduib.stream_abort"]`` is installed.

    Returns the final :class:`StreamState`. The request body must already have
    been read (``receive`` is only watched for ``http.disconnect``).
    """
    try:
        framing = select_framing(ctx, default_framing)
        it = as_async_iterator(source)
    except (RpcError, TypeError) as exc:
        await send_stream_error(scope, send, exc, ctx=ctx)
        return StreamState.ERRORED
    sink = SseSink(scope, send, ctx, framing, item_encoder=item_encoder, retry_ms=retry_ms,
                   headers=headers)
    run = StreamRun(ctx, sink, heartbeat_interval=heartbeat_interval)
    scope[STREAM_ABORT_KEY] = run.abort
    if inflight is None:
        return await run.run(it, _disconnect_watcher(receive))
    try:
        key = inflight.register(ctx, run, scope)
    except RpcError as exc:  # the registry is full (5021)
        await send_stream_error(scope, send, exc, ctx=ctx)
        return StreamState.ERRORED
    try:
        return await run.run(it, _disconnect_watcher(receive))
    finally:
        inflight.unregister(key, run)
