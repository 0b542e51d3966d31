"""Memory of a real `aduib-asgi demo` process under hostile load stays bounded.

Bounded versions of the issue's measurements (OPERATIONS.md section 5): a zstd
SSE soak (RSS 60 -> 660 MB over 3 minutes before codec contexts were pooled),
a flood of refused zstd bombs (decoded chunks held through traceback cycles and
a python-zstandard buffer leak: 100 bombs -> +1.9 GB), and calls with distinct
error codes (metrics text 0.1 -> 9.5 MB over 3,000 codes).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
import zstandard

from tests.demo_process import DemoProcess, running_demo

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


def rss(demo: DemoProcess) -> int:
    """Resident set size of the demo process, in bytes."""
    for line in Path(f"/proc/{demo.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_zstd_sse_soak_keeps_rss_bounded() -> None:
    """480 zstd-compressed SSE streams, 40 at a time: before, RSS grew ~+100 MB."""
    body = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/stream",
            "data": {"count": 20}}
    with running_demo() as demo:
        async with httpx.AsyncClient(timeout=60,
                                     limits=httpx.Limits(max_connections=40)) as c:
            async def one() -> None:
                async with c.stream("POST", demo.url + "/aduib_rpc/v2/rpc/stream", json=body,
                                    headers={"accept-encoding": "zstd"}) as r:
                    assert r.status_code == 200
                    assert r.headers["content-encoding"] == "zstd"
                    raw = b"".join([chunk async for chunk in r.aiter_raw()])
                frames = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
                assert frames.count(b"event: ") >= 20

            await one()  # warm-up: imports, first contexts
            before = rss(demo)
            for _ in range(12):
                async with anyio.create_task_group() as tg:
                    for _ in range(40):
                        tg.start_soon(one)
            grown = rss(demo) - before
    assert grown < 40 * MIB, f"RSS grew {grown / MIB:.0f} MiB over 480 zstd streams"


async def test_refused_zstd_bomb_flood_gives_memory_back() -> None:
    """40 concurrent 1 GiB zstd bombs (32 KB each), twice: each is refused
    with 413 and nothing stays held (before: ~16 MiB per bomb until a GC pass,
    plus 256 KiB leaked per bomb)."""
    z = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = b"\0" * (64 * MIB)
    bomb = b"".join(z.compress(zeros) for _ in range(16)) + z.flush()
    with running_demo() as demo:
        async def flood() -> None:
            async with httpx.AsyncClient(timeout=60,
                                         limits=httpx.Limits(max_connections=40)) as c:
                async def one() -> None:
                    r = await c.post(demo.url + "/aduib_rpc/v2/rpc", content=bomb, headers={
                        "content-type": "application/json", "content-encoding": "zstd",
                        "connection": "close"})
                    assert r.status_code == 413 and r.json()["error"]["code"] == 2004

                async with anyio.create_task_group() as tg:
                    for _ in range(40):
                        tg.start_soon(one)

        await flood()  # warm-up
        before = rss(demo)
        for _ in range(2):
            await flood()
        grown = rss(demo) - before
    assert grown < 60 * MIB, f"RSS grew {grown / MIB:.0f} MiB over 80 refused bombs"


async def test_distinct_error_codes_keep_the_metrics_text_bounded() -> None:
    """200 `Echo/fail` calls with distinct codes outside the error table: one `other`
    series (before, each code added a histogram series: ~3 KB of text per code)."""
    with running_demo() as demo:
        async with httpx.AsyncClient(timeout=60) as c:
            metrics = demo.url + "/aduib_rpc/metrics"

            async def fail(code: int) -> None:
                r = await c.post(demo.url + "/aduib_rpc/v2/rpc", json={
                    "aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/fail",
                    "data": {"code": code}})
                assert r.json()["error"]["code"] == code

            await fail(5100)
            before = len((await c.get(metrics)).content)
            for start in range(5101, 5301, 50):
                async with anyio.create_task_group() as tg:
                    for code in range(start, start + 50):
                        tg.start_soon(fail, code)
            text = (await c.get(metrics)).text
    grown = len(text) - before
    assert grown < 4096, f"metrics text grew {grown} bytes over 200 distinct codes"
    assert 'rpc_aduib_rpc_code="other"' in text and 'rpc_aduib_rpc_code="5101"' not in text
