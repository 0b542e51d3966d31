"""Building and sending response envelopes — the only place envelopes are shaped.

Everything that answers with an envelope (the dispatcher, the error mapper, a
middleware that rejects a request) goes through :func:`build_envelope` and
:func:`send_envelope`, so ``id``, ``negotiated_version``, ``trace_context`` and
``metadata`` are filled the same way everywhere, and the body is encoded once in
the codec negotiated for the request.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

from starlette.types import Message, Scope, Send

from aduib_asgi.codecs import JSON, Codec, CodecRegistry, default_registry
from aduib_asgi.codecs.negotiation import choose_codec, media_type_of, parse_qlist
from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.logsafe import safe

__all__ = [
    "build_envelope",
    "can_deny_websocket",
    "deny_websocket",
    "encode_envelope",
    "error_envelope",
    "handshake_refused",
    "refuse",
    "refuse_websocket",
    "send_envelope",
    "send_error",
    "to_rpc_error",
]

logger = logging.getLogger("aduib_asgi.errors")

#: Hooks that reshape an envelope dict before encoding (the v1 compatibility
#: layer registers one). Called as ``hook(ctx, envelope) -> envelope``.
EnvelopeShaper = Callable[[RequestContext, dict[str, Any]], dict[str, Any]]
_SHAPER_KEY = "aduib.envelope_shaper"

_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"

#: Scope key where :func:`aduib_asgi.stack.build_stack` publishes the app's
#: default SSE framing, so that errors rendered by any layer on a streaming
#: endpoint use it (PROTOCOL.md section 5.1).
STREAM_FRAMING_DEFAULT_KEY = "aduib.stream_framing_default"
STREAM_FRAMING_HEADER = b"aduib-stream-framing"
#: Endpoints answered with SSE (path suffixes under any base path).
STREAM_PATH_SUFFIXES = ("/rpc/stream", "/TaskService/Subscribe", "/HealthService/Watch")
_SSE_ERROR_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)


def stream_error_framing(scope: Scope, ctx: RequestContext | None) -> str | None:
    """The SSE framing an error on this request must use, or None (not a stream).

    Decided only when an error is rendered (no cost on the hot path): the
    framing already chosen for the request, else the ``Aduib-Stream-Framing``
    header on a streaming endpoint, else the app's default framing.
    """
    if ctx is not None and ctx.stream_framing is not None:
        return ctx.stream_framing
    if scope.get("type") != "http" or not scope.get("path", "").endswith(STREAM_PATH_SUFFIXES):
        return None
    raw = ctx.header(STREAM_FRAMING_HEADER) if ctx is not None else None
    if raw is not None:
        value = raw.strip().lower()
        if value in (b"message", b"envelope"):
            return value.decode("ascii")
    framing: str = scope.get(STREAM_FRAMING_DEFAULT_KEY, "message")
    return framing


def to_rpc_error(exc: BaseException) -> RpcError:
    """Map any exception to an error of the table.

    RpcError stays as it is; NotImplementedError is 5001; anything else -
    including a pydantic ValidationError raised inside a handler, which is the
    server's fault, not the client's - is 5000 with a generic message (the real
    text goes to the log and to ``debug`` only). Validation of the request's own
    envelope and params is mapped where it happens (1002, 2001).
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # anyio task groups wrap a single failure
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, NotImplementedError):
        return RpcError(5001)
    return RpcError(5000)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def build_envelope(
    ctx: RequestContext | None,
    *,
    result: Any = None,
    error: RpcError | None = None,
    status: str | None = None,
    cause: BaseException | None = None,
) -> dict[str, Any]:
    """A response envelope dict with every common member filled from ``ctx``."""
    env: dict[str, Any] = {
        "aduib_rpc": "2.0",
        "id": (ctx.request_id if ctx is not None else None) or str(uuid.uuid4()),
    }
    if error is not None:
        env["status"] = "error"
        err = error.to_dict()
        if ctx is not None and ctx.debug:
            err["debug"] = _debug_info(error, cause)
        env["error"] = err
    else:
        env["status"] = status or "success"
        if result is not None:
            env["result"] = result
    if ctx is not None:
        if ctx.negotiated_version is not None:
            env["negotiated_version"] = ctx.negotiated_version
        if ctx.trace_id is not None:  # else trace_context() is None
            trace = ctx.trace_context()
            if trace is not None:
                env["trace_context"] = trace
        env["metadata"] = ctx.response_metadata()
        shaper: EnvelopeShaper | None = ctx.extras.get(_SHAPER_KEY)
        if shaper is not None:
            env = shaper(ctx, env)
    return env


