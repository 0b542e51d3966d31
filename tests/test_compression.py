"""CompressionMiddleware: request decoding with a cap, response codings, streaming, bombs."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import brotli
import httpx
import lz4.frame
import pytest
import snappy
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aduib_asgi.middleware import CompressionMiddleware, ErrorMappingMiddleware
from aduib_asgi.middleware import compression as compression_module
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

TEXT = b"The quick brown fox jumps over the lazy dog. " * 100  # 4500 bytes

DECOMPRESS = {
    "gzip": gzip.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    "lz4": lz4.frame.decompress,
    "snappy": lambda b: snappy.StreamDecompressor().decompress(b),
    "br": brotli.decompress,
}
COMPRESS = {
    "gzip": gzip.compress,
    "zstd": zstandard.ZstdCompressor().compress,
    "lz4": lz4.frame.compress,
    "snappy": lambda b: snappy.StreamCompressor().compress(b),
    "br": brotli.compress,
}


def plain_app() -> Starlette:
    async def text(request: Request) -> Response:
        size = int(request.query_params.get("size", len(TEXT)))
        media = request.query_params.get("type", "text/plain")
        headers = {}
        if "cc" in request.query_params:
            headers["cache-control"] = request.query_params["cc"]
        return Response((TEXT * (size // len(TEXT) + 1))[:size], media_type=media,
                        headers=headers)

    async def encoded(request: Request) -> Response:
        return Response(gzip.compress(TEXT), headers={"content-encoding": "gzip"},
                        media_type="text/plain")

    async def length(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"length": len(body), "head": body[:20].decode("latin-1"),
                             "encoding": request.headers.get("content-encoding")})

    return Starlette(routes=[Route("/text", text, methods=["GET", "HEAD"]),
                             Route("/encoded", encoded),
                             Route("/length", length, methods=["POST"])])


async def get_raw(client: httpx.AsyncClient, url: str, accept_encoding: str | None,
                  method: str = "GET") -> tuple[httpx.Response, bytes]:
    headers = {"accept-encoding": accept_encoding} if accept_encoding is not None else {}
    async with client.stream(method, url, headers=headers) as r:
        raw = b"".join([c async for c in r.aiter_raw()])
    return r, raw


@pytest.fixture
async def plain() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(ErrorMappingMiddleware(CompressionMiddleware(plain_app()))) as c:
        yield c


@pytest.mark.parametrize("coding", list(DECOMPRESS))
async def test_response_compressed_per_coding(plain: httpx.AsyncClient, coding: str) -> None:
    r, raw = await get_raw(plain, "/text", coding)
    assert r.headers["content-encoding"] == coding
    assert int(r.headers["content-length"]) == len(raw) < len(TEXT)
    assert "Accept-Encoding" in r.headers.get_list("vary", split_commas=True)
    assert DECOMPRESS[coding](raw) == TEXT


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip, zstd", "zstd"),  # server preference on ties
        ("gzip;q=0.5, zstd;q=0.4", "gzip"),
        ("*;q=0.1, gzip;q=0", "zstd"),
        ("zstd;q=0, gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("snappy, lz4", "lz4"),
        ("br, gzip;q=0.9", "br"),
        ("GZIP ; Q=1", "gzip"),
        ("identity", None),
        ("deflate", None),
        ("*;q=0", None),
        ("gzip;q=bogus", None),
    ],
)
async def test_accept_encoding_q_values(
    plain: httpx.AsyncClient, accept_encoding: str, expected: str | None
) -> None:
    r, raw = await get_raw(plain, "/text", accept_encoding)
    assert r.headers.get("content-encoding") == expected
    assert "Accept-Encoding" in r.headers.get_list("vary", split_commas=True)
    if expected is None:
        assert raw == TEXT


@pytest.mark.parametrize(
    "url",
    [
        "/text?size=100",  # below the minimum size
        "/text?type=image/png",
        "/text?type=application/zip",
        "/text?cc=public,%20no-transform",
    ],
)
async def test_left_uncompressed(plain: httpx.AsyncClient, url: str) -> None:
    r, raw = await get_raw(plain, url, "gzip")
    assert "content-encoding" not in r.headers
    assert int(r.headers["content-length"]) == len(raw)


async def test_svg_is_compressed(plain: httpx.AsyncClient) -> None:
    r, _ = await get_raw(plain, "/text?type=image/svg%2Bxml", "gzip")
    assert r.headers["content-encoding"] == "gzip"


async def test_already_encoded_is_not_encoded_again(plain: httpx.AsyncClient) -> None:
    r, raw = await get_raw(plain, "/encoded", "zstd")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == TEXT


async def test_no_accept_encoding_no_vary(plain: httpx.AsyncClient) -> None:
    async with client_for(CompressionMiddleware(plain_app())) as client:
        r = await client.get("/text", headers={"accept-encoding": ""})
    assert r.content == TEXT
    assert "content-encoding" not in r.headers


async def test_head_is_not_compressed(plain: httpx.AsyncClient) -> None:
    r, raw = await get_raw(plain, "/text", "gzip", method="HEAD")
    assert "content-encoding" not in r.headers
    assert raw == b""


async def test_big_body_is_compressed_in_a_thread(
    plain: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = anyio.to_thread.run_sync

    async def spy(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[0]))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(compression_module.anyio.to_thread, "run_sync", spy)
    await get_raw(plain, "/text?size=10000", "gzip")
    assert calls == []  # small: inline
    _r, raw = await get_raw(plain, "/text?size=1048576", "gzip")
    assert calls == []  # 1 MiB: still inline (a thread hop would cost more than it spares)
    assert gzip.decompress(raw) == (TEXT * 234)[:1_048_576]
    _r, raw = await get_raw(plain, "/text?size=3000000", "gzip")
    assert calls == [3_000_000]  # above DEFAULT_THREAD_THRESHOLD (2 MiB): in a thread
    assert gzip.decompress(raw) == (TEXT * 667)[:3_000_000]


# -- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("coding", list(COMPRESS))
async def test_request_decompressed_per_coding(plain: httpx.AsyncClient, coding: str) -> None:
    body = TEXT * 100
    r = await plain.post("/length", content=COMPRESS[coding](body),
                         headers={"content-encoding": coding})
    assert r.status_code == 200
    assert r.json() == {"length": len(body), "head": body[:20].decode(), "encoding": None}


@pytest.mark.parametrize("coding", list(COMPRESS))
async def test_corrupt_request_is_1004(plain: httpx.AsyncClient, coding: str) -> None:
    r = await plain.post("/length", content=b"\x00not compressed at all" * 10,
                         headers={"content-encoding": coding})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 1004


@pytest.mark.parametrize("coding", ["gzip", "lz4", "snappy", "br"])
async def test_truncated_request_is_1004(plain: httpx.AsyncClient, coding: str) -> None:
    data = COMPRESS[coding](TEXT * 10)
    r = await plain.post("/length", content=data[: len(data) // 2],
                         headers={"content-encoding": coding})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 1004


async def test_unsupported_request_coding_is_415(plain: httpx.AsyncClient) -> None:
    r = await plain.post("/length", content=b"x", headers={"content-encoding": "compress"})
    assert r.status_code == 415
    assert r.json()["error"]["code"] == 1004
    advertised = {c.strip() for c in r.headers["accept-encoding"].split(",")}
    assert {"gzip", "zstd", "lz4", "snappy", "identity"} <= advertised


async def test_identity_bodies_are_capped_too() -> None:
    app = ErrorMappingMiddleware(CompressionMiddleware(plain_app(), max_body_size=1000))
    async with client_for(app) as client:
        r = await client.post("/length", content=b"x" * 1001)
        assert r.status_code == 413 and r.json()["error"]["code"] == 2004

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(5):
                yield b"x" * 300

        r = await client.post("/length", content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == 2004
        r = await client.post("/length", content=b"x" * 1000)
        assert r.status_code == 200 and r.json()["length"] == 1000
        r = await client.post("/length", content=gzip.compress(b"x" * 1001),
                              headers={"content-encoding": "gzip"})
        assert r.status_code == 413


def _gzip_bomb(total: int = 1 << 30, chunk: int = 1 << 20) -> bytes:
    """``total`` zero bytes as one gzip member (repeated full-flush blocks, ~1 MiB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(chunk)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(total // chunk):
        crc = zlib.crc32(zeros, crc)
    trailer = b"\x03\x00" + crc.to_bytes(4, "little") + (total % (1 << 32)).to_bytes(4, "little")
    return first + block * (total // chunk - 2) + c.compress(zeros) + trailer


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return _gzip_bomb()


async def test_gzip_bomb_is_413_fast_and_small(demo_client: httpx.AsyncClient,
                                               gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 2 * 1024 * 1024
    d = zlib.decompressobj(31)  # a real gzip stream of 1 GiB of zeros
    assert d.decompress(gzip_bomb[:65536], 1 << 20) == bytes(1 << 20)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(gzip_bomb), 65536):
            yield gzip_bomb[i:i + 65536]

    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    started = time.perf_counter()
    r = await demo_client.post(RPC, content=body(), headers=headers)
    elapsed = time.perf_counter() - started
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 2004
    assert elapsed < 1.0

    tracemalloc.start()
    try:
        r = await demo_client.post(RPC, content=body(), headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413
    assert peak < 64 * 1024 * 1024
    # The server keeps serving.
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {"ok": 1}))
    assert r.status_code == 200 and r.json()["result"] == {"ok": 1}


# -- streaming ----------------------------------------------------------------------------


class AsgiDriver:
    """Drives an ASGI app directly, handing each sent message to the test as it comes."""

    def __init__(self, app: Any, path: str, accept_encoding: str) -> None:
        self.app = app
        self.scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"accept-encoding", accept_encoding.encode())],
            "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        }
        self.send_stream, self.messages = anyio.create_memory_object_stream[dict[str, Any]](100)
        self.disconnect = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def run(self) -> None:
        async with self.send_stream:
            await self.app(self.scope, self.receive, self.send_stream.send)


