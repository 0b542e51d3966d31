"""Per-request overhead of RateLimitMiddleware and IdempotencyMiddleware (admitted path).

Every case wraps the same bare Starlette app and is driven in-process (scope,
receive and send built by the driver, no network for the app itself), in
alternating rounds (forward, then backward) so that machine noise hits every
case alike. Reported: median µs/request over the rounds, ratio to the bare app,
and overhead over each case's yardstick as the median of per-round differences.

Cases: bare app; a no-op pure-ASGI layer; ``limits.aio`` (fixed window) called
directly in a minimal pure-ASGI layer, ``hit`` alone and ``hit`` +
``get_window_stats`` (the remaining quota and reset the RateLimit headers
report); RateLimitMiddleware behind a layer that already created the context
(its marginal cost in a stack); slowapi (``SlowAPIMiddleware`` and
``SlowAPIASGIMiddleware``, default limit, memory storage); RateLimitMiddleware
(fixed window) on memory and on Redis; limits.aio direct on Redis;
IdempotencyMiddleware without a key, with a fresh key (reserve, run, store) and
replaying, on memory and on Redis. Redis: ``--redis URL``, else a
``redis-server`` from PATH is started on a free port (skipped when absent).

    .venv/bin/python benchmarks/ratelimit_idempotency.py [--rounds 15] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.bench.apps import NoopLayer  # the no-op yardstick, shared
from aduib_asgi.context import run_with_context
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy, make_limiter

BIG = "1000000000/minute"  # never refuses: the admitted path is measured


def bare_app() -> Starlette:
    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"pong": True})

    return Starlette(routes=[Route("/ping", ping, methods=["POST"])])



class LimitsDirect:
    """limits.aio fixed window per request, nothing else (the library's own cost).

    ``stats=True`` also asks limits for the window stats (remaining, reset): the
    second call any layer that reports the quota (RateLimit headers) must make.
    """

    def __init__(self, app: ASGIApp, storage: str, stats: bool = False) -> None:
        from limits import parse

        self.app = app
        self.item = parse(BIG)
        self.limiter = make_limiter(storage, "fixed-window")
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ids = ("bench", scope["client"][0])
            if not await self.limiter.hit(self.item, *ids):
                raise RuntimeError("refused")
            if self.stats:
                await self.limiter.get_window_stats(self.item, *ids)
        await self.app(scope, receive, send)


class ContextSeed:
    """Creates the request context first, as the outer layers of a real stack do."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await run_with_context(self._call, scope, receive, send)

    async def _call(self, scope: Scope, receive: Receive, send: Send, ctx: Any) -> None:
        await self.app(scope, receive, send)


def slowapi_app(asgi: bool) -> ASGIApp:
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
    from slowapi.util import get_remote_address
    from starlette.middleware import Middleware

    app = bare_app()
    app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[BIG])
    app.user_middleware.insert(0, Middleware(SlowAPIASGIMiddleware if asgi
                                             else SlowAPIMiddleware))
    return app


def ratelimit(storage: str, seed: bool = False) -> ASGIApp:
    inner: ASGIApp = bare_app()
    if seed:  # the context exists already: measured against a seeded no-op
        return ContextSeed(ratelimit(storage))
    return RateLimitMiddleware(inner, storage=storage, policies=[
        RateLimitPolicy("bench", BIG, paths=("/ping",), key_by=("client",))])


