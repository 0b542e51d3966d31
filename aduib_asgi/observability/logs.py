"""Structured logs stamped with the request's context.

:class:`RequestContextFilter` (a ``logging.Filter``; put it on your handlers)
stamps every record logged while a request is handled with ``request_id``,
``trace_id``, ``span_id``, ``tenant_id`` and ``method`` (None outside a request),
and ``client`` (the address :mod:`aduib_asgi.identity` resolved, once it did),
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

from aduib_asgi.auth.forwarded_cert import CLIENT_CERT_HEADERS
from aduib_asgi.context import current_context
from aduib_asgi.logsafe import safe, safe_args, safe_traceback
from aduib_asgi.responses import handshake_refused

__all__ = [
    "CONTEXT_FIELDS",
    "SECRET_HEADERS",
    "TEXT_FORMAT",
    "CredentialHeaderFilter",
    "JsonFormatter",
    "RefusedHandshakeFilter",
    "RequestContextFilter",
    "add_request_context",
    "configure_logging",
]

CONTEXT_FIELDS = ("request_id", "trace_id", "span_id", "tenant_id", "method")
TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [rid=%(request_id)s trace=%(trace_id)s "
    "span=%(span_id)s tenant=%(tenant_id)s method=%(method)s] %(message)s"
)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", *CONTEXT_FIELDS,
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}


class RequestContextFilter(logging.Filter):
    """Stamp records with the five request-context fields; never drops a record.

    Every text value - the context fields (client-supplied ids, method, tenant)
    and the record's ``args`` - has its control characters escaped
    (:func:`aduib_asgi.logsafe.safe`), so no client value can start a log line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_context.get()
        if ctx is None:
            record.request_id = record.trace_id = record.span_id = None
            record.tenant_id = record.method = record.client = None
        else:
            record.request_id = safe(ctx.request_id)
            record.trace_id = safe(ctx.trace_id)
            record.span_id = safe(ctx.span_id)
            record.tenant_id = safe(ctx.tenant_id)
            record.method = safe(ctx.method)
            record.client = safe(ctx.client)  # once resolved (aduib_asgi.identity)
        if record.args:
            record.args = safe_args(record.args)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # formatters use a set exc_text as is: the traceback, messages escaped
            record.exc_text = safe_traceback(record.exc_info[1])
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


#: Headers whose values a log line never shows: credentials, and forwarded client
#: certificates (OPERATIONS.md section 3: no PEM in a log), named where they are read.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie",
                            "set-cookie"}) | CLIENT_CERT_HEADERS


class CredentialHeaderFilter(logging.Filter):
    """Redacts credential values from header dumps (``"< %s: %s"``, name and value).

    The ``websockets`` library logs every handshake header at DEBUG through the
    logger uvicorn hands it (``uvicorn.error``): ``authorization``, ``x-api-key``,
    cookies and forwarded client certificates (:data:`SECRET_HEADERS`) would reach
    the log verbatim at ``--log-level debug``/``trace``.
    Put it on the ``uvicorn.error`` logger (``aduib-asgi demo`` does).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and isinstance(record.msg, str) \
                and record.msg.endswith("%s: %s") and str(args[0]).lower() in SECRET_HEADERS:
            record.args = (args[0], "<redacted>")
        return True


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
