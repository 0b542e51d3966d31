"""Cost of the gate, the identity scope and the cancel registry on calls that never use them.

In-process, minimum of many short rounds (robust on a noisy shared machine):
each layer's not-triggered path around a no-op app, and a unary ``Echo/echo``
through the whole demo app (every layer, cancel registration included).
Runs on any checkout with the same public API, so a before/after comparison is

    PYTHONPATH=/path/to/old/checkout python benchmarks/gate.py
    python benchmarks/gate.py

``--redis URL`` compares the demo app with the cross-instance cancel bus on that
Redis against the same app without it, in alternating rounds (the bus is idle
unless a cancel misses locally: the difference should be ~0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
BODY = json.dumps({"aduib_rpc": "2.0", "id": "b1", "method": "rpc.v2/Echo/echo",
                   "data": {"msg": "hello"}}).encode()


def scope(path: str = "/aduib_rpc/v2/rpc") -> Scope:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(BODY)).encode())]}


async def noop(scope: Scope, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _round(app: Callable[..., Any], n: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    base = scope()
    t0 = time.thread_time()  # CPU time: time spent descheduled does not count
    for _ in range(n):
        await app(dict(base), receive, send)
    return (time.thread_time() - t0) / n * 1e6


async def paired(case: Callable[..., Any], ref: Callable[..., Any], n: int,
                 reps: int) -> tuple[float, float]:
    """(min µs/request of ``case``, median of the per-round differences to ``ref``).

    Rounds alternate case/ref (A-B-B-A), so drift and neighbours hit both alike.
    """
    await _round(case, 200)
    await _round(ref, 200)
    diffs: list[float] = []
    best = float("inf")
    for i in range(reps):
        if i % 2:
            b = await _round(ref, n)
            a = await _round(case, n)
        else:
            a = await _round(case, n)
            b = await _round(ref, n)
        best = min(best, a)
        diffs.append(a - b)
    diffs.sort()
    return best, diffs[len(diffs) // 2]


async def calls_per_request(app: Callable[..., Any], n: int = 1000) -> float:
    """Python function calls per request (cProfile): deterministic, unlike timings."""
    import cProfile
    import pstats

    await _round(app, 100)
    profile = cProfile.Profile()
    profile.enable()
    await _round(app, n)
    profile.disable()
    return sum(v[1] for v in pstats.Stats(profile).stats.values()) / n  # type: ignore[attr-defined]


def layers() -> dict[str, Callable[..., Any]]:
    from aduib_asgi.middleware.admission import AdmissionMiddleware
    from aduib_asgi.middleware.auth import AuthMiddleware
    from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
    from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware

    policy = RateLimitPolicy("other", "10/second", methods=("rpc.v2/Other/x",))
    return {
        "no-op app": noop,
        "tenant (no tenant)": TenantScopeMiddleware(noop),
        "ratelimit (no policy matches)": RateLimitMiddleware(noop, policies=[policy]),
        "admission (no limits)": AdmissionMiddleware(noop),
        "auth (anonymous, no rules)": AuthMiddleware(noop),
        "idempotency (no key)": IdempotencyMiddleware(noop),
    }


def demo(redis: str | None = None) -> Callable[..., Any]:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    return build_demo_app(DemoConfig(env="prod", redis_url=redis))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--demo-only", action="store_true", help="only the demo app's figure")
    args = parser.parse_args()
    cases = {} if args.demo_only else layers()
    noop_app = cases.pop("no-op app", noop)
    print(f"{'case':44s} {'min µs':>8s} {'Δ vs ref (median of paired rounds)':>36s}")
    for name, app in cases.items():
        best, delta = await paired(app, noop_app, args.n, args.reps)
        print(f"{name:44s} {best:8.2f} {delta:+10.2f} µs vs no-op app")
    plain = demo()
    if not args.redis:
        best, _ = await paired(plain, plain, args.n // 4, args.reps // 2)
        print(f"{'demo app: unary Echo/echo':44s} {best:8.2f}   "
              f"({await calls_per_request(plain):.0f} function calls per request)")
        return
    from contextlib import AsyncExitStack

    from aduib_asgi.streaming.cancel_bus import install_cancel_bus

    with_bus = demo()
    dispatcher: Any = with_bus
    while not hasattr(dispatcher, "lifespan_hooks"):
        dispatcher = dispatcher.app
    install_cancel_bus(dispatcher, args.redis)
    async with AsyncExitStack() as stack:
        for hook in dispatcher.lifespan_hooks:
            await stack.enter_async_context(hook())
        best, delta = await paired(with_bus, plain, args.n // 4, args.reps)
        print(f"{'demo app + cancel bus: unary Echo/echo':44s} {best:8.2f} {delta:+10.2f} µs "
              "vs the demo app without the bus")
        print(f"function calls per request: {await calls_per_request(plain):.0f} without the "
              f"bus, {await calls_per_request(with_bus):.0f} with it")


if __name__ == "__main__":
    asyncio.run(main())
