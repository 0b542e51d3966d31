"""SSE through the compression layer still arrives frame by frame (PROTOCOL.md section 5)."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import zstandard

from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.compression import CompressionMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from tests.conftest import envelope
from tests.stream_harness import http_stream, parse_sse

pytestmark = pytest.mark.anyio


def gzip_decoder() -> Callable[[bytes], bytes]:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return d.decompress


def zstd_decoder() -> Callable[[bytes], bytes]:
    d = zstandard.ZstdDecompressor().decompressobj()
    return d.decompress


@pytest.mark.parametrize(("coding", "decoder"), [("gzip", gzip_decoder), ("zstd", zstd_decoder)])
@pytest.mark.parametrize("framing", ["message", "envelope"])
async def test_compressed_sse_arrives_frame_by_frame(
    coding: str, decoder: Callable[[], Callable[[bytes], bytes]], framing: str
) -> None:
    """The handler only produces frame k+1 after the client decoded frame k."""
    gates = [anyio.Event() for _ in range(3)]
    reg = MethodRegistry()

    async def lockstep(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for i, gate in enumerate(gates):
            yield {"i": i, "pad": "x" * 600}  # above the compression threshold
            await gate.wait()

    reg.register("rpc.v2/Z/lockstep", lockstep)
    dispatcher = RpcDispatcher(reg)
    dispatcher.streaming.configure(default_framing=framing, heartbeat_interval=0)
    app = ErrorMappingMiddleware(CompressionMiddleware(dispatcher))
    decode = decoder()
    got: list[Any] = []
    with anyio.fail_after(10):
        async with http_stream(app, envelope("rpc.v2/Z/lockstep"),
                               headers=[(b"accept-encoding", coding.encode())]) as s:
            assert await s.start() == 200
            assert s.headers["content-encoding"] == coding
            assert s.headers["content-type"].startswith("text/event-stream")
            for gate in gates:
                raw = await s.chunk()
                assert raw is not None
                events = parse_sse(decode(raw))  # decodes alone: a whole event per chunk
                assert len(events) == 1
                got.append(json.loads(events[0]["data"]))
                gate.set()
            tail = b""
            while (raw := await s.chunk()) is not None:
                tail += decode(raw)
    if framing == "message":
        assert [g["payload"]["data"]["i"] for g in got] == [0, 1, 2]
        assert [json.loads(e["data"])["type"] for e in parse_sse(tail)] == ["end"]
    else:
        assert [g["result"]["i"] for g in got] == [0, 1, 2]
