"""Per-request overhead of the version layer and of versioned method resolution.

Every case wraps the same minimal pure-ASGI app (a 200 with a tiny body) and is
driven in-process: each request gets a fresh scope whose RequestContext already
holds what the content layer leaves (the validated envelope where the case has
one), in alternating rounds so that machine noise hits every case alike.
Reported: median µs/request, the overhead over the bare app and over a no-op
pure-ASGI layer, and the ratio to the bare app — all measured in the same run.

Cases: bare app; no-op layer; VersionNegotiationMiddleware not triggered (no
envelope, no header); with a v2 envelope (no ``supported_versions``); with
``supported_versions`` ["1.0", "2.0"]; header negotiation; and the registry's
``resolve`` for a plain, a version-ranged and a deprecated method (inside a
no-op layer, with a context).

    .venv/bin/python benchmarks/versioning.py [--rounds 15] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.bench.apps import NoopLayer  # the no-op yardstick, shared
from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.middleware import VersionNegotiationMiddleware
from aduib_asgi.models import RpcRequest

_START = {"type": "http.response.start", "status": 200,
          "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]}
_BODY = {"type": "http.response.body", "body": b"{}"}

REGISTRY = MethodRegistry()
REGISTRY.register("rpc.v2/B/plain", lambda d: d)
REGISTRY.register("rpc.v2/B/ranged", lambda d: d, removed_in="2.0")
REGISTRY.register("rpc.v2/B/ranged", lambda d: d, since="2.0")
REGISTRY.register("rpc.v2/B/old", lambda d: d, deprecated="2025-01-01", sunset="2027-01-01")


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_START)
    await send(_BODY)



def resolving(method: str) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        REGISTRY.resolve(method, ctx=scope[CONTEXT_KEY])
        await bare(scope, receive, send)

    return NoopLayer(app)


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


ENV_PLAIN = RpcRequest.model_validate({"method": "rpc.v2/B/plain"})
ENV_LISTED = RpcRequest.model_validate({"method": "rpc.v2/B/plain",
                                        "supported_versions": ["1.0", "2.0"]})
HDR = [(b"aduib-rpc-supported-versions", b"2.0, 1.0")]


def _scope(env: RpcRequest | None, headers: list[tuple[bytes, bytes]]) -> Scope:
    ctx = RequestContext(raw_headers=headers)
    ctx.envelope = env
    if env is not None:
        ctx.payload = {}
        ctx.negotiated_version = None
    return {"type": "http", "method": "POST", "path": "/aduib_rpc/v2/rpc", "headers": headers,
            CONTEXT_KEY: ctx}


Case = tuple[str, ASGIApp, RpcRequest | None, list[tuple[bytes, bytes]]]
CASES: list[Case] = [
    ("bare app", bare, None, []),
    ("no-op pure-ASGI layer", NoopLayer(bare), None, []),
    ("version, not triggered (no envelope/header)", VersionNegotiationMiddleware(bare), None, []),
    ("version, v2 envelope", VersionNegotiationMiddleware(bare), ENV_PLAIN, []),
    ("version, supported_versions [1.0, 2.0]", VersionNegotiationMiddleware(bare),
     ENV_LISTED, []),
    ("version, header negotiation", VersionNegotiationMiddleware(bare), None, HDR),
    ("no-op + resolve plain method", resolving("rpc.v2/B/plain"), ENV_PLAIN, []),
    ("no-op + resolve version-ranged method", resolving("rpc.v2/B/ranged"), ENV_PLAIN, []),
    ("no-op + resolve deprecated (2 headers)", resolving("rpc.v2/B/old"), ENV_PLAIN, []),
]


async def _round(app: ASGIApp, env: RpcRequest | None, headers: list[tuple[bytes, bytes]],
                 n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await app(_scope(env, headers), _receive, _send)
    return (time.perf_counter_ns() - t0) / n / 1000.0


async def main(rounds: int, requests: int) -> None:
    import logging

    logging.getLogger("aduib_asgi.versioning").setLevel(logging.ERROR)  # no per-call warning
    results: dict[str, list[float]] = {c[0]: [] for c in CASES}
    for _, app, env, headers in CASES:  # warm-up
        await _round(app, env, headers, 500)
    for _ in range(rounds):
        for name, app, env, headers in CASES:
            results[name].append(await _round(app, env, headers, requests))
    med = {name: statistics.median(v) for name, v in results.items()}
    base, noop = med["bare app"], med["no-op pure-ASGI layer"]
    print(f"{'case':44} {'µs/req':>8} {'+bare µs':>9} {'+no-op µs':>10} {'x bare':>7}")
    for name, *_ in CASES:
        m = med[name]
        print(f"{name:44} {m:8.2f} {m - base:9.2f} {m - noop:10.2f} {m / base:7.2f}")
    print(f"\nmedians of {rounds} rounds x {requests} requests (scope + RequestContext built "
          "per request in every case); target: not triggered <= 1 µs over the no-op layer")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--requests", type=int, default=4000)
    a = p.parse_args()
    asyncio.run(main(a.rounds, a.requests))
