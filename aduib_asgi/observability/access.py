"""AccessLogMiddleware: one log line per call (logger ``aduib_asgi.access``, INFO).

Fields: ``method`` (the RPC method, else the HTTP method and path), ``status``,
``code`` (the error code, null on success), ``duration_ms``, ``tenant``,
``principal``, ``request_id``, ``trace_id``, ``client``, ``http`` (the HTTP
method and path). Every value is escaped (no raw CR, LF or other control
character; see :func:`escape`); no header, query string, body or credential is
written. ``json_format=True``: the message is ``"access"`` and the fields are
record attributes (rendered by :class:`~aduib_asgi.observability.logs.JsonFormatter`);
otherwise the message is ``key=value`` text (quoted where needed).

Put it outermost (it creates the request context, so every layer's decisions
are on it when the line is written); for a WebSocket, one line when it ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.logsafe import escape
from aduib_asgi.observability.outcome import error_code, record_exception, watch_error_code

__all__ = ["ACCESS_FIELDS", "AccessLogMiddleware", "escape"]

logger = logging.getLogger("aduib_asgi.access")

ACCESS_FIELDS = ("method", "status", "code", "duration_ms", "tenant", "principal",
                 "request_id", "trace_id", "client", "http")
def _text_value(value: object) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if not text or " " in text or '"' in text or "=" in text:
        return '"' + text.replace('"', '\\"') + '"'
    return text


class _Responder:
    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        t = message["type"]
        if t == "http.response.start" or t == "websocket.http.response.start":
            self.status = message["status"]
        elif t == "websocket.accept":
            self.status = 101
        elif t == "websocket.close" and self.status is None:
            self.status = 403  # closed before the handshake completed (ASGI spec)
        await self.send(message)


class AccessLogMiddleware:
    """Write one access log line per HTTP request or WebSocket connection."""

    layer_name = "access"
    #: runs no handler with the context; calls ``app`` for every scope (aduib_asgi.stack)
    context_methods: ClassVar[dict[str, str]] = {}

    def __init__(self, app: ASGIApp, *, json_format: bool = False,
                 log: logging.Logger | None = None) -> None:
        self.app = app
        self.json_format = json_format
        self.logger = log if log is not None else logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if (t == "http" or t == "websocket") and self.logger.isEnabledFor(logging.INFO):
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      ctx: RequestContext) -> None:
        watch_error_code(ctx)
        responder = _Responder(send)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, responder)
        except BaseException as exc:
            if isinstance(exc, Exception):
                record_exception(ctx, exc)
            if responder.status is None:
                responder.status = 500
            raise
        finally:
            self._write(scope, ctx, responder.status, (time.perf_counter() - start) * 1000.0)

    def fields(self, scope: Scope, ctx: RequestContext, status: int | None,
               duration_ms: float) -> dict[str, Any]:
        """The line's fields, every client-supplied value escaped."""
        client = scope.get("client")
        http = f"{scope.get('method', 'WS')} {scope.get('path', '')}"
        return {
            "method": escape(ctx.method) if ctx.method else escape(http),
            "status": status,
            "code": error_code(ctx),
            "duration_ms": round(duration_ms, 2),
            "tenant": escape(ctx.tenant_id) if ctx.tenant_id is not None else None,
            "principal": escape(ctx.principal) if ctx.principal is not None else None,
            "request_id": escape(ctx.request_id) if ctx.request_id is not None else None,
            "trace_id": escape(ctx.trace_id) if ctx.trace_id is not None else None,
            "client": escape(client[0]) if client else None,
            "http": escape(http),
        }

    def _write(self, scope: Scope, ctx: RequestContext, status: int | None,
               duration_ms: float) -> None:
        try:
            fields = self.fields(scope, ctx, status, duration_ms)
            msg = "access" if self.json_format else " ".join(
                [f"{k}={_text_value(fields[k])}" for k in ACCESS_FIELDS])
            log = self.logger
            # makeRecord + handle: what Logger.info does minus findCaller's stack walk
            log.handle(log.makeRecord(log.name, logging.INFO, "(access)", 0, msg, (), None,
                                      "access", {"access": fields}))
        except Exception:  # a log line never breaks a response
            logging.getLogger("aduib_asgi.observability").debug("access log failed",
                                                                 exc_info=True)
