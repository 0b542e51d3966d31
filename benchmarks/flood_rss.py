"""RSS of a real ``aduib-asgi demo`` process under a flood of stored client-driven state.

Issue 13 item 2: (a) task submissions of ``Echo/big`` whose results are kept for
the record TTL; (b) ``Echo/big`` calls with distinct ``Idempotency-Key`` values,
each response stored for replay. Starts the demo on a free port (extra demo
arguments after ``--``), runs the flood, prints the process's RSS before and after.

    .venv/bin/python benchmarks/flood_rss.py tasks --count 20 --size 67108864
    .venv/bin/python benchmarks/flood_rss.py idem --count 2000 --size 1000000
    .venv/bin/python benchmarks/flood_rss.py idem --count 2000 --size 1000000 -- \
        --redis redis://127.0.0.1:6379/0      # also prints Redis's used_memory

``--src DIR`` runs the demo from another source tree (e.g. an export of main)
with this interpreter, to compare before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import httpx


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


_FROM_SRC = (
    "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    "sys.path.insert(0, sys.argv.pop(1)); from aduib_asgi.cli import main; sys.exit(main())"
)


def redis_mb(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"]) / 1024.0 / 1024.0
    finally:
        client.close()


def start_demo(extra: list[str], src: str | None = None) -> tuple[subprocess.Popen[str], str]:
    launcher = [sys.executable, "-c", _FROM_SRC, src] if src else [
        sys.executable, "-m", "aduib_asgi.cli"]
    proc = subprocess.Popen(
        [*launcher, "demo", "--host", "127.0.0.1", "--port", "0", "--env", "prod",
         "--no-access-log", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on http://"):
            return proc, line.split()[-1]
        if not line:
            break
    proc.kill()
    raise RuntimeError("demo did not start")


async def flood_tasks(url: str, count: int, size: int, tenants: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        ids = []
        for i in range(count):
            r = await c.post("/aduib_rpc/v2/TaskService/Submit",
                             headers={"X-Tenant-ID": f"t{i % tenants}"},
                             json={"target_method": "rpc.v2/Echo/big", "params": {"size": size}})
            statuses[r.status_code] += 1
            if r.status_code == 200:
                ids.append((r.json()["task_id"], f"t{i % tenants}"))
        # wait until every admitted task finished (its result is then stored)
        for tid, tenant in ids:
            for _ in range(600):
                q = await c.post("/aduib_rpc/v2/TaskService/Query",
                                 headers={"X-Tenant-ID": tenant}, json={"task_id": tid})
                if q.status_code != 200 or q.json()["task"]["status"] in (
                        "succeeded", "failed", "canceled"):
                    if q.status_code == 200:
                        statuses[1000 + ("succeeded", "failed", "canceled").index(
                            q.json()["task"]["status"])] += 1
                    break
                await asyncio.sleep(0.1)
    return statuses


async def flood_idem(url: str, count: int, size: int, tenants: int,
                     concurrency: int = 8) -> Counter[int]:
    statuses: Counter[int] = Counter()
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        async def one(i: int) -> None:
            async with sem:
                r = await c.post("/aduib_rpc/v2/rpc",
                                 headers={"Idempotency-Key": uuid.uuid4().hex,
                                          "X-Tenant-ID": f"t{i % tenants}"},
                                 json={"aduib_rpc": "2.0", "id": str(i),
                                       "method": "rpc.v2/Echo/big", "data": {"size": size}})
                statuses[r.status_code] += 1
        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("tasks", "idem"))
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=64 * 1024 * 1024)
    p.add_argument("--tenants", type=int, default=1)
    p.add_argument("--src", default=None, help="run the demo from this source tree")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.demo_args = extra  # after "--": arguments for `aduib-asgi demo`
    redis_url = a.demo_args[a.demo_args.index("--redis") + 1] if "--redis" in a.demo_args \
        else None
    proc, url = start_demo(a.demo_args, a.src)
    # keep draining its output: a full pipe would block the server's logging
    threading.Thread(target=proc.stdout.read if proc.stdout else None, daemon=True).start()
    try:
        time.sleep(0.5)
        redis_before = redis_mb(redis_url) if redis_url else 0.0
        before = rss_mb(proc.pid)
        t0 = time.monotonic()
        fn = flood_tasks if a.kind == "tasks" else flood_idem
        statuses = asyncio.run(fn(url, a.count, a.size, a.tenants))
        time.sleep(1.0)
        after = rss_mb(proc.pid)
        print(f"{a.kind}: count={a.count} size={a.size} tenants={a.tenants} "
              f"demo_args={a.demo_args} took {time.monotonic() - t0:.1f} s")
        print(f"  statuses: {dict(sorted(statuses.items()))} "
              "(1000/1001/1002: tasks succeeded/failed/canceled)")
        print(f"  RSS before {before:.0f} MB, after {after:.0f} MB "
              f"(+{after - before:.0f} MB)")
        if redis_url:
            redis_after = redis_mb(redis_url)
            print(f"  Redis used_memory before {redis_before:.0f} MB, after {redis_after:.0f} MB "
                  f"(+{redis_after - redis_before:.0f} MB)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
