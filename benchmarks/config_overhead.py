"""What runtime configuration, probes and the access log cost per request (demo stack).

All cases serve the same echo request through the demo's stack, in one process,
in alternating rounds (A-B-C-C-B-A...) so machine noise hits every case alike:

- ``snapshot``: the configured layers over the long-lived ones, with the
  dispatcher facts, access log left out — the demo stack as it was before
  runtime configuration;
- ``demo``: what ``build_demo_app`` serves — probes, the reloadable wrapper
  (one attribute read, one scope entry) and the access-log layer, its logger
  disabled (the in-process default: no handler at INFO);
- ``demo + access log``: the same with the access log written (text) to a
  handler that discards it: the price of one formatted line per call;
- ``demo, 5 reloads before``: after five reloads, the last ones changing
  ``[admission]`` limits (nothing builds up; the echo call is not limited).

Reported: median µs/request and the difference to ``snapshot`` (paired per round).

    .venv/bin/python benchmarks/config_overhead.py [--rounds 21] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
from typing import Any

from aduib_asgi.bench.driver import AsgiRunner
from aduib_asgi.bench.layers import echo_request
from aduib_asgi.config import MemorySource
from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.stack import dispatcher_facts


def _dispatcher_of(app: Any) -> Any:
    while not hasattr(app, "streaming"):
        app = app.app
    return app


async def _apps() -> dict[str, Any]:
    bare_cfg = MemorySource({"log": {"access": False, "level": "warning"}})
    plain = build_demo_app(DemoConfig(config_sources=[bare_cfg]))
    snapshot = dispatcher_facts(plain.config_manager.app.app, _dispatcher_of(plain))
    demo = build_demo_app(DemoConfig())
    reloaded_source = MemorySource({})
    reloaded = build_demo_app(DemoConfig(config_sources=[reloaded_source]))
    for i in range(5):  # admission limits too: applied in place to the long-lived layer
        reloaded_source.set({"compression": {"minimum_size": 600 + i},
                             "admission": {"limits": {"rpc.v2/Slow/work": 1 + i},
                                           "max_queue": 64 + i}})
        assert await reloaded.config_manager.reload()
    return {"snapshot": snapshot, "demo": demo, "demo + access log": demo,
            "demo, 5 reloads before": reloaded}


async def _run(rounds: int, requests: int) -> None:
    apps = await _apps()
    access = logging.getLogger("aduib_asgi.access")
    sink = logging.StreamHandler(io.StringIO())
    runners = {name: AsgiRunner(app, echo_request()) for name, app in apps.items()}
    for runner in runners.values():
        err = await runner.check()
        assert err is None, err
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            logged = name == "demo + access log"
            if logged:
                access.addHandler(sink)
                access.setLevel(logging.INFO)
            elapsed = await runners[name].round(requests)
            if logged:
                access.removeHandler(sink)
                access.setLevel(logging.NOTSET)
                sink.stream = io.StringIO()
            times[name].append(elapsed / requests * 1e6)
    base = times["snapshot"]
    print(f"{'case':28s} {'µs/request':>11s} {'Δ vs snapshot':>14s}")
    for name, samples in times.items():
        delta = statistics.median(a - b for a, b in zip(samples, base, strict=True))
        print(f"{name:28s} {statistics.median(samples):11.2f} {delta:+14.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    asyncio.run(_run(args.rounds, args.requests))


if __name__ == "__main__":
    main()
