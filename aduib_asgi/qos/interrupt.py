"""Ending a request that a QoS layer cut short (deadline passed, shutdown grace over)."""

from __future__ import annotations

from typing import Protocol

from starlette.types import Message, Scope, Send

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware.errors import STREAM_ABORT_KEY
from aduib_asgi.responses import send_error

__all__ = ["ResponseProgress", "end_interrupted", "note_progress", "send_tracked"]


class ResponseProgress(Protocol):
    """What a layer's send wrapper recorded about the response so far."""

    started: bool
    finished: bool


class _Tracked(Protocol):
    send: Send
    started: bool
    finished: bool


def note_progress(progress: ResponseProgress, message: Message) -> None:
    """Record in ``progress`` whether ``message`` starts or finishes the response."""
    t = message["type"]
    if t == "http.response.start":
        progress.started = True
    elif t == "http.response.body" and not message.get("more_body", False):
        progress.finished = True


async def send_tracked(wrapper: _Tracked, message: Message) -> None:
    """Forward ``message`` through ``wrapper.send``, recording the response's progress."""
    note_progress(wrapper, message)
    await wrapper.send(message)


async def end_interrupted(scope: Scope, send: Send, ctx: RequestContext, error: RpcError,
                          progress: ResponseProgress | None, reason: str) -> None:
    """Answer ``error`` if nothing was sent yet; else end the response in-band.

    A stream that started is ended by the streaming layer's abort hook (error
    frame, then ``end``); any other started response is ended cleanly (the
    status can no longer change).
    """
    ctx.cancelled = True
    if ctx.cancel_reason is None:
        ctx.cancel_reason = reason
    if progress is None or not progress.started:
        await send_error(scope, send, error, ctx=ctx)
        return
    if progress.finished:
        return
    abort = scope.get(STREAM_ABORT_KEY)
    if abort is not None and await abort(error):
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
