"""CompressionMiddleware: request ``Content-Encoding`` and response ``Accept-Encoding``.

Requests: the body is decompressed incrementally while it is received, capped
at ``max_body_size`` decompressed bytes (2004/413 the moment the cap is
crossed); corrupt input is 1004/400, an unknown coding 1004/415 with
``Accept-Encoding`` naming what is supported. Uncompressed bodies get the same
cap. Responses: the coding is chosen from ``Accept-Encoding`` (q-values, then
the server's preference) — or, for a POST without ``Accept-Encoding``, from the
envelope's ``metadata.compression`` once the response starts (an unknown value
means identity) — ``Vary: Accept-Encoding`` is added, small bodies,
already-encoded bodies, excluded types and ``Cache-Control: no-transform`` are
left alone; streamed bodies (``text/event-stream`` and any multi-message body)
are flushed per ASGI message, so each event reaches the client at once; a
complete body is compressed in one call, in a worker thread from
``thread_threshold`` (2 MiB) up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from typing import ClassVar

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.body import DEFAULT_MAX_BODY
from aduib_asgi.codecs.negotiation import parse_qlist
from aduib_asgi.compression import (
    DEFAULT_POOL_SIZE,
    Coding,
    Decoder,
    Encoder,
    TooLarge,
    available_codings,
)
from aduib_asgi.context import (
    CONTEXT_KEY,
    RequestContext,
    create_context,
    current_context,
    emitter_parts,
    header_emitter,
    with_response_headers,
)
from aduib_asgi.errors import RpcError
from aduib_asgi.responses import send_error

__all__ = [
    "DEFAULT_EXCLUDED_TYPES",
    "DEFAULT_PREFERENCE",
    "DEFAULT_THREAD_THRESHOLD",
    "CompressionMiddleware",
]

#: Server preference when ``Accept-Encoding`` ties (``br`` joins at the end when installed).
DEFAULT_PREFERENCE: tuple[str, ...] = ("zstd", "gzip", "lz4", "snappy", "br")

#: Response types never compressed (already compressed formats); ``type/`` entries are prefixes.
DEFAULT_EXCLUDED_TYPES: tuple[str, ...] = (
    "image/", "video/", "audio/", "font/woff", "font/woff2",
    "application/zip", "application/gzip", "application/x-gzip", "application/zstd",
    "application/x-7z-compressed", "application/x-rar-compressed", "application/vnd.rar",
    "application/x-bzip2", "application/x-xz", "application/x-lz4", "application/x-snappy-framed",
    "application/x-compress", "application/pdf",
    "application/grpc", "application/grpc+proto", "application/grpc+json",
    "application/grpc-web", "application/grpc-web+proto",
)
_NOT_EXCLUDED = frozenset({b"image/svg+xml"})

_VARY = (b"vary", b"Accept-Encoding")
_REQUEST_HEADERS = (b"accept-encoding", b"content-encoding", b"content-length")
#: Statuses whose response is never content-coded: no body (204, 205, 304) or a
#: part of the representation (206, whose Content-Range counts unencoded bytes).
_NO_CODING_STATUSES = frozenset({204, 205, 206, 304})
_FILE_SENDS = frozenset({"http.response.pathsend", "http.response.zerocopysend"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CACHE_LIMIT = 512
_UNKNOWN: object = object()  # (not cached yet)

#: Default ``thread_threshold``. A thread hop costs ~50-100 µs (more on a busy
#: machine) while 1 MiB takes 0.1-8 ms to compress depending on codec and data,
#: so up to here compressing inline is cheaper; above it the event loop stays
#: free (gzip-6 takes ~15-80 ms on 10 MB). The price: a body just under the
#: threshold holds the loop for its whole compression (gzip-6 on 2 MiB of JSON:
#: ~15 ms here; zstd-3: ~2 ms).
DEFAULT_THREAD_THRESHOLD = 2 * 1024 * 1024


class CompressionMiddleware:
    """Content codings both ways (gzip, zstd, lz4 frame, snappy framing, optional br).

    Args:
        preference: codings in server preference order (only installed ones count).
        minimum_size: bodies smaller than this are sent as they are.
        max_body_size: cap on the (decompressed) request body.
        levels: per-coding level, e.g. ``{"gzip": 6, "zstd": 3}``.
        thread_threshold: bodies (or streamed chunks) at least this large are
            compressed in a worker thread (smaller ones inline, on the event loop).
        excluded_types: response media types (or ``type/`` prefixes) never compressed.
        pool_size: idle native codec contexts (zstd, lz4) kept per coding and
            direction for reuse by the next response or request body.
    """

    layer_name = "compression"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        preference: Sequence[str] = DEFAULT_PREFERENCE,
        minimum_size: int = 512,
        max_body_size: int = DEFAULT_MAX_BODY,
        levels: dict[str, int] | None = None,
        thread_threshold: int = DEFAULT_THREAD_THRESHOLD,
        excluded_types: Iterable[str] = DEFAULT_EXCLUDED_TYPES,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.app = app
        self.codings: dict[str, Coding] = available_codings(levels, pool_size=pool_size)
        self.preference = tuple(p for p in preference if p in self.codings)
        self.minimum_size = minimum_size
        self.max_body_size = max_body_size
        self.thread_threshold = thread_threshold
        self.excluded, self.excluded_prefixes = _excluded(excluded_types)
        supported = ", ".join([*self.codings, "identity"])
        self._accept_encoding = supported
        self._choices: dict[bytes, Coding | None] = {}
        self._media: dict[bytes, int] = {}  # Content-Type value -> _CODABLE/_EXCLUDED/_SSE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx: RequestContext | None = scope.get(CONTEXT_KEY)
        if ctx is not None:
            await self._http(scope, receive, send, ctx)
            return
        # Alone: the context is created here, as run_with_context would (one frame
        # less), and this layer does its creator's header emitting itself: what
        # ``_http`` runs when ``send`` is the creator's emitter, without one.
        ctx = create_context(scope)
        token = current_context.set(ctx)
        try:
            await self._serve(scope, receive, send, ctx, ctx)
        finally:
            current_context.reset(token)

    # -- negotiation ---------------------------------------------------------------

    def choose(self, accept_encoding: bytes) -> Coding | None:
        """The coding for an ``Accept-Encoding`` value (None: identity). Cached per value."""
        try:
            return self._choices[accept_encoding]
        except KeyError:
            pass
        qs: dict[str, float] = {}
        for token, q in parse_qlist(accept_encoding.decode("latin-1")):
            token = "gzip" if token == "x-gzip" else token
            qs[token] = max(q, qs.get(token, 0.0))
        star = qs.get("*", 0.0)
        best: Coding | None = None
        best_q = 0.0
        for name in self.preference:
            q = qs.get(name, star)
            if q > best_q:
                best, best_q = self.codings[name], q
        if len(self._choices) >= _CACHE_LIMIT:
            self._choices.clear()
        self._choices[accept_encoding] = best
        return best

    # -- request -------------------------------------------------------------------

    def _http(self, scope: Scope, receive: Receive, send: Send,
              ctx: RequestContext) -> Awaitable[None]:
        """The request with the context (what a fused stack calls)."""
        send, emits = emitter_parts(send)
        return self._serve(scope, receive, send, ctx, emits)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                     emits: RequestContext | None) -> None:
        """``emits``: the context whose ``response_headers`` this layer merges into the
        response start itself (it created the context, or ``send`` was its creator's
        emitter, unwrapped); None: ``send`` is any other layer's."""
        ae, ce, length = ctx.header_values(_REQUEST_HEADERS)
        coding: Coding | None = None
        if ae is not None:
            ctx.response_headers.append(_VARY)  # (what add_response_header does)
            coding = self._choices.get(ae, _UNKNOWN)  # type: ignore[arg-type]
            if coding is _UNKNOWN:
                coding = self.choose(ae)
            if coding is not None:
                ctx.response_encoding = coding.name
        # No Accept-Encoding: an envelope's metadata.compression (decoded further in)
        # may still choose, once the response starts.
        method = scope.get("method")  # (required by ASGI; not every caller sets it)
        lazy = ae is None and method == "POST"
        rx: _DecodingReceive | _CountingReceive | None = None
        if ce is not None and (name := ce.strip().lower()) not in (b"identity", b""):
            coding_name = name.decode("latin-1")
            decoding = self.codings.get("gzip" if coding_name == "x-gzip" else coding_name)
            if decoding is None:
                await send_error(scope, _out(send, emits), RpcError(
                    1004, f"Unsupported Content-Encoding {ce.decode('latin-1')!r}",
                    http_status=415, headers={"Accept-Encoding": self._accept_encoding},
                ), ctx=ctx)
                return
            if length is not None and length.isdigit() and int(length) > self.max_body_size:
                # compressed input is capped too (skippable frames decode to nothing)
                await send_error(scope, _out(send, emits), _too_large(self.max_body_size),
                                 ctx=ctx)
                return
            rx = _DecodingReceive(receive, decoding, self.max_body_size)
            scope = {**scope, "headers": [
                h for h in scope["headers"]
                if h[0] != b"content-encoding" and h[0] != b"content-length"
            ]}
        elif length is not None:
            if length.isdigit() and int(length) > self.max_body_size:
                await send_error(scope, _out(send, emits), _too_large(self.max_body_size),
                                 ctx=ctx)
                return
        elif method in _BODY_METHODS:
            rx = _CountingReceive(receive, self.max_body_size)
        if coding is None and rx is None:
            if lazy:  # the common case: no coding unless the envelope asks for one
                ext = scope.get("extensions") or ()
                choice = _MetadataChoice(send, emits, self, ctx,
                                         not _FILE_SENDS.isdisjoint(ext))
                try:
                    await self.app(scope, receive, choice)
                finally:
                    if isinstance(choice.target, _Responder):
                        choice.target.close()
            else:
                await self.app(scope, receive, _out(send, emits))
            return
        extensions = scope.get("extensions")
        defer = False
        if extensions:
            if coding is not None and "http.response.zerocopysend" in extensions:
                # a file descriptor cannot be content-coded: the app falls back to bodies
                extensions = {k: v for k, v in extensions.items()
                              if k != "http.response.zerocopysend"}
                scope = {**scope, "extensions": extensions}
            defer = not _FILE_SENDS.isdisjoint(extensions)
        responder = _Responder(send, emits, self, coding, rx, method == "HEAD", ctx, lazy,
                               defer)
        try:
            await self.app(scope, rx if rx is not None else receive, responder)
        except Exception:
            if rx is None or rx.error is None or responder.started:
                raise
        finally:
            if responder.encoder is not None:  # pooled codec contexts go back, even for
                responder.close()  # an abandoned stream
            if rx is not None:
                rx.close()
        if rx is not None and rx.error is not None and not responder.started:
            await send_error(scope, _out(send, emits), rx.error, ctx=ctx)


    def _media_kind(self, content_type: bytes) -> int:
        """_CODABLE, _EXCLUDED or _SSE for a response ``Content-Type`` value. Cached per value."""
        kind = self._media.get(content_type)
        if kind is not None:
            return kind
        media = content_type.lower().split(b";", 1)[0].strip()
        if media in self.excluded or (media.startswith(self.excluded_prefixes)
                                      and media not in _NOT_EXCLUDED):
            kind = _EXCLUDED
        elif media == b"text/event-stream":
            kind = _SSE
        else:
            kind = _CODABLE
        if len(self._media) >= _CACHE_LIMIT:
            self._media.clear()
        self._media[content_type] = kind
        return kind

    def from_metadata(self, ctx: RequestContext) -> Coding | None:
        """The coding named by the envelope's ``metadata.compression`` (None: identity)."""
        env = ctx.envelope
        md = env.metadata if env is not None else None
        name = md.compression if md is not None else None
        if not name:
            return None
        name = name.strip().lower()
        coding = self.codings.get("gzip" if name == "x-gzip" else name)
        if coding is not None:
            ctx.response_encoding = coding.name
        return coding


