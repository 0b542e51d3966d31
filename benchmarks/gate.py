"""Cost of the gate, the identity scope and the cancel registry on calls that never use them.

In-process, minimum of many short rounds (robust on a noisy shared machine):
each layer's not-triggered path around a no-op app, and a unary ``Echo/echo``
through the whole demo app (every layer, cancel registration included).
Runs on any checkout with the same public API, so a before/after comparison is

    PYTHONPATH=/path/to/old/checkout python benchmarks/gate.py
    python benchmarks/gate.py

``--redis URL`` adds the demo app with the cross-instance cancel bus on that
Redis (the bus is idle unless a cancel misses locally: the figure should match).
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


async def rounds(app: Callable[..., Any], n: int, reps: int) -> float:
    """Minimum µs per request over ``reps`` rounds of ``n`` requests."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    base = scope()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()  # CPU time: time spent descheduled does not count
        for _ in range(n):
            await app(dict(base), receive, send)
        best = min(best, (time.thread_time() - t0) / n * 1e6)
    return best


def layers() -> dict[str, Callable[..., Any]]:
    from aduib_asgi.middleware.admission import AdmissionMiddleware
    from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware

    policy = RateLimitPolicy("other", "10/second", methods=("rpc.v2/Other/x",))
    return {
        "no-op app": noop,
        "tenant (no tenant)": TenantScopeMiddleware(noop),
        "ratelimit (no policy matches)": RateLimitMiddleware(noop, policies=[policy]),
        "admission (no limits)": AdmissionMiddleware(noop),
    }


def demo(redis: str | None = None) -> Callable[..., Any]:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    return build_demo_app(DemoConfig(env="prod", redis_url=redis))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    apps = layers()
    apps["demo app: unary Echo/echo"] = demo()
    if args.redis:
        from contextlib import AsyncExitStack

        app = demo(args.redis)
        apps["demo app --redis: unary Echo/echo"] = app
        stack = AsyncExitStack()
        dispatcher: Any = app
        while not hasattr(dispatcher, "lifespan_hooks"):
            dispatcher = dispatcher.app
        for hook in dispatcher.lifespan_hooks:
            await stack.enter_async_context(hook())
    for name, app in apps.items():
        await rounds(app, 200, 2)  # warm-up
        print(f"{name:40s} {await rounds(app, args.n, args.reps):7.2f} µs/request (min)")
    if args.redis:
        await stack.aclose()


if __name__ == "__main__":
    asyncio.run(main())
