"""Memory of a real ``aduib-asgi demo`` process under hostile load (issue 13 items 2(c)-(e)).

Run: ``.venv/bin/python benchmarks/memory_soak.py {sse,bombs,codes} [options]``

- ``sse``: ``--streams`` ``Echo/stream`` (20 items) SSE responses, ``--concurrency``
  at a time, with ``Accept-Encoding: --encoding`` (zstd: httpx's default); RSS
  before and after.
- ``bombs``: ``--concurrency`` concurrent zstd bombs of 1 GiB (32 KB on the wire),
  ``--rounds`` times; RSS before and after each round (each bomb is refused 413).
- ``codes``: ``--streams`` ``Echo/fail`` calls with distinct codes outside the
  error table; size of the ``/aduib_rpc/metrics`` text before and after.

``--cwd DIR`` starts the demo from another checkout (e.g. ``git archive main``
unpacked there) to measure the code before a change with the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import zstandard


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS")


def start_demo(cwd: str | None, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The demo on a free port, its output to ``log``; (process, base URL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port",
             "0", "--env", "prod"], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("listening on http://"):
                return proc, line.split()[-1]
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the demo did not start: " + log.read_text(errors="replace")[-500:])


async def sse(url: str, pid: int, a: argparse.Namespace) -> None:
    body = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/stream", "data": {"count": 20}}
    limits = httpx.Limits(max_connections=a.concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        async def one() -> None:
            async with c.stream("POST", url + "/aduib_rpc/v2/rpc/stream", json=body,
                                headers={"accept-encoding": a.encoding}) as r:
                assert r.status_code == 200
                async for _ in r.aiter_raw():
                    pass

        print(f"RSS before: {rss_mb(pid)} MB")
        t0 = time.monotonic()
        for done in range(0, a.streams, a.concurrency):
            await asyncio.gather(*(one() for _ in range(min(a.concurrency, a.streams - done))))
        print(f"RSS after {a.streams} {a.encoding} streams: {rss_mb(pid)} MB "
              f"({time.monotonic() - t0:.0f} s)")


async def bombs(url: str, pid: int, a: argparse.Namespace) -> None:
    z = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = b"\0" * (64 * 1024 * 1024)
    bomb = b"".join(z.compress(zeros) for _ in range(16)) + z.flush()
    print(f"bomb: {len(bomb)} bytes -> 1 GiB; RSS before: {rss_mb(pid)} MB")
    for n in range(a.rounds):
        async with httpx.AsyncClient(timeout=60) as c:
            async def one() -> int:
                r = await c.post(url + "/aduib_rpc/v2/rpc", content=bomb, headers={
                    "content-type": "application/json", "content-encoding": "zstd",
                    "connection": "close"})
                return r.status_code

            codes = await asyncio.gather(*(one() for _ in range(a.concurrency)))
        print(f"round {n + 1}: {a.concurrency} bombs -> {sorted(set(codes))}; "
              f"RSS {rss_mb(pid)} MB")


async def codes(url: str, pid: int, a: argparse.Namespace) -> None:
    sem = asyncio.Semaphore(a.concurrency)
    async with httpx.AsyncClient(timeout=60) as c:
        async def fail(code: int) -> None:
            async with sem:
                await c.post(url + "/aduib_rpc/v2/rpc", json={
                    "aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/fail",
                    "data": {"code": code}})

        before = len((await c.get(url + "/aduib_rpc/metrics")).content)
        await asyncio.gather(*(fail(5100 + i) for i in range(a.streams)))
        after = len((await c.get(url + "/aduib_rpc/metrics")).content)
    print(f"metrics text: {before} -> {after} bytes after {a.streams} distinct codes; "
          f"RSS {rss_mb(pid)} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["sse", "bombs", "codes"])
    p.add_argument("--streams", type=int, default=3000, help="streams (sse) or calls (codes)")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--encoding", default="zstd")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cwd", default=None, help="start the demo from this checkout")
    p.add_argument("--log", type=Path,
                   default=Path(tempfile.gettempdir()) / "memory-soak-demo.log",
                   help="the demo's output")
    a = p.parse_args()
    proc, url = start_demo(a.cwd, a.log)
    try:
        run = {"sse": sse, "bombs": bombs, "codes": codes}[a.what]
        asyncio.run(run(url, proc.pid, a))
    finally:
        proc.terminate()
        proc.wait(timeout=15)


if __name__ == "__main__":
    main()
