"""Structured logs stamped with the request's context.

:class:`RequestContextFilter` (a ``logging.Filter``; put it on your handlers)
stamps every record logged while a request is handled with ``request_id``,
``trace_id``, ``span_id``, ``tenant_id`` and ``method`` (None outside a request),
read from the request-context contextvar, so it works in handlers, worker
threads and streaming generators alike. :class:`JsonFormatter` renders records
as one JSON object per line; :func:`add_request_context` is the same stamping as
a structlog processor; :func:`configure_logging` wires a handler on the root
logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import IO, Any

from aduib_asgi.context import current_context
from aduib_asgi.responses import handshake_refused

_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x5C: "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(value: object, limit: int = 512) -> str:
    """``value`` as text safe for one log line: control characters (C0, DEL, C1,
    line/paragraph separators) and backslashes escaped, cut to ``limit`` chars."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_ESCAPES)

__all__ = [
    "CONTEXT_FIELDS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "RefusedHandshakeFilter",
    "RequestContextFilter",
    "add_request_context",
    "configure_logging",
    "escape",
]

CONTEXT_FIELDS = ("request_id", "trace_id", "span_id", "tenant_id", "method")
TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [rid=%(request_id)s trace=%(trace_id)s "
    "span=%(span_id)s tenant=%(tenant_id)s method=%(method)s] %(message)s"
)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", *CONTEXT_FIELDS,
}


class RequestContextFilter(logging.Filter):
    """Stamp records with the five request-context fields; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_context.get()
        if ctx is None:
            record.request_id = record.trace_id = record.span_id = None
            record.tenant_id = record.method = None
        else:  # client-supplied values: escaped (no raw CR, LF or control characters)
            rid = ctx.request_id
            record.request_id = rid if rid is None or rid.isprintable() else escape(rid)
            record.trace_id = ctx.trace_id
            record.span_id = ctx.span_id
            record.tenant_id = ctx.tenant_id
            method = ctx.method
            record.method = method if method is None or method.isprintable() else escape(method)
        return True


class RefusedHandshakeFilter(logging.Filter):
    """Drops uvicorn's "ASGI callable returned without completing handshake." error
    for WebSocket handshakes the stack refused on purpose with an HTTP response.

    uvicorn's ``websockets-sansio`` protocol (its default) logs that line after a
    ``websocket.http.response`` denial although the response was sent; for a
    refused credential or rate limit that would be an ERROR any client can
    trigger. The record is dropped only in the task whose handshake the stack
    refused; every other record passes. Put it on the ``uvicorn.error`` logger
    (``aduib-asgi demo`` does).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (handshake_refused.get() and record.getMessage().startswith(
            "ASGI callable returned without completing handshake"))


def add_request_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add the five request-context fields (keeps explicit ones)."""
    ctx = current_context.get()
    if ctx is not None:
        event_dict.setdefault("request_id", ctx.request_id)
        event_dict.setdefault("trace_id", ctx.trace_id)
        event_dict.setdefault("span_id", ctx.span_id)
        event_dict.setdefault("tenant_id", ctx.tenant_id)
        event_dict.setdefault("method", ctx.method)
    return event_dict


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            out[key] = getattr(record, key, None)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: int | str = logging.INFO, *, json_format: bool = False, stream: IO[str] | None = None
) -> logging.Handler:
    """Add a stream handler with the context filter (text or JSON) to the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
