"""Soak: a real demo process under mixed load, with a memory bound (issue 14 item 3).

Starts ``aduib-asgi demo --env prod`` with ``ADUIB_DEMO_STATS=1`` (its
``GET /aduib_rpc/debug/stats`` gives RSS, open fds, asyncio tasks and in-flight
registry sizes) and runs ``--requests`` operations from ``--concurrency``
clients, round-robin over:

unary ``Echo/echo``; streams completed, dropped mid-way, cancelled through
``/rpc/cancel``; errors (``Echo/fail`` 4001, the intended ``Echo/crash`` 500,
an unknown method); ``Echo/big`` responses in each coding (gzip, br, zstd, lz4,
snappy) and compressed streams; ``Counter/incr`` with a fresh
``Idempotency-Key``; ``TaskService/Submit``.

Then it holds ``--hold`` concurrent SSE streams (heartbeats every 0.5 s) until
each has seen a heartbeat, drops them all and times how long until every
handler's cleanup ran.

It fails (exit status 1) when

* RSS at the end exceeds RSS after the warm-up (the first 20 % of the requests)
  by more than ``--rss-bound-mb`` (default 64 MB);
* open fds or asyncio tasks, once idle, exceed the idle figures before the load
  by more than 8 (a leak), or an in-flight registry is not empty;
* any response is a 5xx other than the intended ones, or has an unexpected status;
* a dropped held stream's cleanup takes longer than ``--cleanup-bound`` (1 s).

Prints p50/p99 per operation and the RSS curve (start, after warm-up, end);
``--plot OUT.png`` draws it (matplotlib), ``--json OUT.json`` keeps everything.

    make soak                                   # 100,000 requests, 1,000 held streams
    .venv/bin/python benchmarks/soak.py --short # the bounded run of `make test`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

RPC = "/aduib_rpc/v2/rpc"
STREAM = RPC + "/stream"
CANCEL = RPC + "/cancel"
TASKS = "/aduib_rpc/v2/TaskService/"
STATS = "/aduib_rpc/debug/stats"
CODINGS = ("gzip", "br", "zstd", "lz4", "snappy")
#: Accept-Encoding values the streaming operations rotate through (``--stream-codings``).
STREAM_CODINGS: list[str] = ["identity", *CODINGS]


def stream_coding(n: int) -> dict[str, str]:
    return {"accept-encoding": STREAM_CODINGS[(n // 13) % len(STREAM_CODINGS)]}


def readable(r: httpx.Response) -> bool:
    """httpx decodes this response's body (it does not know lz4 or snappy)."""
    return r.headers.get("content-encoding", "identity") in ("identity", "gzip", "br", "zstd")
FD_SLACK = 8
TASK_SLACK = 8


def env(method: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "method": method, **extra}
    if data is not None:
        body["data"] = data
    return body


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    done: int = 0

    def check(self, op: str, status: int, expected: tuple[int, ...]) -> None:
        self.statuses[op][status] += 1
        if status not in expected and len(self.failures) < 50:
            kind = "unintended 5xx" if status >= 500 else "unexpected status"
            self.failures.append(f"{op}: {kind} {status} (expected {expected})")


Op = Callable[[httpx.AsyncClient, Results, int], Awaitable[None]]