class _MetadataChoice:
    """No ``Accept-Encoding``: ``metadata.compression`` may choose when the response starts.

    A plain pass-through unless the envelope names a coding; only then does a
    full :class:`_Responder` take over.
    """

    __slots__ = ("ctx", "defer", "emits", "mw", "send", "target")

    def __init__(self, send: Send, emits: RequestContext | None, mw: CompressionMiddleware,
                 ctx: RequestContext, defer: bool) -> None:
        # ``emits``: the context creator's header emitter's work is done here.
        self.send = send
        self.emits = emits
        self.mw = mw
        self.ctx = ctx
        self.defer = defer
        self.target: Send | None = None

    def __call__(self, message: Message) -> Awaitable[None]:
        target = self.target
        if target is None:
            if message["type"] != "http.response.start":
                return self.send(message)
            coding = self.mw.from_metadata(self.ctx)
            emits = self.emits
            if coding is None:
                self.target = self.send
                if emits is not None and emits.response_headers:
                    message = with_response_headers(message, emits)
                return self.send(message)
            target = _Responder(self.send, emits, self.mw, coding, None, False, self.ctx,
                                False, self.defer)
            self.target = target
        return target(message)


def _out(send: Send, emits: RequestContext | None) -> Send:
    """``send`` for a message this layer does not build itself: through the header
    emitter when this layer does the context creator's emitting."""
    return send if emits is None else header_emitter(emits, send)


