"""Native codec contexts are reused, and a refused bomb frees its buffers without a GC pass.

OPERATIONS.md section 5; DESIGN-NOTES "Reuse codec contexts". The RSS side of
both (a real demo process under a zstd SSE soak and a bomb flood) is in
tests/test_codec_memory_demo.py.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import brotli
import lz4.frame
import pytest
import snappy
import zstandard
from starlette.types import Receive, Scope, Send

from aduib_asgi.compression import ZSTD_MAX_WINDOW, ContextPool, available_codings
from aduib_asgi.demo.server import DemoConfig, build_demo_app
from aduib_asgi.middleware import CompressionMiddleware, ErrorMappingMiddleware
from tests.conftest import RPC, client_for

pytestmark = pytest.mark.anyio

EVENT = b'data: {"aduib_rpc":"2.0","result":{"index":%d},"pad":"' + b"x" * 600 + b'"}\n\n'


def _decoder(coding: str) -> Callable[[bytes], bytes]:
    """A streaming decoder of one response body, fed chunk by chunk."""
    if coding == "gzip":
        return zlib.decompressobj(31).decompress
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress
    if coding == "lz4":  # (without max_length, python-lz4 returns a first block in part)
        d = lz4.frame.LZ4FrameDecompressor()
        return lambda b: bytes(d.decompress(b, max_length=1 << 24))
    if coding == "br":
        return brotli.Decompressor().process
    return snappy.StreamDecompressor().decompress


def sse_app(events: int, fail_after: int | None = None) -> Any:
    """An event stream of ``events`` messages (raising after ``fail_after`` of them)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(events):
            if i == fail_after:
                raise RuntimeError("handler failed mid-stream")
            await send({"type": "http.response.body", "body": EVENT % i, "more_body": True})
            await anyio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _stream(app: Any, coding: str) -> list[bytes]:
    """The body chunks of one streamed response, as sent."""
    scope = {"type": "http", "method": "POST", "path": "/s", "headers": [
        (b"accept-encoding", coding.encode())], "query_string": b""}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert (b"content-encoding", coding.encode()) in message["headers"]
        else:
            chunks.append(message.get("body", b""))

    with contextlib.suppress(RuntimeError):
        await app(scope, receive, send)
    return chunks


@pytest.mark.parametrize("coding", ["zstd", "lz4", "gzip", "br", "snappy"])
async def test_interleaved_streams_are_independent_and_each_event_decodes_at_once(
    coding: str
) -> None:
    """Many streams at once on reused contexts: each response is its own valid stream,
    every flushed event decodes as soon as it arrives, and the pool ends with at most
    as many contexts as streams ran at once."""
    mw = CompressionMiddleware(sse_app(12))
    results: dict[int, list[bytes]] = {}

    async def one(k: int) -> None:
        results[k] = await _stream(mw, coding)

    for _ in range(3):  # three waves of 8 concurrent streams
        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(one, k)
        for chunks in results.values():
            decode = _decoder(coding)
            for i, chunk in enumerate(chunks[:-1]):
                assert decode(chunk) == EVENT % i  # decodable per event (flushed)
            decode(chunks[-1])
    pool = mw.codings[coding].encoder_pool
    if coding in ("zstd", "lz4"):
        assert pool is not None
        assert pool.created <= 8 and pool.idle == pool.created  # 24 streams, <= 8 contexts
    else:
        assert pool is None  # zlib, brotli: no reset API; snappy: no native state


@pytest.mark.parametrize("coding", ["zstd", "lz4"])
async def test_an_abandoned_stream_gives_its_context_back_and_the_next_frame_is_whole(
    coding: str
) -> None:
    mw = CompressionMiddleware(sse_app(5, fail_after=2))
    await _stream(mw, coding)  # ends mid-frame (the handler raised)
    pool = mw.codings[coding].encoder_pool
    assert pool is not None and pool.created == 1 and pool.idle == 1
    mw.app = sse_app(3)
    chunks = await _stream(mw, coding)
    assert pool.created == 1  # the same context served the next response
    whole = b"".join(chunks)
    expected = b"".join(EVENT % i for i in range(3))
    if coding == "zstd":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(whole) == expected
    else:
        assert lz4.frame.decompress(whole) == expected


@pytest.mark.parametrize("coding", ["zstd", "lz4"])
async def test_request_decoders_reuse_their_contexts(coding: str) -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    mw = CompressionMiddleware(echo)
    compress = available_codings()[coding].compress
    async with client_for(mw) as c:
        for i in range(10):
            data = b"payload %d " % i * 200
            r = await c.post("/", content=compress(data), headers={"content-encoding": coding,
                                                                   "accept-encoding": "identity"})
            assert r.status_code == 200 and r.content == data
    pool = mw.codings[coding].decoder_pool
    assert pool is not None and pool.created == 1 and pool.idle == 1


