"""IdempotencyMiddleware: draft-ietf-httpapi-idempotency-key-header over a pluggable store.

The key comes from ``qos.idempotency_key`` (envelope) or the ``Idempotency-Key``
header (an RFC 8941 string, or a bare token). It is scoped by tenant +
principal + method (falling back to the client address and the HTTP method and
path when the layer runs alone). The first request reserves the key
atomically, runs, and its response is stored; a repeat with the same payload
gets that response byte for byte with ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, ClassVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.body import ClientDisconnected, read_body, replay_receive
from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.identity import caller_scope
from aduib_asgi.logsafe import safe
from aduib_asgi.responses import send_error
from aduib_asgi.storage import IdempotencyStore, StoredResponse, StoreEntry
from aduib_asgi.storage import idempotency_store_from_url as _store_from_url
from aduib_asgi.storage.budget import BudgetExceeded
from aduib_asgi.storage.timeout import call_within

__all__ = ["IdempotencyMiddleware", "canonical_payload", "parse_idempotency_key"]

logger = logging.getLogger("aduib_asgi.idempotency")

_HEADER = b"idempotency-key"
_REPLAYED = (b"idempotent-replayed", b"true")
_CONTENT_TYPE = b"content-type"
_EVENT_STREAM = b"text/event-stream"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Never stored nor replayed (RFC 9110 hop-by-hop fields, and cookies).
_NOT_STORED = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"set-cookie", b"date",
})
_KEY_CHARS = re.compile(r"[\x20-\x7e]+")
_TOKEN_CHARS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")


def _bad_key(reason: str) -> RpcError:
    return RpcError(2003, f"Invalid idempotency key: {reason}",
                    details=[{"type": "value_error", "field": "idempotency_key",
                              "reason": reason}])


def parse_idempotency_key(raw: str, *, max_length: int = 255, quoted_header: bool) -> str:
    """Validate a key: 1..``max_length`` printable ASCII characters, else 2003.

    From the header (``quoted_header``) it is an RFC 8941 sf-string
    (``"abc"``, with ``\\"`` and ``\\\\`` escapes) or a bare token.
    """
    if quoted_header:
        raw = raw.strip(" \t")
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                raise _bad_key("unterminated quoted string")
            out: list[str] = []
            inner = raw[1:-1]
            i = 0
            while i < len(inner):
                c = inner[i]
                if c == "\\":
                    if i + 1 >= len(inner) or inner[i + 1] not in '"\\':
                        raise _bad_key("bad escape in quoted string")
                    out.append(inner[i + 1])
                    i += 2
                    continue
                if c == '"':
                    raise _bad_key("unescaped quote in quoted string")
                out.append(c)
                i += 1
            raw = "".join(out)
        elif raw and not _TOKEN_CHARS.fullmatch(raw):
            raise _bad_key("not a token; quote it as an RFC 8941 string")
    if not raw:
        raise _bad_key("empty")
    if len(raw) > max_length:
        raise _bad_key(f"longer than {max_length} characters")
    if not _KEY_CHARS.fullmatch(raw):
        raise _bad_key("only printable ASCII characters are allowed")
    return raw


def _tagged(value: Any) -> Any:
    """A JSON-able, type-tagged form of a decoded value (see :func:`canonical_payload`)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else ["f", value.hex()]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["b", bytes(value).hex()]
    if isinstance(value, dict):
        items = [(json.dumps(_tagged(k), separators=(",", ":"), ensure_ascii=False),
                  _tagged(v)) for k, v in value.items()]
        items.sort(key=lambda kv: kv[0])
        return ["d", items]
    if isinstance(value, list | tuple):
        return ["l", [_tagged(v) for v in value]]
    return ["r", type(value).__name__, repr(value)]


def canonical_payload(data: Any) -> bytes:
    """The request data as canonical bytes for the payload fingerprint.

    Type-tagged, so values that print alike are told apart (msgpack ``b"abc"``
    vs the string ``"b'abc'"``; ``[1, "1"]`` vs ``["1", 1]``); map keys of any
    type sort without error; numerically equal int and float are the same number
    (JSON ``1`` and ``1.0``).
    """
    return json.dumps(_tagged(data), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8", "surrogatepass")


class IdempotencyMiddleware:
    """Runs each (scope, key) once; repeats replay the stored response.

    - ``store``: an :class:`~aduib_asgi.storage.IdempotencyStore` or a URL
      (``memory://``, ``redis://host:port/db``). Every store call is bounded by
      ``timeout``; when the store fails, ``fail_open=True`` runs the request
      without idempotency (logged), else 5002 (503).
    - ``ttl``: how long completed responses are kept; ``lease``: how long a
      reservation lives without renewal (stores with ``needs_renewal``, e.g.
      Redis: renewed every ``lease / 3`` while the handler runs). Reservations
      are released on every failure path.
    - ``wait``: seconds a repeat waits for an in-flight original before 4011
      (409); 0 answers 409 at once.
    - ``required``: methods (RPC method names, or paths when used alone) that
      must carry a key (2002 without one).
    - ``max_body_size`` (the replay limit): a larger response is sent but not
      stored; a repeat of its key gets 409 / 4011 "not retained", never a second
      execution. The store's byte budget (per tenant and in total) refuses new
      keys with 429 / 5021 and ``Retry-After`` once less than one replay limit
      of room is left.
    - Streamed responses (``text/event-stream``) are never stored; the key stays
      reserved while the stream runs.
    """

    layer_name = "idempotency"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_handle"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore | str = "memory://",
        ttl: float = 24 * 3600.0,
        lease: float = 30.0,
        wait: float = 0.0,
        required: Iterable[str] = (),
        max_key_length: int = 255,
        max_body_size: int = 1024 * 1024,
        max_request_size: int = 16 * 1024 * 1024,
        timeout: float = 0.5,
        fail_open: bool = False,
    ) -> None:
        self.app = app
        self.store: IdempotencyStore = (
            _store_from_url(store) if isinstance(store, str) else store
        )
        if ttl <= 0 or lease <= 0:
            raise ValueError("ttl and lease must be positive")
        self.ttl = ttl
        self.lease = lease
        self.renew_every = lease / 3.0
        self.wait = wait
        self.required = frozenset(required)
        self.max_key_length = max_key_length
        self.max_body_size = max_body_size
        self.max_request_size = max_request_size
        self.timeout = timeout
        self.fail_open = fail_open
        self.store_errors = 0
        self._in_process = bool(getattr(self.store, "in_process", False))
        self._renews = bool(getattr(self.store, "needs_renewal", True))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- request side --------------------------------------------------------------

    def _same_key(self, envelope_key: str, header: bytes) -> bool:
        try:
            from_header = parse_idempotency_key(header.decode("latin-1"),
                                                max_length=self.max_key_length,
                                                quoted_header=True)
        except RpcError:
            return False
        return from_header == envelope_key

    def _handle(self, scope: Scope, receive: Receive, send: Send,
                ctx: RequestContext) -> Awaitable[Any]:
        """The request's key; the awaitable that runs it once (or answers).

        Not a coroutine itself: a request without a key costs the stack no frame
        here (the inner app's own awaitable is handed back).
        """
        if scope["method"] in _SAFE_METHODS:  # as ``__call__`` (reached here when fused)
            return self.app(scope, receive, send)
        env = ctx.envelope
        raw_key: str | None = None
        from_header = False
        header = ctx.header(_HEADER)
        qos = env.qos if env is not None else None
        if qos is not None and qos.idempotency_key is not None:
            raw_key = qos.idempotency_key
            # Both given: they must name the same key (PROTOCOL.md section 2).
            if header is not None and not self._same_key(raw_key, header):
                return send_error(scope, send, RpcError(
                    2003, "qos.idempotency_key and the Idempotency-Key header disagree",
                    details=[{"type": "conflict", "field": "qos.idempotency_key",
                              "reason": "differs from the Idempotency-Key header"}],
                ), ctx=ctx)
        elif header is not None:
            raw_key = header.decode("latin-1")
            from_header = True
        if raw_key is None:
            if self.required and (ctx.method or scope["path"]) in self.required:
                return send_error(scope, send, RpcError(
                    2002, "This method requires an idempotency key",
                    details=[{"type": "missing", "field": "idempotency_key",
                              "reason": "send qos.idempotency_key or Idempotency-Key"}],
                ), ctx=ctx)
            return self.app(scope, receive, send)
        return self._keyed(scope, receive, send, ctx, env, raw_key, from_header)

    async def _keyed(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                     env: Any, raw_key: str, from_header: bool) -> None:
        try:
            key = parse_idempotency_key(raw_key, max_length=self.max_key_length,
                                        quoted_header=from_header)
        except RpcError as exc:
            await send_error(scope, send, exc, ctx=ctx)
            return
        if env is not None:
            method = env.method
            # the representation is part of the request: a repeat asking for another
            # one (endpoint, protocol version, response type) must not get these bytes
            codec = ctx.response_codec
            variant = "\n".join((scope["path"], ctx.negotiated_version or "",
                                  codec.media_type if codec is not None else ""))
            canonical = variant.encode() + b"\n" + canonical_payload(env.data)
        else:  # used alone: the HTTP method and path, and the raw body
            method = f"{scope['method']} {scope['path']}"
            try:
                canonical = await read_body(receive, limit=self.max_request_size)
            except ClientDisconnected:
                return
            except RpcError as exc:
                await send_error(scope, send, exc, ctx=ctx)
                return
            receive = replay_receive(canonical, receive)
        fingerprint = hashlib.sha256(method.encode() + b"\n" + canonical).hexdigest()
        await self._run_once(scope, receive, send, ctx, self._scope_key(scope, ctx, method, key),
                             fingerprint, _budget_tenant(ctx))

    def _scope_key(self, scope: Scope, ctx: RequestContext, method: str, key: str) -> str:
        # tenant + principal, or the client address for anonymous callers (one identity)
        parts = "\x1f".join((caller_scope(ctx, scope), method, key))
        return hashlib.sha256(parts.encode("utf-8", "surrogatepass")).hexdigest()

    async def _store_call(self, fn: Any, *args: Any) -> Any:
        if self._in_process:  # never waits: no timeout scope on the hot path
            return await fn(*args)
        return await call_within(self.timeout, fn, *args)

    async def _run_once(self, scope: Scope, receive: Receive, send: Send,
                        ctx: RequestContext, skey: str, fingerprint: str, tenant: str) -> None:
        store = self.store
        waited = False
        while True:
            try:
                res = await self._store_call(self._reserve, skey, fingerprint, tenant)
            except BudgetExceeded as exc:  # the tenant's (or everyone's) bytes are used up
                await send_error(scope, send, exc, ctx=ctx)
                return
            except Exception as exc:
                await self._store_failed(exc, scope, receive, send, ctx)
                return
            if res.outcome == "reserved":
                assert res.token is not None
                await self._run_and_store(scope, receive, send, skey, res.token)
                return
            entry = res.entry
            assert entry is not None
            if entry.fingerprint != fingerprint:
                await send_error(scope, send, RpcError(
                    4011, "This idempotency key was used with a different request (payload, "
                          "endpoint, protocol version or response type)",
                    http_status=422,
                    details=[{"type": "conflict", "field": "idempotency_key",
                              "reason": "payload fingerprint mismatch"}],
                ), ctx=ctx)
                return
            if entry.response is not None:
                await self._replay(scope, send, ctx, entry.response)
                return
            if self.wait > 0 and not waited:
                waited = True
                try:
                    after: StoreEntry | None = await call_within(
                        self.wait + self.timeout, store.wait, skey, self.wait)
                except Exception as exc:
                    await self._store_failed(exc, scope, receive, send, ctx)
                    return
                if after is None:
                    continue  # the original failed and released the key: run this one
                if after.response is not None and after.fingerprint == fingerprint:
                    await self._replay(scope, send, ctx, after.response)
                    return
            await send_error(scope, send, RpcError(
                4011, "A request with this idempotency key is still in progress",
                headers={"Retry-After": "1"},
                details=[{"type": "conflict", "field": "idempotency_key",
                          "reason": "in progress"}],
            ), ctx=ctx)
            return

    async def _reserve(self, skey: str, fingerprint: str, tenant: str) -> Any:
        # room for a response up to the replay limit must stay free in the budget
        return await self.store.reserve(skey, fingerprint, self.lease, tenant=tenant,
                                        headroom=self.max_body_size)

    async def _replay(self, scope: Scope, send: Send, ctx: RequestContext,
                      response: StoredResponse) -> None:
        if not response.retained:
            await send_error(scope, send, RpcError(
                4011, "The request with this idempotency key already ran, but its result was "
                      "not retained (larger than the replay limit or the storage budget); "
                      "it is not run again",
                details=[{"type": "conflict", "field": "idempotency_key",
                          "reason": "result not retained",
                          "metadata": {"status": response.status}}],
            ), ctx=ctx)
            return
        headers = [*response.headers, _REPLAYED]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _store_failed(self, exc: Exception, scope: Scope, receive: Receive, send: Send,
                            ctx: RequestContext) -> None:
        self.store_errors += 1
        logger.warning("idempotency store failed (%s: %s); %s", type(exc).__name__, safe(str(exc)),
                       "running without idempotency" if self.fail_open else "refusing")
        if self.fail_open:
            await self.app(scope, receive, send)
            return
        await send_error(scope, send, RpcError(
            5002, "Idempotency store is unavailable", headers={"Retry-After": "1"}), ctx=ctx)

    # -- running the original --------------------------------------------------------

    async def _renew(self, skey: str, token: str) -> None:
        while True:
            await anyio.sleep(self.renew_every)
            try:
                ok = await self._store_call(self.store.renew, skey, token, self.lease)
            except Exception as exc:
                logger.warning("could not renew an idempotency lease (%s)", safe(str(exc)))
                continue
            if not ok:
                logger.warning("lost an idempotency lease while the request ran")
                return

    async def _run_and_store(self, scope: Scope, receive: Receive, send: Send,
                             skey: str, token: str) -> None:
        recorder = _Recorder(send, self.max_body_size)
        ctx = RequestContext.of(scope)
        # headers layers further in ask for (Deprecation, Sunset, retry attempts) are
        # emitted by the context's creator outside this layer: keep them for replays
        mark = len(ctx.response_headers) if ctx is not None else 0
        try:
            if self._renews:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._renew, skey, token)
                    try:
                        await self.app(scope, receive, recorder)
                    finally:
                        tg.cancel_scope.cancel()
            else:
                await self.app(scope, receive, recorder)
        except BaseException as exc:
            await self._release(skey, token)
            if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                raise exc.exceptions[0] from None
            raise
        response = recorder.storable(ctx.response_headers[mark:] if ctx is not None else ())
        if response is None and recorder.too_big and recorder.replayable_status \
                and not (ctx is not None and ctx.cancelled):
            # ran to completion, too large to keep: a repeat must not run it again
            response = StoredResponse.not_retained(recorder.status)
        if response is None or (ctx is not None and ctx.cancelled):
            # Not replayable (5xx, 429, 408, streams, too big) or cancelled:
            # a retry with the same key runs again.
            await self._release(skey, token)
            return
        try:
            if self._in_process:
                done = await self.store.complete(skey, token, response, self.ttl)
            else:
                with anyio.CancelScope(shield=True):
                    done = await self._store_call(self.store.complete, skey, token, response,
                                                  self.ttl)
            if not done:
                logger.warning("idempotency lease expired before the response was stored")
        except Exception as exc:
            logger.warning("could not store an idempotent response (%s)", safe(str(exc)))
            await self._release(skey, token)

    async def _release(self, skey: str, token: str) -> None:
        if self._in_process:  # synchronous inside: cannot be interrupted
            await self.store.release(skey, token)
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._store_call(self.store.release, skey, token)
            except Exception as exc:
                logger.warning("could not release an idempotency key (%s); it expires with "
                               "its lease", safe(str(exc)))