def _excluded(types: Iterable[str]) -> tuple[frozenset[bytes], tuple[bytes, ...]]:
    """Excluded media types (exact) and ``type/`` prefixes, normalised.

    Parameters and case are dropped (``"Application/ZIP; charset=utf-8"`` is
    ``application/zip``); ``type/`` and ``type/*`` are prefixes.
    """
    exact: set[bytes] = set()
    prefixes: list[bytes] = []
    for t in types:
        media = t.split(";", 1)[0].strip().lower().encode("latin-1")
        if media.endswith(b"/*"):
            media = media[:-1]
        if media.endswith(b"/"):
            prefixes.append(media)
        elif media:
            exact.add(media)
    return frozenset(exact), tuple(prefixes)


def _too_large(limit: int) -> RpcError:
    return RpcError(2004, f"Request body exceeds {limit} bytes")


class _DecodingReceive:
    """Decompresses request messages as they arrive, within the size cap.

    A refused body frees what was decoded before the error propagates: the
    pending pieces and the decoder are dropped, and each raise is a fresh
    exception that this object does not reference (``error`` is never raised
    itself), so no traceback cycle keeps the caller's buffered chunks alive
    until a GC pass.
    """

    __slots__ = ("decoder", "done", "error", "limit", "name", "pending", "read", "receive")

    def __init__(self, receive: Receive, coding: Coding, limit: int) -> None:
        self.receive = receive
        self.decoder: Decoder | None = coding.decoder()
        self.name = coding.name
        self.limit = limit
        self.read = 0  # compressed bytes: capped too (input that decodes to nothing)
        self.pending: deque[bytes] = deque()
        self.done = False
        self.error: RpcError | None = None

    async def __call__(self) -> Message:
        if self.error is not None:
            raise _fresh(self.error)
        if self.pending:
            return self._next()
        if self.done:
            return await self.receive()
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            self.error = self._decode(body, message.get("more_body", False))
            if self.error is not None:
                self.close()
                raise _fresh(self.error)
            if self.pending:
                return self._next()
            if self.done:
                return {"type": "http.request", "body": b"", "more_body": False}

    def _decode(self, body: bytes, more: bool) -> RpcError | None:
        """Feed one message; the error to answer, if the body is refused."""
        decoder = self.decoder
        assert decoder is not None
        try:
            if body:
                self.read += len(body)
                if self.read > self.limit:
                    return _too_large(self.limit)
                self.pending.extend(decoder.decompress(body, self.limit))
            if not more:
                decoder.finish()
                self.done = True
                self.close()
        except TooLarge:
            return _too_large(self.limit)
        except Exception:
            return RpcError(1004, f"Corrupt {self.name} request body")
        return None

    def close(self) -> None:
        """Give the decoder back and drop undelivered pieces (idempotent)."""
        decoder, self.decoder = self.decoder, None
        if decoder is not None:
            decoder.close()
        if self.error is not None:
            self.pending.clear()

    def _next(self) -> Message:
        piece = self.pending.popleft()
        more = bool(self.pending) or not self.done
        return {"type": "http.request", "body": piece, "more_body": more}


