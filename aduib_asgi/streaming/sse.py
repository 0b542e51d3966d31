"""Server-Sent Events encoding in the two framings of PROTOCOL.md §5.1.

* ``message`` (the protocol's, the default): each frame is one event with
  ``id: <sequence>``, ``event: <type>`` and ``data: <StreamMessage JSON>``.
* ``envelope`` (for aduib-rpc 2.0.1-era clients): each item is ``data: <JSON>``
  only — a full response envelope on ``/rpc/stream`` (``status`` success, or
  partial), or the endpoint's own model (TaskEvent, HealthCheckResponse) when the
  endpoint passes an ``item_encoder``; an error is one error-envelope event;
  heartbeats are ``: ping`` comment lines; the end of the stream is the close of
  the body (no ``id:``, ``event:`` or ``retry:`` lines ever).

The framing is chosen per app (default) and per request by the
``Aduib-Stream-Framing`` header; :func:`select_framing` records the choice on
the context and names it in the response's header of the same name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pydantic_core
from pydantic import BaseModel
from starlette.types import Scope, Send

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.responses import (
    _SHAPER_KEY,
    _debug_info,
    build_envelope,
    error_envelope,
    send_error,
)
from aduib_asgi.streaming.frames import DATA, ERROR, HEARTBEAT, PARTIAL, Frame

__all__ = [
    "ENVELOPE",
    "FRAMINGS",
    "FRAMING_HEADER",
    "MESSAGE",
    "SSE_HEADERS",
    "EnvelopeSseEncoder",
    "ItemEncoder",
    "MessageSseEncoder",
    "select_framing",
    "send_stream_error",
    "sse_event",
]

MESSAGE = "message"
ENVELOPE = "envelope"
FRAMINGS = (MESSAGE, ENVELOPE)
#: Request header choosing the framing; the response names the framing used in it.
FRAMING_HEADER = b"aduib-stream-framing"
_FRAMING_VALUES = {MESSAGE.encode(): MESSAGE, ENVELOPE.encode(): ENVELOPE}

#: Headers of every SSE response (PROTOCOL.md §5: proxies must not buffer or cache).
SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)

_PING = b": ping\n\n"

#: ``item_encoder(ctx, value, status)`` -> the JSON value of one envelope-framing event.
ItemEncoder = Callable[[RequestContext, Any, str], Any]


def _clean_field(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if b"\n" in raw or b"\r" in raw or b"\0" in raw:
        raw = raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
    return raw


def sse_event(
    data: str | bytes,
    *,
    event: str | bytes | None = None,
    id: str | bytes | int | None = None,
    retry: int | None = None,
) -> bytes:
    """One SSE event. Newlines in ``data`` become several ``data:`` lines (CR, LF, CRLF)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    parts: list[bytes] = []
    if id is not None:
        parts.append(b"id: " + _clean_field(str(id) if isinstance(id, int) else id) + b"\n")
    if event is not None:
        parts.append(b"event: " + _clean_field(event) + b"\n")
    if retry is not None:
        parts.append(b"retry: %d\n" % int(retry))
    if b"\n" in raw or b"\r" in raw:
        lines = raw.splitlines()
        if raw.endswith((b"\n", b"\r")):
            lines.append(b"")
        parts.extend(b"data: " + line + b"\n" for line in lines)
    else:
        parts.append(b"data: " + raw + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


def jsonable(value: Any) -> Any:
    """Stream items as JSON-like values (pydantic models dumped in JSON mode)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def _to_json(value: Any) -> bytes:
    return pydantic_core.to_json(value)


def message_dict(ctx: RequestContext | None, frame: Frame) -> dict[str, Any]:
    """A frame as the StreamMessage JSON object (the same for SSE and WebSocket)."""
    t = frame.type
    if t in (DATA, PARTIAL):
        payload: dict[str, Any] = {"data": jsonable(frame.data)}
    elif t == ERROR:
        payload = {"error": error_dict(ctx, frame)}
    else:
        payload = frame.payload()
    return {"type": t, "sequence": frame.sequence, "timestamp_ms": frame.timestamp_ms,
            "payload": payload}


def error_dict(ctx: RequestContext | None, frame: Frame) -> dict[str, Any]:
    """The ``error`` member of an error frame (``debug`` only in development mode)."""
    assert frame.error is not None
    err = frame.error.to_dict()
    if ctx is not None and ctx.debug:
        err["debug"] = _debug_info(frame.error, frame.cause)
    return err


class MessageSseEncoder:
    """StreamMessage framing: ``id:``/``event:``/``data:`` per frame (``retry:`` once)."""

    __slots__ = ("ctx", "retry_ms")

    _EVENT = {t: b"\nevent: " + t.encode() + b"\ndata: "
              for t in ("data", "partial", "heartbeat", "error", "end", "cancel", "ack")}

    def __init__(self, ctx: RequestContext | None, retry_ms: int | None = None) -> None:
        self.ctx = ctx
        self.retry_ms = retry_ms

    def encode(self, frame: Frame) -> bytes:
        t = frame.type
        body = _to_json(message_dict(self.ctx, frame))
        head = b"id: %d" % frame.sequence
        if self.retry_ms is not None:
            head = b"retry: %d\n" % self.retry_ms + head
            self.retry_ms = None
        # JSON from pydantic-core never holds a raw newline: one data line.
        return head + self._EVENT[t] + body + b"\n\n"


def envelope_item(ctx: RequestContext, value: Any, status: str) -> Any:
    """Default envelope-framing item: a full response envelope around ``value``."""
    return build_envelope(ctx, result=jsonable(value), status=status)


class _EnvelopeItems:
    """The default item encoder of one stream: the common members are built once."""

    __slots__ = ("_template",)

    def __init__(self) -> None:
        self._template: dict[str, Any] | None = None

    def __call__(self, ctx: RequestContext, value: Any, status: str) -> Any:
        tpl = self._template
        if tpl is None:
            if ctx.extras.get(_SHAPER_KEY) is not None:  # reshaped (v1): build each time
                return envelope_item(ctx, value, status)
            tpl = build_envelope(ctx)
            tpl.pop("result", None)
            self._template = tpl
        env = dict(tpl)
        env["status"] = status
        if value is not None:
            env["result"] = jsonable(value)
        meta = env.get("metadata")
        if meta is not None:
            meta = dict(meta)
            meta["timestamp_ms"] = int(time.time() * 1000)
            meta["duration_ms"] = ctx.duration_ms()
            env["metadata"] = meta
        return env


class EnvelopeSseEncoder:
    """Envelope framing: ``data: <JSON>`` per item, ``: ping`` heartbeats, nothing else."""

    __slots__ = ("ctx", "item_encoder")

    def __init__(self, ctx: RequestContext, item_encoder: ItemEncoder | None = None) -> None:
        self.ctx = ctx
        self.item_encoder = item_encoder or _EnvelopeItems()

    def encode(self, frame: Frame) -> bytes:
        t = frame.type
        if t == DATA:
            return b"data: " + _to_json(jsonable(self.item_encoder(self.ctx, frame.data,
                                                                   "success"))) + b"\n\n"
        if t == PARTIAL:
            return b"data: " + _to_json(jsonable(self.item_encoder(self.ctx, frame.data,
                                                                   "partial"))) + b"\n\n"
        if t == HEARTBEAT:
            return _PING
        if t == ERROR:
            assert frame.error is not None
            env = error_envelope(self.ctx, frame.error, frame.cause)
            return b"data: " + _to_json(env) + b"\n\n"
        return b""  # cancel and end: the close of the body says it


def select_framing(ctx: RequestContext, default: str = MESSAGE) -> str:
    """The framing of this request: ``Aduib-Stream-Framing`` header, else ``default``.

    Recorded in ``ctx.stream_framing`` and named in the response header (once).
    An unknown header value is 2003 (rendered in the default framing).
    """
    if ctx.stream_framing is not None:
        return ctx.stream_framing
    framing = default
    raw = ctx.header(FRAMING_HEADER)
    bad = False
    if raw is not None:
        chosen = _FRAMING_VALUES.get(raw.strip().lower())
        if chosen is None:
            bad = True
        else:
            framing = chosen
    ctx.stream_framing = framing
    ctx.add_response_header(FRAMING_HEADER, framing.encode())
    if bad:
        assert raw is not None
        raise RpcError(2003, "Aduib-Stream-Framing must be 'message' or 'envelope'",
                       details=[{"type": "value_error", "field": "Aduib-Stream-Framing",
                                 "reason": f"unknown framing {raw[:32].decode('latin-1')!r}"}])
    return framing


async def send_stream_error(
    scope: Scope,
    send: Send,
    exc: BaseException,
    *,
    ctx: RequestContext,
    framing: str | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> RpcError:
    """Answer a stream request that failed before its first frame, as a plain HTTP error.

    Message framing: the error envelope in the negotiated codec with the table's
    status. Envelope framing: the same status, but ``text/event-stream`` with one
    error-envelope event, so a 2.0.1 client (which reads SSE whatever the status)
    still sees the code.
    """
    if framing is not None:
        ctx.stream_framing = framing
    elif ctx.stream_framing is None:
        ctx.stream_framing = MESSAGE
    return await send_error(scope, send, exc, ctx=ctx, extra_headers=extra_headers)
