"""Slow-header flood against a running server: does a probe still answer?

    python benchmarks/slow_heads.py --port 8000 --connections 19900 --hold 30

Opens ``--connections`` connections that each send half a request head and then
nothing, probes ``Echo/echo`` on a fresh connection every second for ``--hold``
seconds, and prints how many stalled connections the server still holds and
whether each probe was answered (and how fast).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

BODY = json.dumps({"aduib_rpc": "2.0", "id": "p", "method": "rpc.v2/Echo/echo",
                   "data": {"n": 1}}).encode()
PROBE = (b"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _stall(host: str, port: int) -> Conn | None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nHost: s\r\nX-Slow: ")
        await writer.drain()
        return reader, writer
    except OSError:
        return None


async def _probe(host: str, port: int) -> str:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(PROBE)
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        ms = 1000 * (time.perf_counter() - started)
        return f"{line.decode().strip() or 'closed'} in {ms:.0f} ms"
    except (TimeoutError, OSError) as exc:
        return f"failed ({type(exc).__name__})"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--hold", type=float, default=30)
    a = p.parse_args()
    started = time.monotonic()
    conns: list[Conn] = []
    for i in range(0, a.connections, 500):
        batch = await asyncio.gather(*(_stall(a.host, a.port)
                                       for _ in range(min(500, a.connections - i))))
        conns += [c for c in batch if c is not None]
    print(f"opened {len(conns)} stalled connections in {time.monotonic() - started:.1f} s")
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.hold:
        # answered (408) or closed: something to read, or EOF
        open_ = sum(1 for r, _ in conns if not (r.at_eof() or r._buffer))
        print(f"t={time.monotonic() - t0:5.1f} s  stalled still open: {open_:6d}  "
              f"probe: {await _probe(a.host, a.port)}", flush=True)
        await asyncio.sleep(1)


if __name__ == "__main__":
    asyncio.run(main())