def test_context_pool_keeps_at_most_limit_idle() -> None:
    made: list[object] = []
    pool: ContextPool[object] = ContextPool(lambda: made.append(object()) or made[-1], limit=2)
    taken = [pool.take() for _ in range(4)]
    assert pool.created == 4 and len(set(map(id, taken))) == 4
    for t in taken:
        pool.give(t)
    assert pool.idle == 2  # the rest are dropped (freed), not hoarded
    assert pool.take() in taken and pool.created == 4


async def test_a_zstd_body_with_a_window_over_8_mib_is_refused_not_allocated() -> None:
    """RFC 9659: the zstd content coding's window is at most 8 MB; a frame asking for
    128 MiB would make the server allocate it for one request."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    huge_window = cobj.compress(b"{}" * 1000) + cobj.flush()
    app = build_demo_app(DemoConfig(env="prod"))
    async with client_for(app) as c:
        r = await c.post(RPC, content=huge_window, headers={
            "content-type": "application/json", "content-encoding": "zstd"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 1004
    assert ZSTD_MAX_WINDOW == 8 * 1024 * 1024


# -- bombs: nothing kept alive through a traceback cycle -------------------------------

_BOMB_OUT = 40 * 1024 * 1024  # decompresses to 40 MiB; the demo's cap is 16 MiB


def _bomb(coding: str) -> bytes:
    zeros = b"\0" * (8 * 1024 * 1024)
    if coding == "zstd":
        z = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join(z.compress(zeros) for _ in range(5)) + z.flush()
    if coding == "gzip":
        g = zlib.compressobj(1, zlib.DEFLATED, 31)
        return b"".join(g.compress(zeros) for _ in range(5)) + g.flush()
    if coding == "lz4":
        return bytes(lz4.frame.compress(zeros * 5))
    if coding == "br":
        return bytes(brotli.compress(zeros * 5, quality=1))
    return bytes(snappy.StreamCompressor().compress(zeros * 3))  # 24 MiB, 1.1 MB sent


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("coding", ["zstd", "gzip", "lz4", "br", "snappy", "identity"])
async def test_refused_bombs_free_their_buffers_without_a_gc_pass(
    coding: str, no_gc: None
) -> None:
    """Through the whole demo stack: after three refused bombs (413/2004), the memory
    Python allocated for them is back without gc (it used to wait for a GC pass,
    ~16 MiB per bomb: the decoded chunks, held by an exception/traceback cycle)."""
    app = build_demo_app(DemoConfig(env="prod"))
    body = b"{}" + b" " * (17 * 1024 * 1024) if coding == "identity" else _bomb(coding)
    headers = [(b"content-type", b"application/json")]
    if coding != "identity":
        headers.append((b"content-encoding", coding.encode()))

    async def refuse() -> int:
        """One bomb in 64 KiB messages without Content-Length (as a chunked upload)."""
        pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            if pieces:
                return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}
            await anyio.sleep_forever()
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": RPC, "raw_path": RPC.encode(),
                 "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
        await app(scope, receive, send)
        return status[0]

    assert await refuse() == 413  # warm-up: imports, caches, pools
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        assert [await refuse() for _ in range(3)] == [413, 413, 413]
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024, f"{held / 2**20:.1f} MiB held until a GC pass"


async def test_a_corrupt_body_error_keeps_no_decoded_data(no_gc: None) -> None:
    """1004 after much valid output: the same, for the corrupt-input path."""
    good = zstandard.ZstdCompressor().compress(b"[" * (4 * 1024 * 1024))
    body = good[:-8] + b"\xff" * 64  # valid start, garbage end

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass

    app = ErrorMappingMiddleware(CompressionMiddleware(reader))
    async with client_for(app) as c:
        r = await c.post("/", content=body, headers={"content-encoding": "zstd"})
        assert r.status_code == 400
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(3):
                r = await c.post("/", content=body, headers={"content-encoding": "zstd"})
                assert r.json()["error"]["code"] == 1004
            held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
    assert held < 2 * 1024 * 1024, f"{held / 2**20:.1f} MiB held until a GC pass"




def test_a_zstd_decoder_that_grew_large_is_freed_not_pooled() -> None:
    """A streamed (no content size) body makes the context allocate its whole window:
    such a context is dropped, so a flood of them leaves nothing pinned in the pool."""
    coding = available_codings()["zstd"]
    pool = coding.decoder_pool
    assert pool is not None
    small = zstandard.ZstdCompressor().compress(b'{"a": 1}' * 100)  # content size known
    cobj = zstandard.ZstdCompressor().compressobj()
    streamed = cobj.compress(b'{"a": 1}' * 100) + cobj.flush()
    for body, kept in ((small, 1), (streamed, 0)):
        d = coding.decoder()
        assert b"".join(d.decompress(body, 1 << 20)) == b'{"a": 1}' * 100
        d.close()
        d.close()  # idempotent
        assert pool.idle == kept
        pool.take() if kept else None
