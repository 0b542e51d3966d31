"""Several instances as one service (issue 17): what the cross-instance parts cost.

1. In-process: a unary ``Echo/echo`` through the demo app with the cross-instance
   cancel bus installed (listening on Redis) vs the same app without it, in
   alternating rounds (``benchmarks/gate.py``'s method): a call that is never
   cancelled makes no Redis round trip, so the difference should be ~0.
2. Real processes: requests/s of 1 vs 2 ``aduib-asgi demo`` instances on the same
   Redis, from one load process (a raw keep-alive HTTP/1.1 client on asyncio,
   ``--connections`` connections spread over the instances), for ``Echo/echo``
   (no Redis) and idempotent ``Counter/incr`` (each call its own key: a reserve,
   a complete and the budget's charges in Redis). Rounds alternate 1 and 2
   instances; medians. On a 2-core machine the client, the instances and Redis
   share the cores, so the ratio says what a second instance costs or gives here,
   not what it gives on separate hosts.

    python benchmarks/multi_instance.py            # starts its own redis-server
    python benchmarks/multi_instance.py --redis redis+cluster://127.0.0.1:7000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gate  # benchmarks/gate.py: paired rounds, the demo app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install redis-server) or pass --redis")
    port, tmp = _free_port(), tempfile.mkdtemp(prefix="aduib-bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def demo_process(redis: str) -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod", "--redis", redis],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("listening on http") or not line:
                break
        if not line.startswith("listening on http://127.0.0.1:"):
            raise RuntimeError(f"the demo did not start: {line!r}")
        port = int(line.rsplit(":", 1)[1].strip().strip("/"))
        # keep reading its output so it never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in proc.stdout or ()],
                         daemon=True).start()
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _request(port: int, method: str, n: int, worker: int) -> bytes:
    if method == "incr":
        body = b'{"aduib_rpc":"2.0","id":"b","method":"rpc.v2/Counter/incr","data":{"by":1}}'
        extra = f"idempotency-key: k-{worker}-{n}-{time.monotonic_ns()}\r\n"
    else:
        body = b'{"aduib_rpc":"2.0","id":"b","method":"rpc.v2/Echo/echo","data":{"x":1}}'
        extra = ""
    head = (f"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n")
    return head.encode() + body


async def _worker(addr: tuple[str, int], method: str, stop: float, worker: int,
                  counts: dict[int, int]) -> int:
    reader, writer = await asyncio.open_connection(*addr)
    done = 0
    try:
        while time.monotonic() < stop:
            writer.write(_request(addr[1], method, done, worker))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[status] = counts.get(status, 0) + 1
            done += 1
    finally:
        writer.close()
    return done


async def load(addrs: list[tuple[str, int]], method: str, connections: int,
               seconds: float) -> tuple[float, dict[int, int]]:
    counts: dict[int, int] = {}
    stop = time.monotonic() + seconds
    t0 = time.monotonic()
    done = await asyncio.gather(*(_worker(addrs[i % len(addrs)], method, stop, i, counts)
                                  for i in range(connections)))
    return sum(done) / (time.monotonic() - t0), counts


async def bus_cost(redis: str, n: int, reps: int) -> None:
    from contextlib import AsyncExitStack

    from aduib_asgi.streaming.cancel_bus import install_cancel_bus

    plain, with_bus = gate.demo(), gate.demo()
    dispatcher: Any = with_bus
    while not hasattr(dispatcher, "lifespan_hooks"):
        dispatcher = dispatcher.app
    install_cancel_bus(dispatcher, redis)
    async with AsyncExitStack() as stack:
        for hook in dispatcher.lifespan_hooks:
            await stack.enter_async_context(hook())
        base, _ = await gate.paired(plain, plain, n, reps // 2)
        best, delta = await gate.paired(with_bus, plain, n, reps)
    print(f"{'unary Echo/echo, demo app, no cancel bus':52s} {base:9.2f} µs (min CPU/request)")
    print(f"{'unary Echo/echo, demo app + cancel bus':52s} {best:9.2f} µs")
    print(f"{'  difference (median of paired rounds)':52s} {delta:+9.2f} µs "
          f"({delta / base * 100:+.1f} %)")


async def throughput(redis: str, connections: int, seconds: float, rounds: int) -> None:
    with demo_process(redis) as one, demo_process(redis) as two:
        for method in ("echo", "incr"):  # warm both
            await load([one, two], method, 4, 0.5)
        print(f"\n{'requests/s (median of ' + str(rounds) + ' rounds)':34s} "
              f"{'1 instance':>11s} {'2 instances':>12s} {'ratio':>7s}   statuses")
        for method in ("echo", "incr"):
            single: list[float] = []
            double: list[float] = []
            statuses: dict[int, int] = {}
            for i in range(rounds):
                order = ((1, single), (2, double)) if i % 2 == 0 else ((2, double), (1, single))
                for k, out in order:
                    rate, counts = await load([one, two][:k], method, connections, seconds)
                    out.append(rate)
                    for s, c in counts.items():
                        statuses[s] = statuses.get(s, 0) + c
            s1, s2 = statistics.median(single), statistics.median(double)
            name = "Echo/echo" if method == "echo" else "Counter/incr + idempotency key"
            print(f"{name:34s} {s1:11.0f} {s2:12.0f} {s2 / s1:7.2f}   "
                  f"{dict(sorted(statuses.items()))}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=None, help="a Redis URL (default: start one)")
    parser.add_argument("--n", type=int, default=250, help="calls per in-process round")
    parser.add_argument("--reps", type=int, default=30, help="in-process rounds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="per load round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.redis:
        await bus_cost(args.redis, args.n, args.reps)
        await throughput(args.redis, args.connections, args.seconds, args.rounds)
        return
    with redis_server() as url:
        await bus_cost(url, args.n, args.reps)
        await throughput(url, args.connections, args.seconds, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