def _budget_tenant(ctx: RequestContext) -> str:
    """The tenant whose byte budget a record is charged to."""
    if ctx.tenant_id is not None:
        return ctx.tenant_id
    raw = ctx.header(b"x-tenant-id")
    return raw.decode("latin-1") if raw else "default"


class _Recorder:
    """Passes the response through and keeps a copy of what may be stored."""

    __slots__ = ("body", "complete", "headers", "max_size", "send", "size", "status", "too_big")

    def __init__(self, send: Send, max_size: int) -> None:
        self.send = send
        self.max_size = max_size
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.too_big = False

    async def __call__(self, message: Message) -> None:
        t = message["type"]
        if t == "http.response.start":
            self.status = message["status"]
            self.headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
        elif t == "http.response.body" and not self.too_big and not self.complete:
            chunk = message.get("body", b"")
            if chunk:
                self.body.append(chunk)
                self.size += len(chunk)
                if self.size > self.max_size:
                    self.too_big = True
                    self.body = []
            if not message.get("more_body", False):
                self.complete = True
        await self.send(message)

    @property
    def replayable_status(self) -> bool:
        """Complete, not 5xx/429/408 and not a stream (whatever its size)."""
        if not self.complete or self.headers is None or self.status >= 500 \
                or self.status in (429, 408):
            return False
        return not any(k == _CONTENT_TYPE and v.startswith(_EVENT_STREAM)
                       for k, v in self.headers)

    def storable(self, added: Sequence[tuple[bytes, bytes]] = ()) -> StoredResponse | None:
        """The response, when it may be replayed: complete, small, not 5xx/429/408, not a stream.

        ``added``: headers the request context emits on top of those sent through
        this layer (asked for by layers further in).
        """
        status = self.status
        if (not self.complete or self.too_big or self.headers is None
                or status >= 500 or status in (429, 408)):
            return None
        headers = []
        for k, v in (*self.headers, *((bytes(k).lower(), bytes(v)) for k, v in added)):
            if k in _NOT_STORED:
                continue
            if k == _CONTENT_TYPE and v.startswith(_EVENT_STREAM):
                return None
            headers.append((k, v))
        return StoredResponse(status, tuple(headers), b"".join(self.body))