def error_envelope(
    ctx: RequestContext | None, error: RpcError, cause: BaseException | None = None
) -> dict[str, Any]:
    return build_envelope(ctx, error=error, cause=cause)


def _debug_info(error: RpcError, cause: BaseException | None) -> dict[str, Any]:
    exc = cause if cause is not None else error
    return {
        "stack_trace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "internal_message": f"{type(exc).__name__}: {exc}",
        "timestamp_ms": int(time.time() * 1000),
    }


def set_envelope_shaper(ctx: RequestContext, shaper: EnvelopeShaper) -> None:
    """Install a hook that reshapes this request's envelopes before encoding."""
    ctx.extras[_SHAPER_KEY] = shaper


def response_codec(ctx: RequestContext | None) -> Codec:
    if ctx is not None and ctx.response_codec is not None:
        return ctx.response_codec
    return JSON


_error_codecs: CodecRegistry | None = None


def _negotiate_for_error(ctx: RequestContext) -> None:
    """An error before the content layer chose a codec: choose it the same way.

    ``Accept`` first, else the request's own ``Content-Type``, else JSON — so a
    415 or 413 from the compression layer reaches a msgpack client in msgpack.
    """
    global _error_codecs
    registry = _error_codecs
    if registry is None:
        registry = _error_codecs = default_registry()
    raw = ctx.header(b"content-type")
    request = registry.get(media_type_of(raw.decode("latin-1"))) if raw else None
    accept = ctx.header(b"accept")
    codec = choose_codec(parse_qlist(accept.decode("latin-1")), registry, request) \
        if accept else None
    codec = codec or request
    if codec is not None:
        ctx.response_codec = codec


_RETRY_AFTER = b"retry-after"
_WWW_AUTHENTICATE = b"www-authenticate"


def _status_headers(error: RpcError, headers: list[tuple[bytes, bytes]]) -> None:
    """The headers HTTP asks of the status, when whoever raised the error gave none:
    ``Retry-After`` on 429/503 (RFC 9110 §10.2.3), ``WWW-Authenticate`` on 401 (§11.6.1)."""
    status = error.http_status
    if status == 429 or status == 503:
        if not any(k == _RETRY_AFTER for k, _ in headers):
            headers.append((_RETRY_AFTER, b"1"))
    elif status == 401 and not any(k == _WWW_AUTHENTICATE for k, _ in headers):
        headers.append((_WWW_AUTHENTICATE, b'Bearer realm="aduib_rpc"'))


def encode_envelope(ctx: RequestContext | None, env: dict[str, Any]) -> tuple[bytes, bytes]:
    """Encode ``env`` in the negotiated codec: (body, content-type header value)."""
    codec = ctx.response_codec if ctx is not None else None  # response_codec(ctx)
    if codec is None:
        codec = JSON
    try:
        return codec.encode(env), codec.content_type_header
    except Exception:  # a codec that cannot carry this value: fall back to JSON
        if codec is JSON:
            raise
        logger.warning("codec %s could not encode a response; sent JSON", codec.media_type)
        return JSON.encode(env), JSON.content_type_header


