"""Where the rate-limit layer's time goes: its handler, and each of its steps alone.

The layer's handler (``RateLimitMiddleware._handle``, a ``memory://`` fixed
window admitting, one policy) with the scope and context **the bench's default
stack gives it** (as ``ab_handlers.py`` captures them; the inner app returns at
once), and each step it takes,
timed alone in the same interleaved rounds: the policy lookup, the bucket's
storage key, the hit (``FixedWindowQuota.hit_now``), ``limits``' own
``MemoryStorage.incr`` inside it, and the report (the two ``RateLimit`` fields and
``metadata.rate_limit``, spelled as the handler spells them). µs per call over an
empty loop, minima of the rounds::

    .venv/bin/python benchmarks/ratelimit_steps.py --rounds 60 --calls 1000

The steps are timed apart, so their sum only approximates the handler's time.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from ab_handlers import _handlers
from ab_ref import run_loop

from aduib_asgi.middleware.ratelimit import _RATELIMIT


def _nothing(scope: Any, receive: Any, send: Any) -> None:
    """The inner app: returns at once (no coroutine to create and await)."""
    return None


def _steps(layer: Any, scope: Any, ctx: Any) -> dict[str, Callable[[], Any]]:
    policies = layer._match[(ctx.method, scope["path"])]
    p = policies[0]
    key = layer._key(p, scope, ctx)
    quota = layer.quota
    memory = quota.limiter.storage.memory

    def handler() -> Any:
        ctx.response_headers = []
        return layer._handle(scope, None, None, ctx)

    def report() -> None:
        ctx.response_headers = []
        ctx.response_headers += (p.policy_field,
                                 (_RATELIMIT, b"%s%d;t=%d" % (p.rl_prefix, 999, 42)))
        ctx.rate_limit = {"limit": p.amount, "remaining": 999,
                          "reset_at_ms": int(1764892800.5 * 1000)}

    return {
        "handler (whole)": handler,
        "policy lookup": lambda: layer._match.get((ctx.method, scope["path"])),
        "storage key": lambda: layer._key(p, scope, ctx),
        "hit (hit_now)": lambda: quota.hit_now(p.item, key, p.cost, p.window),
        "limits' incr (in the hit)": lambda: memory._incr(memory, key, p.window, 1),
        "report (headers, metadata)": report,
        "ceil(reset - now)": lambda: math.ceil(1764892800.5 - time.time()),
    }


async def run(rounds: int, calls: int) -> None:
    found = await _handlers("aduib_asgi", ["ratelimit"], "stack", _nothing)
    handler, scope, ctx = found["ratelimit"]
    steps = {"empty loop": lambda: None, **_steps(handler.__self__, scope, ctx)}
    best = dict.fromkeys(steps, math.inf)
    names = list(steps)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            fn = steps[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    floor = best.pop("empty loop")
    print(f"rate limit (memory:// fixed window, admitted): µs per call over an empty loop, "
          f"min of {rounds} rounds of {calls}")
    for name, value in best.items():
        print(f"  {name:28s} {value - floor:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    run_loop(run(args.rounds, args.calls))


if __name__ == "__main__":
    main()