STREAM_DECODERS = {
    "gzip": lambda: zlib.decompressobj(31).decompress,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
    "lz4": lambda: lz4.frame.LZ4FrameDecompressor().decompress,
    "snappy": lambda: snappy.StreamDecompressor().decompress,
    "br": lambda: brotli.Decompressor().process,
}


@pytest.mark.parametrize("coding", ["gzip", "zstd", "lz4", "snappy", "br"])
@pytest.mark.parametrize("media", ["text/event-stream", "application/x-ndjson"])
async def test_stream_frames_arrive_before_the_next_is_produced(coding: str, media: str) -> None:
    produce_second = anyio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"id: 1\nevent: data\ndata: {\"index\": 0}\n\n"
        await produce_second.wait()
        yield b"id: 2\nevent: data\ndata: {\"index\": 1}\n\n"

    async def sse(request: Request) -> StreamingResponse:
        return StreamingResponse(events(), media_type=media)

    app = CompressionMiddleware(Starlette(routes=[Route("/sse", sse)]))
    driver = AsgiDriver(app, "/sse", coding)
    decode = STREAM_DECODERS[coding]()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            start = await driver.messages.receive()
            headers = dict(start["headers"])
            assert headers[b"content-encoding"] == coding.encode()
            assert b"content-length" not in headers
            text = b""
            while b"\n\n" not in text:  # the first event, before the second exists
                message = await driver.messages.receive()
                assert message["more_body"] is True
                text += decode(message["body"])
            assert text == b"id: 1\nevent: data\ndata: {\"index\": 0}\n\n"
            produce_second.set()
            async for message in driver.messages:
                text += decode(message["body"])
                if not message.get("more_body", False):
                    break
            driver.disconnect.set()
    assert text.endswith(b"data: {\"index\": 1}\n\n")