async def send_envelope(
    send: Send,
    ctx: RequestContext | None,
    env: dict[str, Any],
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send ``env`` as a complete HTTP response."""
    body, content_type = encode_envelope(ctx, env)
    raw = [
        (_CONTENT_TYPE, content_type),
        (_CONTENT_LENGTH, str(len(body)).encode("latin-1")),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def log_error(error: RpcError, cause: BaseException | None, ctx: RequestContext | None) -> None:
    """Log an error at the table's level; tracebacks only for unexpected ones."""
    level = error.spec.log_level
    if not logger.isEnabledFor(level):
        return
    rid = safe(ctx.request_id) if ctx is not None else None
    if cause is not None and not isinstance(cause, RpcError):
        logger.log(level, "unhandled %s in request %s", type(cause).__name__, rid,
                   exc_info=(type(cause), cause, cause.__traceback__))
    else:
        logger.log(level, "request %s failed: %s %s", rid, error.code, error.name)


async def send_error(
    scope: Scope,
    send: Send,
    exc: BaseException,
    *,
    ctx: RequestContext | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> RpcError:
    """Render any exception as the standard error envelope with the table's status."""
    if ctx is None:
        ctx = scope.get(CONTEXT_KEY)
    error = to_rpc_error(exc)
    if ctx is not None:
        ctx.extras["aduib.error_code"] = error.code  # the outcome, for circuit breakers
        if ctx.response_codec is None:
            _negotiate_for_error(ctx)
    cause = None if _unwrap(exc) is error else exc
    log_error(error, cause, ctx)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    headers.extend(extra_headers)
    _status_headers(error, headers)
    env = error_envelope(ctx, error, cause)
    if stream_error_framing(scope, ctx) == "envelope":
        # Envelope framing (PROTOCOL.md section 5.1): the table's status, but one
        # SSE event carrying the error envelope, which 2.0.1 clients can read.
        body = b"data: " + JSON.encode(env) + b"\n\n"
        raw = [*_SSE_ERROR_HEADERS, (_CONTENT_LENGTH, str(len(body)).encode("latin-1")),
               *headers]
        if ctx is None or ctx.stream_framing is None:  # else already named by the stream
            raw.append((STREAM_FRAMING_HEADER, b"envelope"))
        await send({"type": "http.response.start", "status": error.http_status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return error
    await send_envelope(send, ctx, env, error.http_status, headers)
    return error


#: The ASGI extension that lets an app answer a WebSocket handshake with an HTTP response.
WEBSOCKET_DENIAL = "websocket.http.response"

#: Set in the request's task when the stack refused a WebSocket handshake with an
#: HTTP response (see :class:`aduib_asgi.observability.logs.RefusedHandshakeFilter`).
handshake_refused: ContextVar[bool] = ContextVar("aduib_handshake_refused", default=False)


class _DenialSend:
    """Sends an HTTP response as the ASGI WebSocket denial response messages."""

    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send = send

    async def __call__(self, message: Message) -> None:
        await self.send({**message, "type": "websocket." + message["type"]})


def can_deny_websocket(scope: Scope) -> bool:
    """Whether the server lets the app answer this WebSocket handshake with HTTP."""
    return WEBSOCKET_DENIAL in (scope.get("extensions") or {})


async def deny_websocket(scope: Scope, send: Send, exc: BaseException, *,
                         ctx: RequestContext | None = None) -> RpcError:
    """Answer an unaccepted handshake with the error response (needs the extension)."""
    handshake_refused.set(True)
    return await send_error(scope, _DenialSend(send), exc, ctx=ctx)


def refuse(scope: Scope, send: Send, error: RpcError, *,
           ctx: RequestContext | None = None) -> Awaitable[Any]:
    """Answer ``error`` before the app runs: a WebSocket handshake is refused
    (:func:`refuse_websocket`), an HTTP request gets the error response."""
    if scope["type"] == "websocket":
        return refuse_websocket(scope, send, error, ctx=ctx)
    return send_error(scope, send, error, ctx=ctx)


async def refuse_websocket(scope: Scope, send: Send, error: RpcError, *,
                           ctx: RequestContext | None = None, close_code: int = 1008) -> None:
    """Refuse a WebSocket handshake that has not been accepted.

    Where the server supports the ASGI ``websocket.http.response`` extension
    (uvicorn, Starlette's test client) the refusal is an HTTP response like any
    other error of the layer: the table's status, the full error envelope and
    the error's and context's headers (``WWW-Authenticate``, ``Retry-After``,
    ``RateLimit``...). Elsewhere it is a close with ``close_code`` (RFC 6455:
    1008 policy violation, 1012 restarting, 1013 try again later) and the
    error's name as the reason; a close before accept reaches the client as an
    HTTP 403 (ASGI), so the code is advisory.
    """
    if can_deny_websocket(scope):
        await deny_websocket(scope, send, error, ctx=ctx)
        return
    if ctx is None:
        ctx = scope.get(CONTEXT_KEY)
    if ctx is not None:
        ctx.extras["aduib.error_code"] = error.code  # the outcome, as send_error records it
    log_error(error, None, ctx)
    await send({"type": "websocket.close", "code": close_code, "reason": error.name})
