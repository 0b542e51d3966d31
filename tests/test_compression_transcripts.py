"""The compression layer's output, message by message, pinned against recorded transcripts.

A matrix of responses (statuses, header sets, one or several body messages,
event streams, app Vary fields, pre-existing content codings, no-transform,
ranges, HEAD, a POST choosing through ``metadata.compression``), by request
codings, by where the request context comes from (the layer alone, an outer
creator with or without response headers of its own, an inner layer adding a
``Vary`` of its own, an app that fails before its response starts and an outer
error renderer) is driven through :class:`CompressionMiddleware`, and what the
client would receive is compared with ``tests/data/compression_transcripts.json``,
recorded from the layer before its hot path was restructured (issue 18). Every
header (name, value, order), status, ``more_body`` flag and decoded body must
be the same. Coded bytes are compared decoded (a codec upgrade may change
them); a ``Content-Length`` equal to the bytes actually sent is recorded as
``#``.

Regenerate (only from a commit whose behaviour is the reference)::

    .venv/bin/python -m tests.test_compression_transcripts --write
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import pathlib
import sys
import zlib
from typing import Any

import brotli
import lz4.frame
import pytest
import snappy
import zstandard
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.middleware import CompressionMiddleware
from aduib_asgi.models import RpcRequest

DATA = pathlib.Path(__file__).parent / "data" / "compression_transcripts.json"
BIG = b"".join(b'{"row": %d, "text": "the quick brown fox"},' % i for i in range(200))

#: name -> (status, headers, bodies (each: bytes, more_body))
SHAPES: dict[str, tuple[int, list[tuple[bytes, bytes]], list[tuple[bytes, bool]]]] = {
    "starlette-json": (200, [(b"content-length", b"%d" % len(BIG)),
                             (b"content-type", b"application/json")], [(BIG, False)]),
    "small": (200, [(b"content-type", b"text/plain"), (b"content-length", b"5")],
              [(b"small", False)]),
    "small-undeclared": (200, [(b"content-type", b"text/plain")], [(b"small", False)]),
    "no-headers": (200, [], [(BIG, False)]),
    "streamed": (200, [(b"content-type", b"text/plain")],
                 [(BIG[:3000], True), (BIG[3000:], True), (b"", False)]),
    "sse": (200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            [(b"data: 1\n\n", True), (b"data: 2\n\n", False)]),
    "app-vary": (200, [(b"content-type", b"text/plain"), (b"vary", b"Origin")], [(BIG, False)]),
    "app-vary-mixed": (200, [(b"Vary", b"Cookie"), (b"content-type", b"text/html"),
                             (b"VARY", b"accept-encoding, Origin")], [(BIG, False)]),
    "already-coded": (200, [(b"content-type", b"text/plain"), (b"content-encoding", b"br")],
                      [(BIG, False)]),
    "identity-coded": (200, [(b"content-type", b"text/plain"),
                             (b"content-encoding", b"identity"),
                             (b"content-length", b"%d" % len(BIG))], [(BIG, False)]),
    "no-transform": (200, [(b"content-type", b"text/plain"),
                           (b"cache-control", b"public, No-Transform")], [(BIG, False)]),
    "image": (200, [(b"content-type", b"image/png")], [(BIG, False)]),
    "svg": (200, [(b"content-type", b"image/svg+xml; charset=utf-8")], [(BIG, False)]),
    "mixed-case": (200, [(b"Content-Type", b"Text/Plain"), (b"X-Keep", b"1"),
                         (b"Content-Length", b"%d" % len(BIG))], [(BIG, False)]),
    "range": (200, [(b"content-type", b"text/plain"), (b"content-range", b"bytes 0-9/100")],
              [(BIG, False)]),
    "206": (206, [(b"content-type", b"text/plain")], [(BIG, False)]),
    "304": (304, [(b"etag", b'"x"')], [(b"", False)]),
    "404-json": (404, [(b"content-type", b"application/json")], [(BIG, False)]),
    "trailers": (200, [(b"content-type", b"text/plain")], [(BIG, False)]),
    "empty": (200, [(b"content-type", b"text/plain"), (b"content-length", b"0")],
              [(b"", False)]),
}

#: Request bodies: name -> (extra request headers, body messages).
_GZ = zlib.compress(BIG, 6, 31)
REQUESTS: dict[str, tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bool]]]] = {
    "gzip-body": ([(b"content-encoding", b"gzip")], [(_GZ[:100], True), (_GZ[100:], False)]),
    "unknown-coding": ([(b"content-encoding", b"compress")], [(b"xx", False)]),
    "declared-too-large": ([(b"content-length", b"99999999999")], [(b"", False)]),
    "chunked-too-large": ([], [(b"x" * 6000, True), (b"x" * 6000, False)]),
    "corrupt-gzip": ([(b"content-encoding", b"gzip")], [(b"not gzip at all", False)]),
}

ENCODINGS = (None, "gzip", "zstd", "br", "identity", "gzip;q=0.5, lz4, snappy;q=0.9")
CONTEXTS = ("alone", "outer", "outer+headers", "inner-vary", "outer+headers+inner-vary")
METHODS = ("GET", "HEAD", "POST")


class _Seed:
    """An outer context creator (as the error layer of a stack), with optional headers."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_with_context(self._call, scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send,
                    ctx: RequestContext) -> None:
        for h in self.headers:
            ctx.add_response_header(*h)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except RuntimeError:  # a stand-in for the error layer: render when it still can
            if started:
                raise
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"failed"})


