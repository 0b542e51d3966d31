"""Memory bounds of the request decoders that the fuzz invariant found wanting."""

from __future__ import annotations

import os
from typing import Any

import pytest
import zstandard

from aduib_asgi.compression import available_codings
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware.compression import _DecodingReceive

pytestmark = pytest.mark.anyio


def vm_size_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return int(f.read().split("VmSize:")[1].split()[0])


def zstd_header(window_log: int) -> bytes:
    params = zstandard.ZstdCompressionParameters(window_log=window_log, compression_level=3,
                                                 write_content_size=False)
    o = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return o.compress(b"{}") + o.flush()


def receiver(body: bytes, more: bool = False) -> _DecodingReceive:
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": body,
                                       "more_body": more}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return _DecodingReceive(receive, available_codings()["zstd"], 16 * 1024 * 1024)


async def decode(body: bytes) -> bytes:
    decoding = receiver(body)
    out = b""
    while True:
        message = await decoding()
        out += message.get("body", b"")
        if not message.get("more_body"):
            return out


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
async def test_zstd_frame_cannot_reserve_a_huge_window() -> None:
    # 11 bytes declaring a 128 MiB window made each request reserve 128 MiB (virtual):
    # a few thousand such requests exhaust the address space / commit limit.
    frame = zstd_header(27)
    assert len(frame) < 16
    before = vm_size_kb()
    held = []  # requests whose body stops right after the frame header
    for _ in range(8):
        decoding = receiver(frame[:6], more=True)
        held.append(decoding)
        with pytest.raises(RpcError) as info:
            await decoding()
        assert info.value.code == 1004
    assert vm_size_kb() - before < 64 * 1024  # not 8 x 128 MiB
    # the windows compressors use by default still decode
    assert await decode(zstd_header(23)) == b"{}"
    assert await decode(available_codings()["zstd"].compress(b'{"a": 1}')) == b'{"a": 1}'
