"""ContentNegotiationMiddleware: decode the request body once, choose the response codec.

For RPC envelope endpoints (``{base}/v2/rpc``, ``{base}/v2/rpc/stream``,
``{base}/v1/rpc``) the body is read (bounded), decoded by ``Content-Type`` and
validated into ``ctx.envelope``; every inner layer and the dispatcher use that.
For other bodies in a registered type the decoded value goes to ``ctx.payload``.
The response codec (``Accept`` with q-values, else ``metadata.accept``, else
the request's type) is stored in ``ctx.response_codec`` before anything can
fail, so errors are encoded in it too. The inner app always gets the bytes
replayed; a JSON-only inner app can be given non-JSON bodies transcoded to JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.body import (
    DEFAULT_MAX_BODY,
    ClientDisconnected,
    parse_envelope,
    read_body,
    replay_receive,
)
from aduib_asgi.codecs import JSON, Codec, CodecRegistry, default_registry
from aduib_asgi.codecs.negotiation import choose_codec, media_type_of, parse_qlist
from aduib_asgi.context import CONTEXT_KEY, RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.responses import send_error
from aduib_asgi.versioning.compat import install_v1_shaper

__all__ = ["ORIGINAL_TYPE_KEY", "ContentNegotiationMiddleware"]

#: ``ctx.extras`` key holding the request's media type when the body was transcoded to JSON.
ORIGINAL_TYPE_KEY = "aduib.content.original_type"

#: ``Vary: Accept``, asked for on every response this layer negotiates.
_VARY = (b"vary", b"Accept")
_ANY = b"*/*"
#: Accept ranges served by streaming endpoints, not by a codec: never a 406.
_STREAM_RANGES = ("text/event-stream", "text/*")
_CACHE_LIMIT = 512


class ContentNegotiationMiddleware:
    """Request decoding by ``Content-Type`` and response codec negotiation by ``Accept``.

    Args:
        registry: the codecs (default: json, msgpack, and protobuf/avro when installed).
        base_path: the dispatcher's base path; everything under it is strict.
        envelope_paths: paths whose POST body is a request envelope (default: the
            three RPC endpoints under ``base_path``).
        max_body_size: cap on the request body (2004/413 past it).
        strict: also answer 415/406 outside ``base_path`` (default: a body in a type
            this layer does not know passes through untouched, and an ``Accept``
            it cannot satisfy is left to the app).
        transcode: hand non-JSON bodies to non-envelope endpoints as JSON (the
            ``Content-Type`` header is rewritten; the original type is in
            ``ctx.extras[ORIGINAL_TYPE_KEY]``), for JSON-only inner apps.
    """

    layer_name = "content"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CodecRegistry | None = None,
        base_path: str = "/aduib_rpc",
        envelope_paths: tuple[str, ...] | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
        strict: bool = False,
        transcode: bool = True,
    ) -> None:
        self.app = app
        self.registry = registry if registry is not None else default_registry()
        base = base_path.rstrip("/")
        self.rpc_prefix = base + "/"
        self.envelope_paths = frozenset(
            envelope_paths if envelope_paths is not None
            else (base + "/v2/rpc", base + "/v2/rpc/stream", base + "/v1/rpc")
        )
        self._v1_path = base + "/v1/rpc"
        self.max_body_size = max_body_size
        self.strict = strict
        self.transcode = transcode
        self._accept_post = ", ".join(self.registry.media_types())
        # Content-Type value -> (codec or None, media type, extra that would provide it)
        self._types: dict[bytes, tuple[Codec | None, str, str | None]] = {}
        self._choices: dict[tuple[bytes, str | None], Codec | None] = {}
        self._accepts: dict[bytes, list[str]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = scope.get(CONTEXT_KEY)  # run_with_context, without its call when it exists
        if ctx is not None:
            await self._http(scope, receive, send, ctx)
        else:
            await run_with_context(self._http, scope, receive, send)

    # -- negotiation (cached per header value) ---------------------------------------

    def request_type(self, content_type: bytes) -> tuple[Codec | None, str]:
        """(codec or None, media type) for a ``Content-Type`` value."""
        codec, media, _ = self._type(content_type)
        return codec, media

    def _type(self, content_type: bytes) -> tuple[Codec | None, str, str | None]:
        """(codec or None, media type, the extra that would provide it) for a ``Content-Type``."""
        hit = self._types.get(content_type)
        if hit is None:
            media = media_type_of(content_type.decode("latin-1"))
            hit = (self.registry.get(media), media, self.registry.missing(media))
            if len(self._types) >= _CACHE_LIMIT:
                self._types.clear()
            self._types[content_type] = hit
        return hit

    def response_codec(self, accept: bytes, request_codec: Codec | None) -> Codec | None:
        """The codec answering ``accept`` (None: nothing acceptable is supported)."""
        key = (accept, request_codec.media_type if request_codec is not None else None)
        try:
            return self._choices[key]
        except KeyError:
            pass
        ranges = parse_qlist(accept.decode("latin-1"))
        codec = choose_codec(ranges, self.registry, request_codec)
        if codec is None and any(r in _STREAM_RANGES and q > 0 for r, q in ranges):
            # An SSE client (``Accept: text/event-stream``): errors before the
            # stream starts use the request's type.
            codec = request_codec or JSON
        if len(self._choices) >= _CACHE_LIMIT:
            self._choices.clear()
        self._choices[key] = codec
        return codec

    def _accept_list(self, accept: bytes) -> list[str]:
        hit = self._accepts.get(accept)
        if hit is None:
            hit = [t for t, _ in parse_qlist(accept.decode("latin-1"))]
            if len(self._accepts) >= _CACHE_LIMIT:
                self._accepts.clear()
            self._accepts[accept] = hit
        return list(hit)

    def _from_metadata(self, accept: list[str], request_codec: Codec | None) -> Codec | None:
        """``metadata.accept``: the first entry a codec satisfies, in the client's order."""
        for entry in accept:
            codec = choose_codec([(media_type_of(entry), 1.0)], self.registry, request_codec)
            if codec is not None:
                return codec
        return None

    # -- request -------------------------------------------------------------------

    def _http(self, scope: Scope, receive: Receive, send: Send,
              ctx: RequestContext) -> Awaitable[None]:
        """Negotiate; the awaitable that decodes the body and runs the app (or refuses).

        Not a coroutine itself: a request with nothing to decode costs no frame here.
        """
        path: str = scope["path"]
        ctype = ctx.header(b"content-type")
        req_codec: Codec | None = None
        media: str | None = None
        extra: str | None = None
        if ctype is not None:
            req_codec, media, extra = self._types.get(ctype) or self._type(ctype)
        envelope = path in self.envelope_paths and scope["method"] == "POST"
        strict = envelope or self.strict or path.startswith(self.rpc_prefix)
        if not strict and req_codec is None and extra is None:
            # Not triggered: a plain app's request with nothing for us to decode.
            # Its responses are its own; only errors rendered further in use the
            # negotiated codec (no Vary: the layer changes nothing the app sends).
            accept = ctx.header(b"accept")
            if accept is not None:
                ctx.response_codec = self.response_codec(accept, None) or JSON
            return self.app(scope, receive, send)
        accept = ctx.header(b"accept")
        if accept is None:
            resp: Codec | None = req_codec or JSON
        else:
            resp = self.response_codec(accept, req_codec)
            ctx.accept = self._accept_list(accept)
        ctx.response_codec = resp or JSON  # errors from here on are encoded in it
        ctx.response_headers.append(_VARY)  # ctx.add_response_header, without its call
        ctx.request_codec = req_codec
        ctx.content_type = media

        if ctype is not None and req_codec is None:
            if extra is not None:
                return self._reject(scope, send, ctx, RpcError(
                    1003, f"{media} needs the aduib-asgi[{extra}] extra, which is not installed",
                    http_status=415, headers={"Accept-Post": self._accept_post}))
            if strict:
                return self._reject(scope, send, ctx, RpcError(
                    1003, f"Unsupported Content-Type {media!r}; supported: {self._accept_post}",
                    http_status=415, headers={"Accept-Post": self._accept_post}))
        if resp is None and strict:
            return self._reject(scope, send, ctx, RpcError(
                1003, f"None of the accepted media types is supported; supported: "
                      f"{self._accept_post}", http_status=406))

        if envelope:
            return self._decode(scope, receive, send, ctx, req_codec or JSON, accept, media, True)
        if req_codec is not None:
            if getattr(req_codec, "envelope_only", False):
                return self._reject(scope, send, ctx, RpcError(
                    1003, f"{req_codec.media_type} carries RPC envelopes only", http_status=415,
                    headers={"Accept-Post": self._accept_post}))
            return self._decode(scope, receive, send, ctx, req_codec, accept, media, False)
        return self.app(scope, receive, send)

    async def _reject(self, scope: Scope, send: Send, ctx: RequestContext, err: RpcError) -> None:
        await send_error(scope, send, err, ctx=ctx)

    async def _decode(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                      codec: Codec, accept: bytes | None, media: str | None,
                      envelope: bool) -> None:
        """Read the body (bounded) and decode it: the request ``envelope``, validated, or
        else a value for ``ctx.payload``. Then run the app with the body replayed."""
        v1 = envelope and scope["path"] == self._v1_path
        if v1:
            install_v1_shaper(ctx)  # errors while decoding are v1-shaped too
        limit = self.max_body_size
        try:
            # Servers pass a small body in one message: taken as it is, without
            # read_body's coroutine (which reads the rest, a disconnect, or 413).
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body = message.get("body", b"")
                if len(body) > limit:
                    body = await read_body(receive, limit=limit, first=message)
            else:
                body = await read_body(receive, limit=limit, first=message)
        except ClientDisconnected:
            return
        except RpcError as exc:
            await send_error(scope, send, exc, ctx=ctx)
            return
        ctx.body = body
        if envelope:
            try:
                if not body:
                    raise RpcError(1002, "Empty request body")
                payload = codec.decode(body)
                env = parse_envelope(ctx, payload, v1=v1)
                if (accept is None or accept == _ANY) and env.metadata is not None \
                        and env.metadata.accept:
                    chosen = self._from_metadata(env.metadata.accept, ctx.request_codec)
                    ctx.accept = list(env.metadata.accept)
                    if chosen is None:
                        raise RpcError(1003, "None of metadata.accept is supported; supported: "
                                       f"{self._accept_post}", http_status=406)
                    ctx.response_codec = chosen
            except RpcError as exc:
                await send_error(scope, send, exc, ctx=ctx)
                return
        elif body:
            decode = getattr(codec, "decode_value", None)
            try:
                ctx.payload = (decode or codec.decode)(body)
            except RpcError as exc:
                await send_error(scope, send, exc, ctx=ctx)
                return
            if self.transcode and codec is not JSON:
                ctx.extras[ORIGINAL_TYPE_KEY] = media
                body = JSON.encode(ctx.payload)
                headers = [h for h in scope["headers"]
                           if h[0] != b"content-type" and h[0] != b"content-length"]
                headers.append((b"content-type", JSON.content_type_header))
                headers.append((b"content-length", str(len(body)).encode("latin-1")))
                scope = {**scope, "headers": headers}
        await self.app(scope, replay_receive(body, receive), send)
