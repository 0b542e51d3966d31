"""What each part of the demo costs, in-process: the demo rebuilt without one part at a time.

Every variant is ``build_demo_app`` of this checkout with one thing taken out or
replaced, all in one process, timed in interleaved rounds (forward, then backward)
with the bench's driver and the thread's CPU clock (time spent descheduled by other
processes does not count). Printed per variant: minimum and median µs per call and
the difference to the demo as built::

    .venv/bin/python benchmarks/demo_parts.py [--rounds 150] [--calls 64] [--variants ...]

Variants: ``demo``, ``no-metrics`` (the trace layer records no RPC metrics),
``noop-histogram`` (metrics recorded, the SDK histogram call replaced by a no-op),
``unbatched`` (``RpcMetrics`` without ``batch``), ``no-access`` (no access-log layer),
``no-compression``, ``no-circuit``; ``json-route`` is the bare Starlette JSON echo
route. Use ``--calls`` equal to the demo's ``METRICS_BATCH`` so every round holds one
batch of histogram records.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import aduib_asgi.demo.server as demo_server
from aduib_asgi.bench.apps import starlette_json_app
from aduib_asgi.bench.driver import AsgiRunner, Exchange
from aduib_asgi.bench.layers import echo_request
from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.middleware.trace import TracePropagationMiddleware


class _Pass:
    """A layer that only calls the next app (stands for a layer taken out)."""

    def __init__(self, app: Any, **_: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class _NoopHistogram:
    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


def _trace_layers(app: Any) -> list[TracePropagationMiddleware]:
    """The trace layers reachable from ``app`` (through links and attributes)."""
    found, seen, todo = [], set(), [app]
    while todo:
        node = todo.pop()
        if id(node) in seen or isinstance(node, (str, bytes, int, float, type)):
            continue
        seen.add(id(node))
        if isinstance(node, TracePropagationMiddleware):
            found.append(node)
        todo.extend(v for v in getattr(node, "__dict__", {}).values() if callable(v))
        todo.extend(x for x in (getattr(node, "app", None), getattr(node, "__self__", None))
                    if x is not None)
        closure = getattr(node, "__closure__", None) or ()
        todo.extend(c.cell_contents for c in closure if callable(c.cell_contents))
        current = getattr(node, "current", None)
        if isinstance(current, tuple):
            todo.extend(current)
    return found


def demo(drop: tuple[str, ...] = (), inner: tuple[str, ...] = (),
         metrics: Callable[[Any], None] | None = None) -> Any:
    """The demo without the outer layers named ``drop`` and with the inner layer
    classes named ``inner`` replaced by a pass-through; ``metrics(trace_layer)``
    adjusts each trace layer."""
    outer = demo_server.outer_layers
    saved = {name: getattr(demo_server, name) for name in inner}
    demo_server.outer_layers = (
        lambda *a, **k: [x for x in outer(*a, **k) if x.name not in drop])
    for name in inner:
        setattr(demo_server, name, _Pass)
    try:
        app = build_demo_app(DemoConfig(env="prod"))
    finally:
        demo_server.outer_layers = outer
        for name, cls in saved.items():
            setattr(demo_server, name, cls)
    if metrics is not None:
        layers = _trace_layers(app)
        if not layers:
            raise SystemExit("no trace layer found in the demo")
        for layer in layers:
            metrics(layer)
    return app


def _no_metrics(layer: Any) -> None:
    layer.metrics = None


def _noop_histogram(layer: Any) -> None:
    layer.metrics.duration = _NoopHistogram()


def _unbatched(layer: Any) -> None:
    layer.metrics._filter = None


VARIANTS: dict[str, Callable[[], Any]] = {
    "json-route": starlette_json_app,
    "demo": demo,
    "no-metrics": lambda: demo(metrics=_no_metrics),
    "noop-histogram": lambda: demo(metrics=_noop_histogram),
    "unbatched": lambda: demo(metrics=_unbatched),
    "no-access": lambda: demo(drop=("access",)),
    "no-compression": lambda: demo(drop=("compression",)),
    "no-circuit": lambda: demo(inner=("CircuitBreakerMiddleware",)),
}


async def _timed(runner: Any, n: int) -> float:
    app, tmpl, body = runner.app, runner._tmpl, runner._body_msg
    t0 = time.thread_time()
    for _ in range(n):
        ex = Exchange(body)
        await app(dict(tmpl), ex.receive, ex.send)
    return (time.thread_time() - t0) / n * 1e6


async def run(names: list[str], rounds: int, calls: int) -> None:
    runners = {n: AsgiRunner(VARIANTS[n](), echo_request()) for n in names}
    for name, runner in runners.items():
        problem = await runner.check()
        if problem is not None:
            raise SystemExit(f"{name}: {problem}")
        await runner.round(300)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            samples[name].append(await _timed(runners[name], calls))
    base_min, base_med = min(samples["demo"]), statistics.median(samples["demo"])
    print(f"{rounds} interleaved rounds of {calls} calls, thread CPU µs per call: "
          f"min (median), and the difference to the demo")
    for name in names:
        lo, mid = min(samples[name]), statistics.median(samples[name])
        print(f"  {name:16s} {lo:8.2f} ({mid:7.2f})   "
              f"{lo - base_min:+7.2f} ({mid - base_med:+7.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--calls", type=int, default=demo_server.METRICS_BATCH)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if "demo" not in names:
        names.insert(0, "demo")
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(names, args.rounds, args.calls))
    else:
        uvloop.run(run(names, args.rounds, args.calls))


if __name__ == "__main__":
    main()
