"""The one request context, carried in the ASGI scope and in a contextvar.

The first layer that needs it creates a :class:`RequestContext` at
``scope["aduib.context"]`` and binds it to :data:`current_context` for code that
has no scope (handlers, log filters, tasks). Every later layer reads and fills
the same object. Headers that any layer wants on the final response go into
``ctx.response_headers`` (raw ``(bytes, bytes)`` pairs); the layer that created
the context appends them when the response starts, so they survive errors
rendered further out as well as normal responses.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from time import monotonic as _monotonic
from time import time_ns as _time_ns
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Scope, Send

from aduib_asgi._version import __version__

if TYPE_CHECKING:
    from aduib_asgi.codecs import Codec
    from aduib_asgi.models import RpcRequest

__all__ = [
    "CONTEXT_KEY",
    "REGISTRY_KEY",
    "SERVER_ID",
    "SERVER_ID_KEY",
    "SERVER_VERSION",
    "ContextHandler",
    "RequestContext",
    "context_link",
    "context_routes",
    "create_context",
    "current_context",
    "declaring_class",
    "emitter_parts",
    "get_context",
    "header_emitter",
    "run_with_context",
    "with_response_headers",
]

CONTEXT_KEY = "aduib.context"
#: Scope key where ``build_stack`` publishes the dispatcher's ``server_id``, so that
#: responses from every layer (errors before the dispatcher included) carry it.
SERVER_ID_KEY = "aduib.server_id"
#: Scope key where ``build_stack`` publishes the dispatcher's method registry.
REGISTRY_KEY = "aduib.registry"
SERVER_VERSION = __version__
SERVER_ID = f"{socket.gethostname()}-{os.getpid()}"

#: Headers an envelope's ``metadata.headers`` can never supply: the transport's
#: own, the body's encoding (already decoded) and what proxies vouch for.
_NOT_FROM_ENVELOPE = frozenset({
    b"host", b"connection", b"keep-alive", b"upgrade", b"te", b"trailer", b"expect",
    b"transfer-encoding", b"content-length", b"content-type", b"content-encoding",
    b"accept", b"accept-encoding", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto", b"x-real-ip", b"proxy-authorization", b"cookie",
})

current_context: ContextVar[RequestContext | None] = ContextVar("aduib_context", default=None)


def get_context() -> RequestContext | None:
    """The context of the request being handled in this task/thread, if any."""
    return current_context.get()


class RequestContext:
    """Everything the layers learn about one request, filled as it passes through."""

    __slots__ = (
        "_header_map",
        "accept",
        "auth_scheme",
        "body",
        "cancel_reason",
        "cancelled",
        "client",
        "content_type",
        "deadline",
        "debug",
        "deferred",
        "envelope",
        "extras",
        "handler",
        "method",
        "negotiated_version",
        "parent_span_id",
        "payload",
        "principal",
        "priority",
        "rate_limit",
        "raw_headers",
        "request_codec",
        "request_id",
        "response_codec",
        "response_encoding",
        "response_headers",
        "roles",
        "sampled",
        "scopes",
        "server_id",
        "server_version",
        "service",
        "span_id",
        "started",
        "stream_framing",
        "tenant_id",
        "timestamp_ms",
        "trace_baggage",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self, request_id: str | None = None, raw_headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.request_id: str | None = request_id
        self.raw_headers: list[tuple[bytes, bytes]] = raw_headers if raw_headers is not None else []
        self._header_map: dict[bytes, bytes] | None = None
        self.method: str | None = None
        self.service: str | None = None
        self.handler: str | None = None
        # Decoded request: ``payload`` is the decoded body (any JSON-like value),
        # ``envelope`` the validated RpcRequest when the endpoint takes one.
        self.body: bytes | None = None
        self.payload: Any = None
        self.envelope: RpcRequest | None = None
        self.request_codec: Codec | None = None
        self.response_codec: Codec | None = None
        self.content_type: str | None = None
        self.accept: list[str] | None = None
        self.response_encoding: str | None = None
        self.negotiated_version: str | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.parent_span_id: str | None = None
        self.sampled: bool = True
        self.trace_baggage: dict[str, str] | None = None
        self.tracestate: str | None = None
        self.tenant_id: str | None = None
        self.principal: str | None = None
        self.roles: tuple[str, ...] = ()
        self.scopes: tuple[str, ...] = ()  # OAuth scopes granted to the caller
        self.auth_scheme: str | None = None
        # The client's address through trusted proxies (aduib_asgi.identity), once known.
        self.client: str | None = None
        # Absolute deadline on the ``time.monotonic()`` clock, or None.
        self.deadline: float | None = None
        self.priority: int = 1
        # {"limit", "remaining", "reset_at_ms"} when a rate limit applied.
        self.rate_limit: dict[str, int] | None = None
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.server_id: str = SERVER_ID
        self.server_version: str = SERVER_VERSION
        self.debug: bool = False
        self.stream_framing: str | None = None
        self.cancelled: bool = False
        self.cancel_reason: str | None = None
        # Decisions layers left for where the method is named (aduib_asgi.gate).
        self.deferred: list[Any] | None = None
        self.started: float = _monotonic()
        self.timestamp_ms: int = _time_ns() // 1_000_000
        self.extras: dict[str, Any] = {}

    # -- helpers -----------------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """A request header by lower-case name (one scan per request, then a dict)."""
        m = self._header_map
        if m is None:
            raw = self.raw_headers
            m = dict(raw)
            if len(m) != len(raw):  # a repeated header: join as RFC 9110 allows for lists
                m = {}
                for k, v in raw:
                    m[k] = m[k] + b", " + v if k in m else v
            self._header_map = m
        return m.get(name)

    def header_values(self, names: tuple[bytes, ...]) -> list[bytes | None]:
        """:meth:`header` of each of ``names`` (lower case), in one call.

        Before any :meth:`header` call built the map, one scan of the raw headers
        (repeated ones joined alike), cheaper than building the map for a few
        names (a layer that runs alone reads three).
        """
        m = self._header_map
        if m is not None:
            return list(map(m.get, names))  # (no comprehension frame)
        out: list[bytes | None] = [None] * len(names)
        for k, v in self.raw_headers:
            if k in names:
                i = names.index(k)
                prev = out[i]
                out[i] = v if prev is None else prev + b", " + v
        return out

    def add_envelope_headers(self, headers: Mapping[str, Any]) -> None:
        """Envelope-carried headers (``metadata.headers``, ``meta.headers``) seen by :meth:`header`.

        They are the envelope's equivalents of HTTP headers: a real request header
        of the same name wins, transport and forwarding headers are never taken
        from the body, and only string values count.
        """
        self.header(b"")  # build the map
        m = self._header_map
        assert m is not None
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                continue
            key = name.strip().lower().encode("utf-8", "replace")
            if key and key not in _NOT_FROM_ENVELOPE:
                m.setdefault(key, value.encode("utf-8", "replace"))

    def ensure_request_id(self) -> str:
        if self.request_id is None:
            self.request_id = str(uuid.uuid4())
        return self.request_id

    def remaining_ms(self) -> float | None:
        """Milliseconds left before the deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - _monotonic()) * 1000.0)

    def set_deadline_ms(self, timeout_ms: float) -> None:
        """Tighten the deadline to ``timeout_ms`` from now (never loosen it)."""
        deadline = _monotonic() + timeout_ms / 1000.0
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline

    def duration_ms(self) -> int:
        return int((_monotonic() - self.started) * 1000)

    def add_response_header(self, name: bytes, value: bytes) -> None:
        """Ask for a header on the final response (success or error)."""
        self.response_headers.append((name, value))

    def trace_context(self) -> dict[str, Any] | None:
        """The response ``trace_context`` member, when trace ids are known."""
        if self.trace_id is None or self.span_id is None:
            return None
        out: dict[str, Any] = {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "sampled": self.sampled,
        }
        if self.parent_span_id:
            out["parent_span_id"] = self.parent_span_id
        if self.trace_baggage:
            out["baggage"] = dict(self.trace_baggage)
        return out

    def response_metadata(self) -> dict[str, Any]:
        """ResponseMetadata filled from what the layers put on the context."""
        meta: dict[str, Any] = {
            "timestamp_ms": self.timestamp_ms,
            "duration_ms": self.duration_ms(),
            "server_id": self.server_id,
            "server_version": self.server_version,
        }
        if self.rate_limit is not None:
            meta["rate_limit"] = self.rate_limit
        return meta

    @classmethod
    def of(cls, scope: Scope) -> RequestContext | None:
        """The context already stored in ``scope``, if any."""
        ctx: RequestContext | None = scope.get(CONTEXT_KEY)
        return ctx


