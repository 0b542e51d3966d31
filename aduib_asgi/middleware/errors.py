"""ErrorMappingMiddleware: any exception from inside becomes the standard error envelope."""

from __future__ import annotations

import logging
from typing import ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import (
    RequestContext,
    emitter_parts,
    run_with_context,
    with_response_headers,
)
from aduib_asgi.http_errors import MAX_MAPPED_BODY, error_from_response, is_mappable
from aduib_asgi.logsafe import safe
from aduib_asgi.responses import can_deny_websocket, deny_websocket, send_error

__all__ = ["ErrorMappingMiddleware"]

logger = logging.getLogger("aduib_asgi.errors")

#: Scope key of a callable ``async (exc) -> bool`` a streaming responder may
#: install: called when an exception escapes after the response started; it
#: finishes the stream in-band (error + end frames) and returns True if it did.
STREAM_ABORT_KEY = "aduib.stream_abort"


class ErrorMappingMiddleware:
    """Outermost layer: turns exceptions into envelopes with the table's HTTP status.

    ``debug=True`` (development mode) adds ``error.debug`` (stack trace and
    internal message) to error bodies; never enable it in production. Works
    around any ASGI app: responses that do not fail pass through untouched.

    ``map_http_errors`` (default on): a plain HTTP error response of the app
    inside - a Starlette/FastAPI ``HTTPException``, FastAPI's request-validation
    422 - becomes the standard envelope with the same status
    (:mod:`aduib_asgi.http_errors`, docs/fastapi.md).
    """

    layer_name = "errors"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http", "websocket": "_websocket"}

    def __init__(self, app: ASGIApp, *, debug: bool = False,
                 map_http_errors: bool = True) -> None:
        self.app = app
        self.debug = debug
        self.map_http_errors = map_http_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await run_with_context(self._http, scope, receive, send)
        elif scope["type"] == "websocket":
            await run_with_context(self._websocket, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        if self.debug:
            ctx.debug = True
        responder = _ErrorResponder(send, self.map_http_errors)
        try:
            await self.app(scope, receive, responder)
        except Exception as exc:
            # A 500 held back (Starlette's ServerErrorMiddleware sends one, then
            # re-raises) is replaced by the envelope.
            if not responder.started:
                await send_error(scope, send, exc, ctx=ctx)
                return
            abort = scope.get(STREAM_ABORT_KEY)
            if abort is not None and await abort(exc):
                return
            logger.error(
                "exception after the response started (request %s); ending the response",
                safe(ctx.request_id), exc_info=exc,
            )
            if not responder.finished:
                try:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except Exception:  # the server may refuse a short body: nothing more to do
                    logger.debug("could not end the response cleanly", exc_info=True)
        else:
            if responder.held:
                mapped = responder.mapped_error()
                if mapped is None:
                    await responder.flush()
                else:
                    error, headers = mapped
                    await send_error(scope, send, error, ctx=ctx, extra_headers=headers)

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        if self.debug:
            ctx.debug = True
        tracker = _HandshakeTracker(send)
        try:
            await self.app(scope, receive, tracker)
        except Exception as exc:
            if not tracker.answered and can_deny_websocket(scope):
                # before the handshake: the 500 error response (logged by send_error)
                await deny_websocket(scope, send, exc, ctx=ctx)
                return
            logger.error("exception in websocket handler (request %s)", safe(ctx.request_id),
                         exc_info=exc)
            try:
                await send({"type": "websocket.close", "code": 1011, "reason": "internal error"})
            except Exception:
                logger.debug("could not close the websocket", exc_info=True)


class _HandshakeTracker:
    """Notes whether the app answered the WebSocket handshake (accept, close or HTTP)."""

    __slots__ = ("answered", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.answered = False

    async def __call__(self, message: Message) -> None:
        self.answered = True
        await self.send(message)


class _ErrorResponder:
    """Tracks whether the response started; holds back a complete 500, and a small
    plain HTTP error response (to map it), until the app returns.

    Wrapping the context creator's header emitter (the error layer outermost), it
    sends to the server itself and merges ``ctx.response_headers`` into the start
    as the emitter would: one call per message less."""

    __slots__ = ("ctx", "finished", "held", "held_bytes", "map_errors", "mappable", "send",
                 "started")

    def __init__(self, send: Send, map_errors: bool = False) -> None:
        self.send, self.ctx = emitter_parts(send)
        self.map_errors = map_errors
        self.started = False
        self.finished = False
        self.held: list[Message] | None = None
        self.held_bytes = 0
        self.mappable = False

    async def __call__(self, message: Message) -> None:
        t = message["type"]
        if self.held is not None:
            self.held.append(message)
            if t == "http.response.body":
                self.held_bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return  # complete: kept until the app returns or raises
                if not self.mappable or self.held_bytes > MAX_MAPPED_BODY:
                    await self.flush()  # a streamed or large body: stop holding it back
            return
        if t == "http.response.start":
            status = message["status"]
            self.mappable = status >= 400 and self.map_errors and is_mappable(
                status, message.get("headers", ()))
            if status == 500 or self.mappable:
                self.held = [message]
                self.held_bytes = 0
                return
            self.started = True
            ctx = self.ctx
            if ctx is not None and ctx.response_headers:
                message = with_response_headers(message, ctx)
        elif t == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self.send(message)

    def mapped_error(self) -> tuple[Exception, list[tuple[bytes, bytes]]] | None:
        """The envelope error for a complete held plain HTTP error response, if it is one."""
        held = self.held
        if not self.mappable or not held or held[-1].get("more_body", False):
            return None
        start = held[0]
        body = b"".join(m.get("body", b"") for m in held[1:])
        return error_from_response(start["status"], list(start.get("headers", ())), body)

    async def flush(self) -> None:
        held, self.held = self.held or [], None
        for message in held:
            if message["type"] == "http.response.start":
                self.started = True
                ctx = self.ctx
                if ctx is not None and ctx.response_headers:
                    message = with_response_headers(message, ctx)
            elif not message.get("more_body", False):
                self.finished = True
            await self.send(message)
