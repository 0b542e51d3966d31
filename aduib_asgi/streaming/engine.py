"""The transport-independent stream runner: one loop for SSE and WebSocket.

:class:`StreamRun` pulls items from an async iterator and emits frames from its
:class:`~aduib_asgi.streaming.frames.FrameMachine` through a :class:`FrameSink`
(the transport). It owns everything that is the same on every transport:

* the first item is pulled *before* the response starts, so a handler that
  fails before its first yield (or times out, or is refused) gets a plain HTTP
  error on SSE;
* heartbeats after ``heartbeat_interval`` seconds without a frame;
* cancellation (:meth:`StreamRun.cancel`: ``cancel`` then ``end``), client
  disconnect (:meth:`StreamRun.disconnect`: the handler is cancelled and its
  ``finally`` runs, no frames), a protocol failure (:meth:`StreamRun.fail`);
* the deadline ``ctx.deadline`` enforced in-band (``error`` 5003 then ``end``),
  after lifting the DeadlineMiddleware's cancel scope;
* exactly one ``end`` frame, last, whatever happens.

While a stream runs, ``ctx.extras["aduib.stream"]`` is the run: handlers may read
``run.cancelled`` (or ``ctx.cancelled``/``ctx.cancel_reason``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

import anyio
from anyio.lowlevel import checkpoint

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.responses import log_error, to_rpc_error
from aduib_asgi.streaming.frames import Frame, FrameMachine, StreamState

__all__ = ["DEADLINE_SCOPE_KEY", "STREAM_KEY", "FrameSink", "StreamRun", "aclose_quietly"]

logger = logging.getLogger("aduib_asgi.streaming")

#: ``ctx.extras`` key of DeadlineMiddleware's cancel scope (lifted once a stream starts).
DEADLINE_SCOPE_KEY = "aduib.deadline_scope"
#: ``ctx.extras`` key of the running :class:`StreamRun`.
STREAM_KEY = "aduib.stream"

#: Longest a stream keeps the event loop between two frames' checkpoints (seconds).
TURN_INTERVAL = 0.001

#: Longest :meth:`StreamRun.abort` waits for a slow reader to take the last frames.
ABORT_SEND_TIMEOUT = 1.0

CANCEL = "cancel"
DISCONNECT = "disconnect"


class FrameSink(Protocol):
    """A transport for frames (SSE response, WebSocket)."""

    #: True when errors before the first frame are answered outside the stream
    #: (an HTTP error response) rather than as in-band ``error`` + ``end`` frames.
    http_errors: bool
    #: True when data frames need credit (:meth:`acquire_credit`) before sending.
    flow_controlled: bool

    async def start(self) -> None:
        """Start the response (called once, before the first frame)."""

    async def send_frame(self, frame: Frame) -> None:
        """Send one frame (raise OSError when the peer is gone)."""

    async def finish(self) -> None:
        """Close the stream after its ``end`` frame."""

    async def fail_before_start(self, exc: BaseException) -> None:
        """Answer a failure before the first frame (only when ``http_errors``)."""

    async def acquire_credit(self) -> None:
        """Wait until one more data frame may be sent (only when ``flow_controlled``).

        Raising (e.g. an RpcError when the peer stopped acknowledging) ends the
        stream with that error then ``end``.
        """


async def aclose_quietly(source: Any) -> None:
    """Close an async iterator (runs the handler's ``finally``), shielded, logging failures."""
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:
            logger.warning("stream handler failed while closing", exc_info=True)


Watcher = Callable[["StreamRun"], Coroutine[Any, Any, None]]


class StreamRun:
    """One stream from first item to ``end``; see the module docstring."""

    __slots__ = (
        "_broken",
        "_last",
        "_lock",
        "_scope",
        "cancel_reason",
        "ctx",
        "failure",
        "heartbeat_interval",
        "machine",
        "reason",
        "sink",
        "started",
    )

    def __init__(
        self, ctx: RequestContext, sink: FrameSink, *, heartbeat_interval: float = 0.0
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.heartbeat_interval = heartbeat_interval
        self.machine = FrameMachine()
        self.started = False
        #: Why production stopped early: None, "cancel" or "disconnect".
        self.reason: str | None = None
        self.cancel_reason: str | None = None
        self.failure: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._broken = False  # a frame was cut by a cancellation: send nothing more
        self._lock = anyio.Lock(fast_acquire=True)
        self._last = time.monotonic()

    # -- control (called from other tasks: watcher, cancel endpoint, ws reader) -----

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str | None = None) -> None:
        """End the stream with ``cancel`` (``control.reason``) then ``end``."""
        if self.reason is None and self.failure is None:
            self.reason = CANCEL
            self.cancel_reason = reason or "canceled"
            self.ctx.cancelled = True
            self.ctx.cancel_reason = self.cancel_reason
            self._stop()

    def disconnect(self) -> None:
        """The client went away: cancel the handler, send nothing more."""
        if self.reason != DISCONNECT:
            self.reason = DISCONNECT
            self.ctx.cancelled = True
            if self.ctx.cancel_reason is None:
                self.ctx.cancel_reason = "client disconnected"
            self._stop()

    def fail(self, exc: BaseException) -> None:
        """Stop the handler and end the stream with ``error`` (e.g. an invalid client frame)."""
        if self.reason is None and self.failure is None:
            self.failure = exc
            self._stop()

    def _stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    # -- running --------------------------------------------------------------------

    async def run(self, source: AsyncIterator[Any], watcher: Watcher | None = None) -> StreamState:
        """Stream ``source`` to the sink until it ends; always closes ``source``."""
        ctx = self.ctx
        ctx.extras[STREAM_KEY] = self
        dscope = ctx.extras.get(DEADLINE_SCOPE_KEY)
        if dscope is not None:
            dscope.deadline = math.inf  # enforced in-band from here on
        deadline = math.inf
        if ctx.deadline is not None:
            deadline = anyio.current_time() + (ctx.deadline - time.monotonic())
        self._last = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                if watcher is not None:
                    tg.start_soon(watcher, self)
                if self.heartbeat_interval > 0:
                    tg.start_soon(self._heartbeats)
                with anyio.CancelScope(deadline=deadline) as cs:
                    self._scope = cs
                    if self.reason is not None or self.failure is not None:
                        cs.cancel()
                    await self._pump(source)
                self._scope = None
                # Close the handler before the last frames: its cleanup runs first.
                await aclose_quietly(source)
                await self._finish(cs.cancelled_caught and self.reason is None
                                   and self.failure is None)
                tg.cancel_scope.cancel()
        finally:
            self._scope = None
            await aclose_quietly(source)
            ctx.extras.pop(STREAM_KEY, None)
        return self.machine.state

    async def _start(self) -> None:
        self.started = True
        await self.sink.start()

    async def _send(self, frame: Frame) -> None:
        """Send one frame; a cancellation that cuts it marks the transport broken.

        A deadline or cancel can land while a frame waits on a slow reader. Whether
        the frame was written is then unknown, and a compressing layer's encoder
        has already taken it: any later frame would follow a gap or an
        undecodable body. So nothing more is sent on that response — the client
        sees it end early, as after a lost connection. (Shielding every send
        would avoid this rare case at ~0.5 µs per frame.)
        """
        try:
            await self.sink.send_frame(frame)
        except anyio.get_cancelled_exc_class():
            self._broken = True
            raise

    async def _pump(self, source: AsyncIterator[Any]) -> None:
        anext_ = source.__anext__
        machine = self.machine
        sink = self.sink
        lock = self._lock
        flow = sink.flow_controlled
        next_turn = time.monotonic() + TURN_INTERVAL
        while True:
            try:
                item = await anext_()
            except StopAsyncIteration:
                return
            except Exception as exc:  # the handler failed
                self.failure = exc
                return
            if flow:
                try:
                    await sink.acquire_credit()
                except Exception as exc:  # e.g. no ack in time: error + end
                    self.failure = exc
                    return
            async with lock:
                if not machine.is_open:
                    return
                if not self.started:
                    await self._start()
                frame = machine.item(item)
                try:
                    await self._send(frame)
                except OSError:
                    self.disconnect()
                    return
                except Exception as exc:  # the item cannot be encoded: error + end
                    machine.retract(frame)
                    self.failure = exc
                    if not getattr(sink, "committed", True):
                        self.started = False  # nothing reached the client: an HTTP error
                    return
                self._last = now = time.monotonic()
            # A turn for the loop at least every TURN_INTERVAL: a handler that never
            # awaits and a send that never blocks (fast reader, or a server that drops
            # writes after a disconnect) would otherwise keep the loop to this stream
            # alone — the disconnect watcher, the cancel endpoint and every other
            # request would starve. (A checkpoint per frame costs ~8 µs, as much as
            # the frame itself; see benchmarks/starvation.py.) The next turn counts
            # from before this one: while others keep the loop busy, every frame yields.
            if now >= next_turn:
                await checkpoint()
                next_turn = now + TURN_INTERVAL

    async def _heartbeats(self) -> None:
        interval = self.heartbeat_interval
        machine = self.machine
        while True:
            wait = self._last + interval - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            async with self._lock:
                if not machine.is_open or self.reason is not None or self.failure is not None:
                    return
                if time.monotonic() - self._last < interval:
                    continue
                try:
                    if not self.started:
                        await self._start()
                    await self.sink.send_frame(machine.heartbeat())
                except OSError:
                    self.disconnect()
                    return
                self._last = time.monotonic()

    async def _finish(self, timed_out: bool) -> None:
        machine = self.machine
        sink = self.sink
        async with self._lock:
            if machine.ended:
                return
            if self.reason == DISCONNECT or self._broken:
                machine.mark_cancelled()
                return
            frames: list[Frame]
            if self.reason == CANCEL:
                frames = [machine.cancel(self.cancel_reason), machine.end()]
            else:
                exc = self.failure
                if exc is None and timed_out:
                    exc = RpcError(5003, "Deadline exceeded while streaming")
                if exc is None:
                    frames = [machine.end()]
                else:
                    error = to_rpc_error(exc)
                    cause = None if exc is error else exc
                    if not self.started and sink.http_errors:
                        machine.state = StreamState.ERRORED
                        machine.ended = True
                        with contextlib.suppress(OSError):
                            await sink.fail_before_start(exc)
                        return
                    log_error(error, cause, self.ctx)
                    frames = [machine.error(error, cause), machine.end()]
            try:
                if not self.started:
                    await self._start()
                for frame in frames:
                    await sink.send_frame(frame)
                await sink.finish()
            except OSError:
                machine.mark_cancelled()

    async def abort(self, exc: BaseException) -> bool:
        """``scope["aduib.stream_abort"]``: end a started stream in-band after ``exc``."""
        if not self.started:
            return False
        machine = self.machine
        # Shielded from the cancellation that caused the abort, but bounded: a client
        # that stopped reading must not hold the last frames (and a shutdown) forever.
        with anyio.CancelScope(shield=True,
                               deadline=anyio.current_time() + ABORT_SEND_TIMEOUT) as scope:
            async with self._lock:
                if machine.ended:
                    return True
                error = to_rpc_error(exc)
                log_error(error, None if exc is error else exc, self.ctx)
                frames = []
                if machine.is_open:
                    frames.append(machine.error(error, None if exc is error else exc))
                frames.append(machine.end())
                try:
                    for frame in frames:
                        await self.sink.send_frame(frame)
                    await self.sink.finish()
                except OSError:
                    pass
        if scope.cancelled_caught:  # the peer did not take them in time
            self._broken = True
            machine.mark_cancelled()
        return True