class _InnerVary:
    """An inner layer asking for a Vary of its own (as the content layer does)."""

    def __init__(self, app: ASGIApp, more: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.app = app
        self.more = more

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_with_context(self._call, scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send,
                    ctx: RequestContext) -> None:
        ctx.add_response_header(b"vary", b"Accept")
        for h in self.more:
            ctx.add_response_header(*h)
        await self.app(scope, receive, send)


def _app(shape: str, metadata: str | None) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if shape in REQUESTS:  # echo the (decoded) request body
            got = b""
            while True:
                message = await receive()
                got += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": got})
            return
        if metadata is not None:
            ctx = scope["aduib.context"]
            ctx.envelope = RpcRequest.model_validate(
                {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/A/b",
                 "metadata": {"compression": metadata}})
        if shape == "fails":
            raise RuntimeError("before the start")
        status, headers, bodies = SHAPES[shape]
        start: Message = {"type": "http.response.start", "status": status,
                          "headers": list(headers)}
        if shape == "trailers":
            start["trailers"] = True
        await send(start)
        for data, more in bodies:
            await send({"type": "http.response.body", "body": data, "more_body": more})

    return app


def _decode(coding: bytes | None, data: bytes) -> bytes:
    """The body as the client decodes it (as sent when it is not coded by a known coding)."""
    decoders = {
        b"gzip": lambda d: zlib.decompress(d, 31),
        b"zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
        b"br": lambda d: bytes(brotli.decompress(d)),
        b"lz4": lambda d: bytes(lz4.frame.decompress(d)),
        b"snappy": lambda d: bytes(snappy.StreamDecompressor().decompress(d)),
    }
    decode = decoders.get(coding or b"")
    if decode is None:
        return data
    try:
        return bytes(decode(data))
    except Exception:  # labelled by the app, not coded ("already-coded"): as sent
        return data


async def transcript(shape: str, encoding: str | None, where: str, method: str) -> list[Any]:
    """What a client receives for one case, normalised (see the module docstring)."""
    metadata = "zstd" if method == "POST" else None
    app: ASGIApp = _app(shape, metadata)
    if "inner-vary" in where:
        app = _InnerVary(app)
    elif "inner-extra" in where:
        app = _InnerVary(app, ((b"x-a", b"1"), (b"vary", b"Origin")))
    app = CompressionMiddleware(app, minimum_size=64, max_body_size=10_000)
    if where not in ("alone", "inner-vary", "inner-extra"):
        app = _Seed(app, [(b"x-request-id", b"r-1"), (b"vary", b"Origin")]
                    if "headers" in where else [])
    headers = [(b"host", b"t")]
    if encoding is not None:
        headers.append((b"accept-encoding", encoding.encode()))
    incoming = [(b"", False)]
    if shape in REQUESTS:
        headers += REQUESTS[shape][0]
        incoming = list(REQUESTS[shape][1])
    scope: dict[str, Any] = {"type": "http", "method": method, "path": "/", "query_string": b"",
                             "headers": headers}
    sent: list[Message] = []

    async def receive() -> Message:
        if not incoming:
            return {"type": "http.disconnect"}
        data, more = incoming.pop(0)
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except RuntimeError as exc:
        sent.append({"type": "raised", "text": str(exc)})
    out: list[Any] = []
    total = sum(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")
    coding: bytes | None = None
    body = b""
    for m in sent:
        if m["type"] == "http.response.start":
            hs = []
            for k, v in m.get("headers", ()):
                if k.lower() == b"content-encoding":
                    coding = v.lower()
                if k.lower() == b"content-length" and v == b"%d" % total:
                    v = b"#"
                hs.append(f"{k.decode('latin-1')}: {v.decode('latin-1')}")
            out.append({"status": m["status"], "headers": hs,
                        **({"trailers": True} if m.get("trailers") else {})})
        elif m["type"] == "http.response.body":
            body += m.get("body", b"")
            out.append({"more": bool(m.get("more_body", False)), "empty": not m.get("body")})
        else:
            out.append(dict(m))
    if out and out[0].get("status", 0) >= 400:  # an error envelope: timestamps vary
        out.append({"error": True})
        return out
    decoded = _decode(coding, body) if body else b""
    out.append({"body": hashlib.sha256(decoded).hexdigest()[:16], "length": len(decoded)})
    return out


def cases() -> list[tuple[str, str | None, str, str]]:
    out = []
    for shape, encoding, where, method in itertools.product(
            [*SHAPES, "fails", *REQUESTS], ENCODINGS, CONTEXTS, METHODS):
        if shape in REQUESTS and (method != "POST" or encoding not in (None, "gzip")):
            continue
        if method != "GET" and shape not in REQUESTS and (where not in ("alone", "outer+headers")
                                or encoding not in (None, "gzip")):
            continue
        out.append((shape, encoding, where, method))
    return out


def _key(case: tuple[str, str | None, str, str]) -> str:
    shape, encoding, where, method = case
    return f"{method} {shape} ae={encoding} ctx={where}"


async def _all() -> dict[str, Any]:
    return {_key(c): await transcript(*c) for c in cases()}


@pytest.mark.anyio
async def test_every_case_matches_its_recorded_transcript() -> None:
    recorded = json.loads(DATA.read_text())
    got = await _all()
    assert set(got) == set(recorded)
    diff = [k for k in recorded if got[k] != recorded[k]]
    assert not diff, "\n".join(f"{k}:\n  recorded {recorded[k]}\n  now      {got[k]}"
                               for k in diff[:5])


@pytest.mark.anyio
async def test_as_the_contexts_creator_the_layer_emits_its_headers_as_the_creator_would(
        ) -> None:
    """Alone, the layer creates the context and does the creator's header emitter's work
    in its own responder (no call of the emitter per message): every case answers as
    when an outer layer creates the context and its emitter merges the headers."""
    for shape in [*SHAPES, *REQUESTS]:
        for encoding in ENCODINGS:
            for method in METHODS:
                alone = await transcript(shape, encoding, "inner-extra", method)
                outer = await transcript(shape, encoding, "outer+inner-extra", method)
                assert alone == outer, (shape, encoding, method)


@pytest.mark.anyio
async def test_the_matrix_covers_every_mode() -> None:
    """The recorded cases reach each outcome: coded (one body, stream), passed, Vary kinds."""
    recorded = json.loads(DATA.read_text())
    starts = [t[0]["headers"] for t in recorded.values() if "status" in t[0]]
    assert any("content-encoding: zstd" in h for h in starts)  # metadata / Accept-Encoding
    assert any("content-encoding: lz4" in h for h in starts)  # q-values
    assert any("vary: Accept-Encoding" in h for h in starts)
    assert any("vary: Origin, Accept-Encoding, Accept" in h for h in starts)
    assert any("content-length: #" in h and "content-encoding: gzip" in h for h in starts)
    assert any(t[0].get("status") == 500 and "vary: Accept-Encoding" in t[0]["headers"]
               for t in recorded.values())  # an error rendered outside keeps the Vary
    assert any(len(t) > 4 and t[0].get("headers") and "content-encoding: gzip" in t[0]["headers"]
               for t in recorded.values())  # a coded stream


if __name__ == "__main__" and "--write" in sys.argv:
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(asyncio.run(_all()), indent=None, separators=(",", ":"),
                               sort_keys=True).replace('],"', '],\n"') + "\n")
    print(f"wrote {len(cases())} cases to {DATA}")