async def op_echo(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(RPC, json=env("rpc.v2/Echo/echo", {"n": n}))
    res.check("echo", r.status_code, (200,))


async def op_stream_complete(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(STREAM, json=env("rpc.v2/Echo/stream", {"count": 5}),
                     headers=stream_coding(n))
    res.check("stream_complete", r.status_code, (200,))
    if r.status_code == 200 and readable(r) and b"event: end" not in r.content:
        res.failures.append("stream_complete: no end frame")


async def op_stream_dropped(c: httpx.AsyncClient, res: Results, n: int) -> None:
    async with c.stream("POST", STREAM, json=env("rpc.v2/Echo/stream",
                                                 {"count": 10_000, "interval_ms": 1}),
                        headers=stream_coding(n)) as r:
        res.check("stream_dropped", r.status_code, (200,))
        seen = 0
        async for _ in r.aiter_raw():
            seen += 1
            if seen >= 2:
                break  # leaving the block closes the connection mid-stream


async def op_stream_cancelled(c: httpx.AsyncClient, res: Results, n: int) -> None:
    rid = f"soak-{uuid.uuid4().hex}"
    async with c.stream("POST", STREAM, json=env("rpc.v2/Echo/stream",
                                                 {"count": 10_000, "interval_ms": 2},
                                                 id=rid), headers=stream_coding(n)) as r:
        res.check("stream_cancelled", r.status_code, (200,))
        body = b""
        if not readable(r):  # cannot see the first frame: cancel at once
            body = b"event: data"
        chunks = r.aiter_bytes()  # decoded (httpx asks for zstd, br, gzip)
        async for chunk in chunks:
            body += chunk
            if b"event: data" in body:
                break
        cr = await c.post(CANCEL, json={"id": rid, "reason": "soak"})
        res.check("cancel", cr.status_code, (200,))
        async for chunk in chunks:
            body += chunk
        if readable(r) and (b"event: cancel" not in body or b"event: end" not in body):
            res.failures.append("stream_cancelled: no cancel + end frames")


async def op_fail(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(RPC, json=env("rpc.v2/Echo/fail", {"code": 4001}))
    res.check("fail_4001", r.status_code, (400, 404, 409, 422))


async def op_crash(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(RPC, json=env("rpc.v2/Echo/crash"))
    res.check("crash", r.status_code, (500,))  # intended


async def op_unknown(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(RPC, json=env(f"rpc.v2/No/such{n % 7}"))
    res.check("unknown_method", r.status_code, (404,))


async def op_big_coded(c: httpx.AsyncClient, res: Results, n: int) -> None:
    coding = CODINGS[(n // 13) % len(CODINGS)]
    async with c.stream("POST", RPC, json=env("rpc.v2/Echo/big", {"size": 16384}),
                        headers={"accept-encoding": coding}) as r:
        async for _ in r.aiter_raw():
            pass
    res.check(f"big_{coding}", r.status_code, (200,))
    if r.headers.get("content-encoding") != coding:
        res.failures.append(f"big_{coding}: content-encoding {r.headers.get('content-encoding')}")


async def op_stream_coded(c: httpx.AsyncClient, res: Results, n: int) -> None:
    headers = stream_coding(n)
    async with c.stream("POST", STREAM, json=env("rpc.v2/Echo/stream", {"count": 20}),
                        headers=headers) as r:
        async for _ in r.aiter_raw():
            pass
    res.check(f"stream_{headers['accept-encoding']}", r.status_code, (200,))


async def op_idempotent(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(RPC, json=env("rpc.v2/Counter/incr", {"by": 1}),
                     headers={"idempotency-key": uuid.uuid4().hex})
    res.check("idempotent_incr", r.status_code, (200,))


async def op_task(c: httpx.AsyncClient, res: Results, n: int) -> None:
    r = await c.post(TASKS + "Submit", json={"target_method": "rpc.v2/Echo/echo",
                                             "params": {"n": n}})
    res.check("task_submit", r.status_code, (200,))


OPS: tuple[Op, ...] = (
    op_echo, op_echo, op_echo, op_stream_complete, op_stream_dropped, op_stream_cancelled,
    op_fail, op_crash, op_unknown, op_big_coded, op_stream_coded, op_idempotent, op_task,
)


# -- the process ---------------------------------------------------------------------


#: The demo's last output lines (its log), drained by a thread.
DEMO_LOG: deque[str] = deque(maxlen=200)


def _drain(stream: Any) -> None:
    for line in stream:
        DEMO_LOG.append(line)


def start_demo(extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod", "--heartbeat", "0.5", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ADUIB_DEMO_STATS": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on http://"):
            # keep draining its output: a full pipe would block the server's logging
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError("the demo did not start")


async def stats(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get(STATS, timeout=30)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


async def idle_stats(c: httpx.AsyncClient, baseline: dict[str, Any] | None,
                     wait: float = 10.0) -> dict[str, Any]:
    """Stats once in-flight work has drained (and fds/tasks are back near ``baseline``)."""
    deadline = time.monotonic() + wait
    while True:
        s = await stats(c)
        quiet = (s["inflight_calls"] == 0 and s["echo_streams_open"] == 0
                 and s["task_subscribers"] == 0 and s["tasks_running"] == 0)
        if baseline is not None:
            quiet = quiet and s["open_fds"] <= baseline["open_fds"] + FD_SLACK \
                and s["asyncio_tasks"] <= baseline["asyncio_tasks"] + TASK_SLACK
        if quiet or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.2)


# -- phases ----------------------------------------------------------------------------


async def mixed_load(url: str, ops: tuple[Op, ...], total: int, concurrency: int,
                     res: Results, samples: list[dict[str, Any]], sample_every: float,
                     t0: float, progress: bool = True) -> None:
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c, \
            httpx.AsyncClient(base_url=url, timeout=60) as sc:

        async def worker() -> None:
            for n in counter:
                op = ops[n % len(ops)]
                start = time.perf_counter()
                try:
                    await op(c, res, n)
                except httpx.HTTPError as exc:
                    res.failures.append(f"{op.__name__}: {type(exc).__name__}: {exc}")
                res.latencies[op.__name__.removeprefix("op_")].append(
                    time.perf_counter() - start)
                res.done += 1

        async def sampler() -> None:
            while True:
                s = await stats(sc)
                s["t"] = time.monotonic() - t0
                s["done"] = res.done
                samples.append(s)
                if progress and len(samples) % 10 == 0:
                    print(f"  {res.done}/{total} requests, RSS {s['rss_bytes'] / 2**20:.1f} MiB, "
                          f"fds {s['open_fds']}, tasks {s['asyncio_tasks']}", file=sys.stderr,
                          flush=True)
                await asyncio.sleep(sample_every)

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sampling.cancel()
        s = await stats(sc)
        s["t"], s["done"] = time.monotonic() - t0, res.done
        samples.append(s)


async def hold_and_drop(url: str, n: int, c: httpx.AsyncClient) -> dict[str, Any]:
    """``n`` SSE streams held until each saw a heartbeat, then dropped at once."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(env("rpc.v2/Echo/stream", {"count": 2, "interval_ms": 600_000})).encode()
    request = (f"POST {STREAM} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Accept-Encoding: identity\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        writer.write(request)
        await writer.drain()
        return reader, writer

    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(0, n, 100):  # open in batches (the listen backlog is finite)
        conns += await asyncio.gather(*(one() for _ in range(min(100, n - i))))

    async def heartbeat(reader: asyncio.StreamReader) -> None:
        buf = b""
        while b"event: heartbeat" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("stream ended before a heartbeat")
            buf += chunk

    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(heartbeat(r) for r, _ in conns)), 60)
    held = await stats(c)
    beat_s = time.monotonic() - t0
    for _, w in conns:
        w.transport.abort()  # no FIN handshake niceties: the client just vanishes
    dropped = time.monotonic()
    while True:
        s = await stats(c)
        if s["echo_streams_open"] == 0:
            cleanup_s = time.monotonic() - dropped
            break
        if time.monotonic() - dropped > 30:
            cleanup_s = float("inf")
            break
        await asyncio.sleep(0.02)
    for _, w in conns:
        w.close()
    return {"held": held["echo_streams_open"], "all_beat_within_s": round(beat_s, 2),
            "cleanup_s": round(cleanup_s, 3), "rss_held": held["rss_bytes"]}


# -- report ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def plot(samples: list[dict[str, Any]], warm_done: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s["done"] for s in samples], [s["rss_bytes"] / 2**20 for s in samples],
            label="RSS (MiB)")
    ax.axvline(warm_done, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("requests done")
    ax.set_ylabel("RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot([s["done"] for s in samples], [s["open_fds"] for s in samples], color="tab:orange",
             alpha=0.5, label="open fds")
    ax2.set_ylabel("open fds")
    ax.legend(loc="upper left")
    ax.set_title("aduib-asgi demo soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def soak(args: argparse.Namespace) -> int:
    proc, url = start_demo(args.demo_arg or [])
    res = Results()
    samples: list[dict[str, Any]] = []
    report: dict[str, Any] = {"requests": args.requests, "concurrency": args.concurrency}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            # prime every path once, then take the idle baseline
            for i, op in enumerate(OPS):
                await op(c, Results(), i)
            await asyncio.sleep(0.5)
            base = await idle_stats(c, None)
            report["idle_before"] = base
            t0 = time.monotonic()
            await mixed_load(url, args.op_list, args.requests, args.concurrency, res, samples,
                             args.sample_every, t0)
            elapsed = time.monotonic() - t0
            end = await idle_stats(c, base)
            report["idle_after_load"] = end
            samples.append({**end, "t": time.monotonic() - t0, "done": res.done})
            report["hold"] = hold = await hold_and_drop(url, args.hold, c) if args.hold \
                else None
            final = await idle_stats(c, base)
            report["idle_final"] = final
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    warm_done = int(args.requests * 0.2)
    warm = next((s for s in samples if s["done"] >= warm_done), samples[-1])
    rss0, rss_w, rss_end = base["rss_bytes"], warm["rss_bytes"], end["rss_bytes"]
    growth = rss_end - rss_w
    mb = 2**20
    failures = list(res.failures)
    if growth > args.rss_bound_mb * mb:
        failures.append(f"RSS grew {growth / mb:.1f} MiB after warm-up (bound "
                        f"{args.rss_bound_mb} MiB)")
    for key, slack in (("open_fds", FD_SLACK), ("asyncio_tasks", TASK_SLACK)):
        if final[key] > base[key] + slack:
            failures.append(f"{key} leak: {base[key]} idle before, {final[key]} idle after")
    for key in ("inflight_calls", "echo_streams_open", "task_subscribers", "tasks_running"):
        if final[key]:
            failures.append(f"{key} = {final[key]} once idle (expected 0)")
    if hold is not None:
        if hold["held"] < args.hold:
            failures.append(f"only {hold['held']} of {args.hold} streams were held")
        if hold["cleanup_s"] > args.cleanup_bound:
            failures.append(f"dropped streams' cleanup took {hold['cleanup_s']} s "
                            f"(bound {args.cleanup_bound} s)")
    all_lat = [x for v in res.latencies.values() for x in v]
    report.update({
        "elapsed_s": round(elapsed, 1), "rps": round(args.requests / elapsed, 1),
        "p50_ms": round(pct(all_lat, 0.5) * 1000, 2), "p99_ms": round(pct(all_lat, 0.99) * 1000, 2),
        "per_op": {k: {"n": len(v), "p50_ms": round(pct(v, 0.5) * 1000, 2),
                       "p99_ms": round(pct(v, 0.99) * 1000, 2)} for k, v in res.latencies.items()},
        "statuses": {k: dict(v) for k, v in res.statuses.items()},
        "rss_mib": {"start": round(rss0 / mb, 1), "after_warmup": round(rss_w / mb, 1),
                    "end": round(rss_end / mb, 1),
                    "after_hold": round(final["rss_bytes"] / mb, 1),
                    "peak": round(max(s["rss_bytes"] for s in samples) / mb, 1)},
        "rss_curve": [(s["done"], round(s["rss_bytes"] / mb, 1)) for s in samples],
        "failures": failures,
    })
    print(f"{args.requests} requests, {args.concurrency} clients, {elapsed:.1f} s "
          f"({report['rps']} req/s); p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms")
    for k, v in sorted(report["per_op"].items()):
        print(f"  {k:18} n={v['n']:6}  p50 {v['p50_ms']:8.2f} ms  p99 {v['p99_ms']:8.2f} ms")
    r = report["rss_mib"]
    print(f"RSS MiB: start {r['start']}, after warm-up {r['after_warmup']}, end of load "
          f"{r['end']} (bound +{args.rss_bound_mb} after warm-up), peak {r['peak']}, "
          f"after the held streams {r['after_hold']}")
    print(f"idle before: fds {base['open_fds']}, tasks {base['asyncio_tasks']}; "
          f"idle final: fds {final['open_fds']}, tasks {final['asyncio_tasks']}, "
          f"task records {final['task_records']}, idempotency records "
          f"{final['idempotency_records']}")
    if hold is not None:
        print(f"held {hold['held']} SSE streams (all saw a heartbeat within "
              f"{hold['all_beat_within_s']} s; RSS {hold['rss_held'] / mb:.1f} MiB); "
              f"dropped: every cleanup ran within {hold['cleanup_s']} s")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if args.plot_path:
        plot(samples, warm_done, args.plot_path)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true",
                    help="the bounded run of `make test` (2,000 requests, 1,000 held streams)")
    ap.add_argument("--requests", type=int, default=None, help="default 100,000 (short: 2,000)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--hold", type=int, default=1000, help="SSE streams held then dropped")
    ap.add_argument("--rss-bound-mb", type=float, default=64.0)
    ap.add_argument("--cleanup-bound", type=float, default=1.0)
    ap.add_argument("--sample-every", type=float, default=None, help="seconds (default 1)")
    ap.add_argument("--demo-arg", action="append", help="extra demo flag (repeatable)")
    ap.add_argument("--stream-codings", default=None, metavar="A,B",
                    help="Accept-Encoding values of the streaming operations "
                         "(default: identity and every coding)")
    ap.add_argument("--ops", default=None, metavar="A,B",
                    help="only these operations (e.g. echo,stream_coded: to find what grows)")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--plot", dest="plot_path")
    args = ap.parse_args(argv)
    if args.ops:
        wanted = {f"op_{o.strip()}" for o in args.ops.split(",")}
        args.op_list = tuple(op for op in OPS if op.__name__ in wanted)
        if not args.op_list:
            ap.error(f"no operation among {sorted(op.__name__[3:] for op in OPS)}")
    else:
        args.op_list = OPS
    if args.stream_codings:
        STREAM_CODINGS[:] = [c.strip() for c in args.stream_codings.split(",") if c.strip()]
    if args.requests is None:
        args.requests = 2000 if args.short else 100_000
    if args.sample_every is None:
        args.sample_every = 0.25 if args.short else 1.0
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