class Driver:
    """Calls an ASGI app in-process; ``key_mode`` picks the idempotency key per request."""

    def __init__(self, app: ASGIApp, key_mode: str = "none") -> None:
        self.app = app
        self.key_mode = key_mode
        self.seq = 0
        self.status = 0

    async def _receive(self) -> Message:
        return {"type": "http.request", "body": b'{"a":1}', "more_body": False}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]

    async def run(self, n: int) -> tuple[float, float]:
        """(wall, CPU) seconds for ``n`` sequential requests."""
        app, receive, send = self.app, self._receive, self._send
        mode = self.key_mode
        start = time.perf_counter()
        cpu = time.thread_time()
        for _ in range(n):
            self.seq += 1
            key = b"fixed" if mode == "replay" else b"%d" % self.seq
            name = b"x-seq" if mode == "none" else b"idempotency-key"
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "POST", "scheme": "http", "path": "/ping", "raw_path": b"/ping",
                "query_string": b"", "root_path": "", "server": ("bench", 80),
                "client": ("127.0.0.1", 50000),
                "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                            (name, key)],
            }
            await app(scope, receive, send)
        elapsed = time.perf_counter() - start, time.thread_time() - cpu
        if self.status != 200:
            raise RuntimeError(f"the bench expected 200, got {self.status}")
        return elapsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis() -> tuple[str | None, subprocess.Popen[bytes] | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.mkdtemp()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(8).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    return None, None


def cases(redis_url: str | None) -> list[tuple[str, str, Callable[[], Driver], int]]:
    """(name, compare-to, driver factory, requests per round)."""
    out: list[tuple[str, str, Callable[[], Driver], int]] = [
        ("bare starlette", "", lambda: Driver(bare_app()), 1),
        ("no-op pure-ASGI layer", "bare starlette", lambda: Driver(NoopLayer(bare_app())), 1),
        ("limits.aio direct (memory)", "no-op pure-ASGI layer",
         lambda: Driver(LimitsDirect(bare_app(), "memory://")), 1),
        ("limits.aio direct +stats (memory)", "no-op pure-ASGI layer",
         lambda: Driver(LimitsDirect(bare_app(), "memory://", stats=True)), 1),
        ("seeded ctx + no-op layer", "bare starlette",
         lambda: Driver(ContextSeed(NoopLayer(bare_app()))), 1),
        ("seeded ctx + RateLimit (memory)", "seeded ctx + no-op layer",
         lambda: Driver(ratelimit("memory://", seed=True)), 1),
        ("slowapi SlowAPIMiddleware", "no-op pure-ASGI layer",
         lambda: Driver(slowapi_app(False)), 1),
        ("slowapi SlowAPIASGIMiddleware", "no-op pure-ASGI layer",
         lambda: Driver(slowapi_app(True)), 1),
        ("RateLimitMiddleware (memory)", "no-op pure-ASGI layer",
         lambda: Driver(ratelimit("memory://")), 1),
        ("Idempotency: no key", "no-op pure-ASGI layer",
         lambda: Driver(IdempotencyMiddleware(bare_app())), 1),
        ("seeded ctx + Idempotency: no key", "seeded ctx + no-op layer",
         lambda: Driver(ContextSeed(IdempotencyMiddleware(bare_app()))), 1),
        ("Idempotency: fresh key (memory)", "no-op pure-ASGI layer",
         lambda: Driver(IdempotencyMiddleware(bare_app()), "fresh"), 1),
        ("Idempotency: replay (memory)", "no-op pure-ASGI layer",
         lambda: Driver(IdempotencyMiddleware(bare_app()), "replay"), 1),
    ]
    if redis_url is not None:
        url = redis_url
        out += [
            ("limits.aio direct (redis)", "no-op pure-ASGI layer",
             lambda: Driver(LimitsDirect(bare_app(), url)), 8),
            ("limits.aio direct +stats (redis)", "no-op pure-ASGI layer",
             lambda: Driver(LimitsDirect(bare_app(), url, stats=True)), 8),
            ("RateLimitMiddleware (redis)", "no-op pure-ASGI layer",
             lambda: Driver(ratelimit(url)), 8),
            ("Idempotency: fresh key (redis)", "no-op pure-ASGI layer",
             lambda: Driver(IdempotencyMiddleware(bare_app(), store=url), "fresh"), 8),
            ("Idempotency: replay (redis)", "no-op pure-ASGI layer",
             lambda: Driver(IdempotencyMiddleware(bare_app(), store=url), "replay"), 8),
        ]
    return out


Samples = dict[str, tuple[list[float], list[float]]]


async def measure(redis_url: str | None, rounds: int, n: int) -> Samples:
    built = [(name, cmp, factory(), weight) for name, cmp, factory, weight in cases(redis_url)]
    for _, _, driver, weight in built:  # warm up (imports, caches, connections)
        await driver.run(max(50, n // (10 * weight)))
    samples: Samples = {name: ([], []) for name, *_ in built}
    for r in range(rounds):  # forward, then backward: drift hits every case alike
        for name, _, driver, weight in (built if r % 2 == 0 else built[::-1]):
            k = max(20, n // weight)
            wall, cpu = await driver.run(k)
            samples[name][0].append(wall / k * 1e6)
            samples[name][1].append(cpu / k * 1e6)
    return samples


def table(samples: Samples, redis_url: str | None) -> str:
    """Overheads use CPU time (immune to other processes on a loaded machine).

    An overhead is the median of the per-round differences (cases alternate
    within a round, so a noisy neighbour hits both sides of a pair alike).
    """
    med = {name: statistics.median(v[1]) for name, v in samples.items()}
    wall = {name: statistics.median(v[0]) for name, v in samples.items()}

    def over(name: str, ref: str) -> float:
        return statistics.median(a - b for a, b in zip(samples[name][1], samples[ref][1],
                                                            strict=True))

    bare = med["bare starlette"]
    lines = [f"{'case':36} {'wall':>8} {'cpu':>8} {'ratio':>6} {'overhead':>9}  over",
             "-" * 100]
    for name, cmp, _f, _w in cases(redis_url):
        m = med[name]
        text = f"{over(name, cmp):+9.2f}  {cmp}" if cmp else ""
        lines.append(f"{name:36} {wall[name]:8.2f} {m:8.2f} {m / bare:6.2f} {text}")
    noop = "no-op pure-ASGI layer"
    rl = over("RateLimitMiddleware (memory)", noop)
    hit = over("limits.aio direct (memory)", noop)
    hit_stats = over("limits.aio direct +stats (memory)", noop)
    seeded = over("seeded ctx + RateLimit (memory)", "seeded ctx + no-op layer")
    slow = over("slowapi SlowAPIMiddleware", noop)
    slow_asgi = over("slowapi SlowAPIASGIMiddleware", noop)
    lines += [
        "",
        f"in a stack (context already there): RateLimit(memory) {seeded:+.2f} µs; "
        f"limits.aio hit {hit:+.2f}, hit + get_window_stats {hit_stats:+.2f} µs",
        f"  vs limits' hit alone: {seeded - hit:+.2f} µs (target <= +2; "
        "a bare hit reports no remaining quota)",
        f"  vs limits' hit + get_window_stats (what the RateLimit headers need): "
        f"{seeded - hit_stats:+.2f} µs",
        f"alone (creating the context): RateLimit(memory) - limits.aio hit: {rl - hit:+.2f} µs",
        "RateLimitMiddleware(memory) overhead as a share of slowapi's: "
        f"SlowAPIMiddleware {rl / slow:.2f}, SlowAPIASGIMiddleware {rl / slow_asgi:.2f}",
    ]
    if redis_url is not None:
        rlr = over("RateLimitMiddleware (redis)", noop)
        limr = over("limits.aio direct (redis)", noop)
        limr_stats = over("limits.aio direct +stats (redis)", noop)
        lines.append(f"RateLimitMiddleware(redis) - limits.aio hit(redis): {rlr - limr:+.2f} µs; "
                     f"- hit + get_window_stats(redis): {rlr - limr_stats:+.2f} µs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("-n", type=int, default=500, help="requests per round (memory cases)")
    parser.add_argument("--redis", default=None, help="Redis URL (default: start redis-server)")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    proc: Any = None
    url = args.redis
    if url is None and not args.no_redis:
        url, proc = start_redis()
        if url is None:
            print("redis-server not found: Redis cases skipped", file=sys.stderr)
    try:
        samples = asyncio.run(measure(url, args.rounds, args.n))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds; medians of µs/request "
          "(wall and CPU time); ratio and overhead on CPU time")
    print(table(samples, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
