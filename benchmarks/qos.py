"""Per-request overhead of the QoS layers on their not-triggered paths.

Every case wraps the same minimal pure-ASGI app (a 200 with a tiny body) and is
driven in-process: each request gets a fresh scope whose RequestContext already
holds the method (as the content layer leaves it), in alternating rounds so
that machine noise hits every case alike. Reported: median µs/request over the
rounds, the overhead over the bare app and over a no-op pure-ASGI layer, and
the ratio to the bare app — all measured in the same run.

Cases: bare app; no-op pure-ASGI layer; AdmissionMiddleware not saturated (a
method limit and a global limit, both free: two slot acquisitions, the
shutdown cancel scope); AdmissionMiddleware with no limit for the method;
DeadlineMiddleware with no deadline; DeadlineMiddleware with a deadline that
does not expire (cancel scope); CircuitBreakerMiddleware closed.

    .venv/bin/python benchmarks/qos.py [--rounds 15] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.bench.apps import NoopLayer  # the no-op yardstick, shared
from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.middleware import AdmissionMiddleware, CircuitBreakerMiddleware, DeadlineMiddleware

METHOD = "rpc.v2/Bench/op"
_START = {"type": "http.response.start", "status": 200,
          "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]}
_BODY = {"type": "http.response.body", "body": b"{}"}


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_START)
    await send(_BODY)



async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


def _scope(timeout: bytes | None) -> Scope:
    headers = [(b"x-timeout-ms", timeout)] if timeout else []
    ctx = RequestContext(raw_headers=headers)
    ctx.method, ctx.service, ctx.handler = METHOD, "Bench", "op"
    return {"type": "http", "method": "POST", "path": "/aduib_rpc/v2/rpc", "headers": headers,
            CONTEXT_KEY: ctx}


CASES: list[tuple[str, ASGIApp, bytes | None]] = [
    ("bare app", bare, None),
    ("no-op pure-ASGI layer", NoopLayer(bare), None),
    ("admission, not saturated (method+global)",
     AdmissionMiddleware(bare, max_concurrency=10_000, limits={METHOD: 1000}), None),
    ("admission, no limit for the method", AdmissionMiddleware(bare), None),
    ("deadline, none requested", DeadlineMiddleware(bare, max_timeout_ms=None), None),
    ("deadline, 10 s budget (not expiring)", DeadlineMiddleware(bare), b"10000"),
    ("circuit breaker, closed", CircuitBreakerMiddleware(bare), None),
]


async def _round(app: ASGIApp, timeout: bytes | None, n: int) -> float:
    make: Callable[[bytes | None], Scope] = _scope
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await app(make(timeout), _receive, _send)
    return (time.perf_counter_ns() - t0) / n / 1000.0


async def main(rounds: int, requests: int) -> None:
    results: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    for _, app, timeout in CASES:  # warm-up
        await _round(app, timeout, 500)
    for _ in range(rounds):
        for name, app, timeout in CASES:
            results[name].append(await _round(app, timeout, requests))
    med = {name: statistics.median(v) for name, v in results.items()}
    base, noop = med["bare app"], med["no-op pure-ASGI layer"]
    print(f"{'case':44} {'µs/req':>8} {'+bare µs':>9} {'+no-op µs':>10} {'x bare':>7}")
    for name, _, _ in CASES:
        m = med[name]
        print(f"{name:44} {m:8.2f} {m - base:9.2f} {m - noop:10.2f} {m / base:7.2f}")
    print(f"\nmedians of {rounds} rounds x {requests} requests; "
          "target: admission not saturated < 10 µs over the no-op layer")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--requests", type=int, default=4000)
    a = p.parse_args()
    asyncio.run(main(a.rounds, a.requests))