async def test_websocket_and_lifespan_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = CompressionMiddleware(inner)
    await mw({"type": "websocket", "path": "/"}, None, None)
    await mw({"type": "lifespan"}, None, None)
    assert seen == ["websocket", "lifespan"]


async def test_compression_layer_errors_use_the_requests_content_type(
        demo_client: httpx.AsyncClient) -> None:
    """The compression layer runs before content negotiation; its errors still follow it."""
    import msgpack

    body = msgpack.packb({"aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo", "data": {}})
    bogus = await demo_client.post(RPC, content=body, headers={
        "Content-Type": "application/msgpack", "Accept": "application/msgpack",
        "Content-Encoding": "bogus"})
    assert bogus.status_code == 415
    assert bogus.headers["content-type"].startswith("application/msgpack")
    assert msgpack.unpackb(bogus.content)["error"]["code"] == 1004
    huge = await demo_client.post(RPC, content=body, headers={
        "Content-Type": "application/msgpack", "Content-Length": str(1 << 30)})
    assert huge.status_code == 413
    assert huge.headers["content-type"].startswith("application/msgpack")


async def test_x_gzip_content_encoding_is_gzip(demo_client: httpx.AsyncClient) -> None:
    import gzip
    import json

    body = gzip.compress(json.dumps(envelope("rpc.v2/Echo/echo", {"a": 1})).encode())
    r = await demo_client.post(RPC, content=body, headers={
        "Content-Type": "application/json", "Content-Encoding": "x-gzip"})
    assert r.status_code == 200 and r.json()["result"] == {"a": 1}


async def test_compressed_input_is_capped_too() -> None:
    """Input that decompresses to nothing (zstd skippable frames) cannot be sent unbounded."""
    import zstandard
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from aduib_asgi.middleware.compression import CompressionMiddleware

    async def echo_len(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    app = CompressionMiddleware(Starlette(routes=[Route("/", echo_len, methods=["POST"])]),
                                max_body_size=4096)
    skippable = b"\x50\x2a\x4d\x18" + (16384).to_bytes(4, "little") + b"\x00" * 16384
    body = skippable + zstandard.ZstdCompressor().compress(b"ok")
    async with client_for(app) as c:
        declared = await c.post("/", content=body, headers={"Content-Encoding": "zstd"})

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000]

        streamed = await c.post("/", content=chunks(), headers={"Content-Encoding": "zstd"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == 2004
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == 2004