def _fresh(error: RpcError) -> RpcError:
    """A new exception like ``error``: the raised one carries the traceback, not ours."""
    return RpcError(error.code, error.message, http_status=error.http_status,
                    headers=error.headers)


class _CountingReceive:
    """Enforces the cap on an uncompressed body of unknown length (chunked)."""

    __slots__ = ("error", "limit", "receive", "total")

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.total = 0
        self.error: RpcError | None = None

    async def __call__(self) -> Message:
        if self.error is not None:
            raise _fresh(self.error)
        message = await self.receive()
        if message["type"] == "http.request":
            self.total += len(message.get("body", b""))
            if self.total > self.limit:
                self.error = _too_large(self.limit)
                raise _fresh(self.error)
        return message

    def close(self) -> None:
        return None


# Response modes.
_HELD, _PASS, _STREAM, _START = 0, 1, 2, 3
# Response media kinds.
_CODABLE, _EXCLUDED, _SSE = 0, 1, 2


class _Done:
    """An awaitable that is already done (cheaper to await than a new coroutine)."""

    __slots__ = ()
    __await__ = ().__iter__  # (a tuple's bound method: no self is passed)


_DONE: Awaitable[None] = _Done()  # type: ignore[assignment]


class _Responder:
    """Wraps ``send``: compresses the response, or passes it through untouched.

    ``__call__`` is a plain function returning the awaitable to await: a message
    passed through is the inner ``send``'s own coroutine (no frame of ours).
    """

    __slots__ = ("app_vary", "coding", "ctx", "defer", "emits", "encoder", "kept", "lazy",
                 "mode", "mw", "rx", "send", "sse", "start", "started")

    def __init__(
        self,
        send: Send,
        emits: RequestContext | None,
        mw: CompressionMiddleware,
        coding: Coding | None,
        rx: _DecodingReceive | _CountingReceive | None,
        head: bool,
        ctx: RequestContext,
        lazy: bool = False,
        defer: bool = False,
    ) -> None:
        # ``emits``: the context whose response headers this responder merges into the
        # start it sends, doing the work of that context creator's header emitter.
        self.send = send
        self.emits = emits
        # The server can send files (pathsend/zerocopysend): an event stream's start
        # waits for its first message, which may be a file sent as it is.
        self.defer = defer
        self.sse = False
        self.ctx = ctx
        self.lazy = lazy  # choose from metadata.compression when the response starts
        self.mw = mw
        self.coding = coding
        self.rx = rx
        self.mode = _PASS if head else _START
        self.start: Message | None = None
        self.kept: list[tuple[bytes, bytes]] | None = None  # the held start's other headers
        self.app_vary: bool | None = False  # None: our Vary moved into the coded start
        self.encoder: Encoder | None = None
        self.started = False

    def __call__(self, message: Message) -> Awaitable[None]:
        rx = self.rx
        if rx is not None and rx.error is not None and not self.started:
            return _DONE  # the body was refused: the layer renders its own error
        mode = self.mode
        t = message["type"]
        if mode == _HELD:
            if t == "http.response.body":
                if message.get("more_body", False):
                    return self._begin_stream(message)
                return self._whole_body(message)
            if t == "http.response.start":
                raise RuntimeError("http.response.start sent twice")
            return self._release(message)
        if mode == _STREAM:
            if t == "http.response.body":
                return self._stream_body(message)
            if t in _FILE_SENDS:
                # (only when the scope did not offer the extension: the server would fail too)
                raise RuntimeError(f"{t} after a content-coded response start")
        if t == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            if self.lazy:
                self.lazy = False
                self.coding = self.mw.from_metadata(self.ctx)
            mode = self._mode_for(message) if mode == _START else _PASS
            if mode == _HELD:
                self.mode = _HELD
                self.start = message
                return _DONE
            self.started = True
            if mode == _STREAM:
                # Streamed by nature: commit now so the client sees the headers at once.
                self.mode = _STREAM
                assert self.coding is not None
                self.encoder = self.coding.encoder()
                return self._send_coded(message, None)
            self.mode = _PASS
            self.kept = None
            return self.send(self._emitted(message))
        return self.send(message)

    def _emitted(self, start: Message) -> Message:
        """``start`` as the context's creator would send it (when this responder emits)."""
        emits = self.emits
        if emits is not None and emits.response_headers:
            return with_response_headers(start, emits)
        return start

    def _mode_for(self, message: Message) -> int:
        """_PASS (leave alone), _STREAM (event stream) or _HELD (wait for the body).

        One pass over the headers: besides the mode it keeps, for a coded start,
        every header but ``Content-Length``/``Content-Encoding`` (``kept``) and
        whether the app sent a ``Vary``. Header names are compared
        case-insensitively (ASGI asks for lower case; not every app complies).
        """
        status = message["status"]
        if self.coding is None or status < 200 or status in _NO_CODING_STATUSES:
            return _PASS
        mw = self.mw
        ctype = b""
        small = False
        kept: list[tuple[bytes, bytes]] = []
        for h in message.get("headers", ()):
            name = h[0].lower()
            if name == b"content-length":
                value = h[1]
                small = value.isdigit() and int(value) < mw.minimum_size
                continue
            if name == b"content-type":
                ctype = h[1]
            elif name == b"content-encoding":
                if h[1].lower().replace(b"identity", b"").strip(b" ,\t"):
                    return _PASS  # already coded (a list of only "identity" is no coding)
                continue
            elif name == b"vary":
                self.app_vary = True
            elif name == b"content-range" or (  # a part of the representation: never re-coded
                    name == b"cache-control" and b"no-transform" in h[1].lower()):
                return _PASS
            kept.append(h)
        kind = mw._media.get(ctype)
        if kind is None:
            kind = mw._media_kind(ctype)
        if kind == _EXCLUDED:
            return _PASS
        self.kept = kept
        if kind == _SSE:  # an event stream: coded whatever its size
            self.sse = True
            return _HELD if self.defer else _STREAM
        return _PASS if small else _HELD

    def _coded_start(self, start: Message, length: int | None) -> Message:
        """``start`` content-coded: the kept headers, the coding, the new length.

        The one start message is built here. The ``Vary`` this layer asked the
        context for goes into it directly when nothing else is pending there
        and the app sent none (the same field: the context's creator then has
        nothing to merge); otherwise the creator merges it, as for any layer.
        """
        headers = self.kept
        assert headers is not None and self.coding is not None
        self.kept = None
        headers.append(self.coding.content_encoding)
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        if not self.app_vary:
            pending = self.ctx.response_headers
            if len(pending) == 1 and pending[0] == _VARY:
                headers.append(_VARY)
                pending.clear()
                self.app_vary = None  # (moved: see _unsent)
        emits = self.emits  # (what _emitted does, inline)
        if emits is not None and emits.response_headers:
            return with_response_headers({**start, "headers": headers}, emits)
        return {**start, "headers": headers}

    def _unsent(self) -> None:
        """The coded start was not sent: an outer error response still gets its Vary."""
        if self.app_vary is None and _VARY not in self.ctx.response_headers:
            self.ctx.response_headers.append(_VARY)

    async def _send_coded(self, start: Message, length: int | None) -> None:
        message = self._coded_start(start, length)
        try:
            await self.send(message)
        except BaseException:
            self._unsent()
            raise

    async def _release(self, message: Message) -> None:
        """A held start followed by something else than a body: send both as they are."""
        self.mode = _PASS
        start, self.start = self.start, None
        assert start is not None
        self.kept = None
        self.started = True
        await self.send(self._emitted(start))
        await self.send(message)

    async def _whole_body(self, message: Message) -> None:
        """The complete body in one message: one compress call, a known length."""
        start, self.start = self.start, None
        coding = self.coding
        assert start is not None and coding is not None
        self.mode = _PASS
        body: bytes = message.get("body", b"")
        mw = self.mw
        if len(body) < mw.minimum_size and not self.sse:
            self.kept = None
            self.started = True
            await self.send(self._emitted(start))
            await self.send(message)
            return
        if len(body) < mw.thread_threshold:
            data = coding.compress(body)
        else:
            data = await anyio.to_thread.run_sync(coding.compress, body)
        self.started = True
        # With trailers the length is not declared (the body is sent as it comes).
        coded = self._coded_start(start, None if start.get("trailers", False) else len(data))
        try:
            await self.send(coded)
        except BaseException:
            self._unsent()
            raise
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def _begin_stream(self, message: Message) -> None:
        """The first of several body messages: commit the encoded start, then stream."""
        start, self.start = self.start, None
        assert start is not None and self.coding is not None
        self.mode = _STREAM
        self.encoder = self.coding.encoder()
        self.started = True
        await self._send_coded(start, None)
        await self._stream_body(message)

    async def _stream_body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if len(body) >= self.mw.thread_threshold:
            data = await anyio.to_thread.run_sync(self._feed, body, more)
        else:
            data = self._feed(body, more)
        if not more:
            self.mode = _PASS
            self.encoder = None  # finished: its context is back in the pool
        if data or not more:
            await self.send({"type": "http.response.body", "body": data, "more_body": more})

    def close(self) -> None:
        """Give the encoder's native context back (the response ended or was abandoned)."""
        enc, self.encoder = self.encoder, None
        if enc is not None:
            enc.close()

    def _feed(self, body: bytes, more: bool) -> bytes:
        enc = self.encoder
        assert enc is not None
        out = enc.compress(body) if body else b""
        if more:
            return out + enc.flush() if body else out
        return out + enc.finish()