class _HeaderEmitter:
    """Per-request responder of the context's creator: emits ``response_headers``."""

    __slots__ = ("ctx", "send")

    def __init__(self, ctx: RequestContext, send: Send) -> None:
        self.ctx = ctx
        self.send = send

    def __call__(self, message: Message) -> Awaitable[None]:
        # A plain function returning the inner send's awaitable: a message costs
        # no coroutine frame of ours.
        if self.ctx.response_headers:
            t = message["type"]
            if t == "http.response.start" or t == "websocket.http.response.start":
                return self.send(with_response_headers(message, self.ctx))
        return self.send(message)


def emitter_parts(send: Send) -> tuple[Send, RequestContext | None]:
    """``(send, ctx)``: the server's ``send`` and the context when ``send`` is the
    context creator's header emitter (a responder wrapping it may do the emitter's
    work itself, with :func:`with_response_headers`, and save a call per message);
    else ``(send, None)``."""
    if type(send) is _HeaderEmitter:
        return send.send, send.ctx
    return send, None


def with_response_headers(message: Message, ctx: RequestContext) -> Message:
    """A response start ``message`` with ``ctx.response_headers`` merged in."""
    return {**message, "headers": _merged(message.get("headers", ()), ctx.response_headers)}


def _merged(headers: Any, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus ``extra``; every ``Vary`` (any case) merged into one field.

    Tokens keep their first spelling and order, case-insensitively deduplicated;
    ``*`` alone stands for all. One ``Vary`` in all is a plain append.
    """
    vary = None
    for h in extra:
        if h[0] == b"vary":
            if vary is not None:
                break  # several of ours: merged below
            vary = h
    else:
        if vary is None:  # the common case: nothing to merge
            return [*headers, *extra]
        out = [*headers]
        for name, _ in out:
            if len(name) == 4 and name.lower() == b"vary":
                break
        else:  # one field of ours, none of the app's: ours goes last, as it is
            for h in extra:
                if h is not vary:
                    out.append(h)
            out.append(vary)
            return out
        return _merged_varies(out, extra)
    return _merged_varies([*headers], extra)


def _merged_varies(out: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
                   ) -> list[tuple[bytes, bytes]]:
    """:func:`_merged` when ``Vary`` fields must be merged (``out``: the app's headers)."""
    varies: list[bytes] = []
    for h in extra:
        if h[0] == b"vary":
            varies.append(h[1])
        else:
            out.append(h)
    if not varies:
        return out
    for name, _ in out:
        if len(name) == 4 and name.lower() == b"vary":
            break
    else:  # the app has none: one field of ours, or two distinct single tokens, as they are
        if len(varies) == 1:
            out.append((b"vary", varies[0]))
            return out
        if len(varies) == 2:
            a, b = varies
            if a.lower() != b.lower() and b"," not in a and b"," not in b:
                out.append((b"vary", a + b", " + b))
                return out
    own = [i for i, h in enumerate(out) if len(h[0]) == 4 and h[0].lower() == b"vary"]
    tokens: dict[bytes, bytes] = {}
    for value in [out[i][1] for i in own] + varies:
        for token in value.split(b","):
            token = token.strip()
            if token:
                tokens.setdefault(token.lower(), token)
    field = (b"vary", b"*" if b"*" in tokens else b", ".join(tokens.values()))
    if not own:
        out.append(field)
        return out
    out[own[0]] = field
    for i in reversed(own[1:]):
        del out[i]
    return out


ContextHandler = Callable[[Scope, Receive, Send, RequestContext], Awaitable[None]]


def run_with_context(
    handler: ContextHandler, scope: Scope, receive: Receive, send: Send
) -> Awaitable[None]:
    """Call ``handler`` with the request's context, creating and binding it if needed.

    The creator stores the context in the scope, binds the contextvar (reset in
    ``finally``) and wraps ``send`` once to emit ``ctx.response_headers``. When
    the context exists (every layer after the first), this returns the handler's
    own coroutine: no extra frame per layer.
    """
    ctx: RequestContext | None = scope.get(CONTEXT_KEY)
    if ctx is not None:
        return handler(scope, receive, send, ctx)
    return _run_creating(handler, scope, receive, send)


def create_context(scope: Scope) -> RequestContext:
    """A new context for the request of ``scope``, stored in it (``scope[CONTEXT_KEY]``).

    What the context's creator does before it binds :data:`current_context` (and
    resets it when the request is over) and emits ``ctx.response_headers``
    (:func:`header_emitter`, or its own responder): for a layer that creates the
    context itself instead of through :func:`run_with_context`.
    """
    headers = scope.get("headers")
    if headers is not None and type(headers) is not list:
        # ASGI allows any iterable: read it once, and let the app see the same list
        headers = scope["headers"] = list(headers)
    ctx = RequestContext(None, headers)  # (positional: a cheaper call)
    sid = scope.get(SERVER_ID_KEY)  # a dispatcher's configured id (published by build_stack)
    if sid is not None:
        ctx.server_id = sid
    scope[CONTEXT_KEY] = ctx
    return ctx


def header_emitter(ctx: RequestContext, send: Send) -> Send:
    """``send`` wrapped to merge ``ctx.response_headers`` into the response start:
    what the context's creator passes inward (see :func:`emitter_parts`)."""
    return _HeaderEmitter(ctx, send)


async def _run_creating(
    handler: ContextHandler, scope: Scope, receive: Receive, send: Send
) -> None:
    ctx = create_context(scope)
    token = current_context.set(ctx)
    try:
        await handler(scope, receive, _HeaderEmitter(ctx, send), ctx)
    finally:
        current_context.reset(token)


def context_link(layer: Any, routes: Mapping[str, ContextHandler]) -> Callable[..., Any]:
    """``layer`` as the layer outside it calls it in a stack that ``build_stack`` fused.

    ``routes`` (scope type -> the handler the layer's ``__call__`` runs with the
    context for it, see :func:`context_routes`) are called here directly: no
    ``__call__`` coroutine and no ``run_with_context`` frame per layer. Any other
    scope type goes to ``layer`` itself. Exactly what ``await layer(scope,
    receive, send)`` does; the returned callable's ``app`` is ``layer``, so code
    that follows ``.app`` down a stack still finds every layer.
    """
    http = routes.get("http")
    websocket = routes.get("websocket")
    other = {t: h for t, h in routes.items() if t != "http" and t != "websocket"}

    def link(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        t = scope["type"]  # compared, not looked up: the common types cost no call
        if t == "http":
            handler = http
        elif t == "websocket":
            handler = websocket
        else:
            handler = other.get(t)
        if handler is None:
            result: Awaitable[None] = layer(scope, receive, send)
            return result
        ctx: RequestContext | None = scope.get(CONTEXT_KEY)
        if ctx is not None:
            return handler(scope, receive, send, ctx)
        return _run_creating(handler, scope, receive, send)

    link.app = layer  # type: ignore[attr-defined]
    link.__qualname__ = f"context_link({type(layer).__name__})"
    return link


def context_routes(layer: Any) -> dict[str, ContextHandler]:
    """What ``layer`` runs with the request context, per scope type (empty: not declared).

    A layer declares it in its class: ``context_methods = {"http": "_http", ...}``
    names, for each scope type its ``__call__`` answers with exactly
    ``run_with_context(self.<method>, scope, receive, send)``, that method; a layer
    whose choice depends on its configuration defines ``context_routes(self)``
    instead (returning the bound methods, or ``{}``). Scope types left out are
    always handled by the layer's ``__call__``.
    """
    owner = declaring_class(type(layer))
    if owner is None:
        return {}
    custom = getattr(type(layer), "context_routes", None)
    if callable(custom):
        routes: dict[str, ContextHandler] = custom(layer)
        return routes
    names: Mapping[str, str] | None = getattr(type(layer), "context_methods", None)
    if not names:
        return {}
    return {t: getattr(layer, name) for t, name in names.items()}


def declaring_class(cls: type) -> type | None:
    """The class whose ``__call__`` ``cls`` runs, if that class also declares its
    context handlers (``context_methods`` or ``context_routes`` in its own body).

    A subclass that overrides ``__call__`` without declaring again is not fused
    (its own ``__call__`` always runs); one that overrides a handler is, with its
    handler.
    """
    for k in cls.__mro__:
        own = vars(k)
        if "__call__" in own:
            return k if ("context_methods" in own or "context_routes" in own) else None
    return None
