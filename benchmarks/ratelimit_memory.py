"""memory:// rate-limit hit under a server-like loop: limits.aio's memory storage vs ours.

The bench's in-process driver never lets the event loop run between requests, so it
cannot see what ``limits.aio``'s memory storage does under a server: it schedules an
expiry task whenever the previous one has run (once per request) and that task scans
every bucket. Here each hit is followed by ``await asyncio.sleep(0)``, as a server's
loop runs between requests; the loop's own ``sleep(0)`` cost is subtracted::

    .venv/bin/python benchmarks/ratelimit_memory.py [--hits 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

from aduib_asgi.middleware.ratelimit import _keyed, make_limiter
from aduib_asgi.storage.ratelimit import quota_for


async def per_hit(quota: Any, item: Any, hits: int, keys: list[str]) -> float:
    t = time.perf_counter()
    for i in range(hits):
        await quota.hit(item, ("p", keys[i % len(keys)]), 1)
        await asyncio.sleep(0)
    return (time.perf_counter() - t) / hits * 1e6


async def idle(hits: int) -> float:
    t = time.perf_counter()
    for _ in range(hits):
        await asyncio.sleep(0)
    return (time.perf_counter() - t) / hits * 1e6


async def main(hits: int, rounds: int) -> None:
    item = _keyed(parse("1000000000/minute"))
    print("µs per admitted hit (median of rounds, the loop's sleep(0) subtracted)")
    for nkeys in (1, 1000):
        keys = [f"tenant-{i}" for i in range(nkeys)]
        theirs = quota_for(FixedWindowRateLimiter(MemoryStorage()))
        ours = quota_for(make_limiter("memory://"))
        a: list[float] = []
        b: list[float] = []
        for _ in range(rounds):
            base = await idle(hits)
            a.append(await per_hit(theirs, item, hits, keys) - base)
            b.append(await per_hit(ours, item, hits, keys) - base)
        print(f"  {nkeys:5d} live buckets: limits.aio MemoryStorage {statistics.median(a):7.2f}"
              f"   memory:// (limits' sync storage) {statistics.median(b):7.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hits", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    try:
        import uvloop
        uvloop.run(main(args.hits, args.rounds))
    except ImportError:
        asyncio.run(main(args.hits, args.rounds))
