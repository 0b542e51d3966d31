"""Where the time of one RPC call goes: cProfile per call, and layer by layer.

``aduib-asgi bench --profile`` (docs/performance.md, "Profile"):

* **functions** — :mod:`cProfile` over ``calls`` echo requests of the bare
  Starlette JSON echo route, the dispatcher alone, the default stack and the
  demo app: the functions with the most own time (``tottime``), in µs and calls
  per request, and the same time summed per module. cProfile's own cost per
  function call inflates every figure (the ``profiled µs/call`` next to the
  unprofiled ``µs/call`` says by how much); ``est. µs`` scales own time back by
  that factor. Read shares and call counts rather than absolutes.
* **layers** — the default stack built up one layer at a time over the
  dispatcher (dispatcher; errors + dispatcher; errors + content + dispatcher;
  ...), timed in alternating rounds like the in-process bench; each layer's
  figure is the median per-round difference to the stack without it: its
  marginal cost in the real stack, triggered the way the default stack runs it.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp

from aduib_asgi.bench.driver import AsgiRunner, calibrate

__all__ = ["ProfileSettings", "layer_ladder", "profile_app", "run_profile"]


@dataclass(frozen=True)
class ProfileSettings:
    calls: int = 5000
    top: int = 25
    ladder_rounds: int = 21
    round_seconds: float = 0.015

    @classmethod
    def quick(cls) -> ProfileSettings:
        return cls(calls=1000, top=20, ladder_rounds=9, round_seconds=0.005)

    @classmethod
    def quickest(cls) -> ProfileSettings:
        return cls(calls=20, top=5, ladder_rounds=3, round_seconds=0.001)


def _where(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        i = filename.rfind(marker)
        if i >= 0:
            rest = filename[i + len(marker):]
            return rest.split("/", 1)[1] if marker == "lib/python3" and "/" in rest else rest
    i = filename.rfind("aduib_asgi/")
    return filename[i:] if i >= 0 else filename


def _module(filename: str) -> str:
    """``aduib_asgi/middleware/trace.py`` → itself; a dependency → its package."""
    w = _where(filename)
    if w.startswith("aduib_asgi/"):
        return w
    if w.startswith("~") or w.startswith("{") or w.startswith("<"):
        return "builtins"
    return w.split("/", 1)[0]


async def profile_app(app: ASGIApp, request: Any, calls: int, top: int) -> dict[str, Any]:
    """cProfile ``calls`` requests of ``app``; functions and modules by own time per call."""
    runner = AsgiRunner(app, request)
    err = await runner.check()
    if err is not None:
        return {"status": "failed", "reason": err}
    await runner.round(max(50, calls // 10))
    plain = await runner.round(calls) / calls * 1e6
    prof = cProfile.Profile()
    prof.enable()
    profiled = await runner.round(calls)
    prof.disable()
    stats = pstats.Stats(prof)
    rows: list[dict[str, Any]] = []
    modules: dict[str, float] = {}
    total = 0.0
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == "round" and filename.endswith("driver.py"):
            continue  # the driver's loop itself
        total += tt
        where = _where(filename)
        name = func if line == 0 else f"{where}:{line}({func})"
        rows.append({"function": name, "calls_per_req": nc / calls,
                     "own_us": tt / calls * 1e6, "cum_us": ct / calls * 1e6})
        mod = _module(filename)
        modules[mod] = modules.get(mod, 0.0) + tt
    rows.sort(key=lambda r: float(r["own_us"]), reverse=True)
    mods: list[dict[str, Any]] = sorted(
        ({"module": m, "own_us": t / calls * 1e6, "share": t / total if total else 0.0}
         for m, t in modules.items()), key=lambda r: float(r["own_us"]), reverse=True)
    ncalls = sum(r["calls_per_req"] for r in rows)
    return {"status": "ok", "calls": calls, "us_per_call": plain,
            "profiled_us_per_call": profiled / calls * 1e6,
            "function_calls_per_req": ncalls, "functions": rows[:top], "modules": mods[:top]}


def layer_ladder() -> list[tuple[str, Callable[[], ASGIApp]]]:
    """(name, factory) of the default stack built up from the dispatcher, outermost first."""
    from aduib_asgi.bench.cases import _dispatcher, _load_layer, stack_status
    from aduib_asgi.bench.layers import STACK_KWARGS
    from aduib_asgi.stack import Layer, build_stack

    present, _ = stack_status()
    steps: list[tuple[str, Callable[[], ASGIApp]]] = [("dispatcher", _dispatcher)]
    for i, name in enumerate(present):
        names = present[: i + 1]

        def build(names: list[str] = names) -> ASGIApp:
            layers = [Layer(_load_layer(n), STACK_KWARGS.get(n, dict)()) for n in names]
            return build_stack(_dispatcher(), layers)

        steps.append((name, build))
    return steps


async def _ladder(settings: ProfileSettings) -> list[dict[str, Any]]:
    from aduib_asgi.bench.layers import echo_request

    runners = []
    for name, factory in layer_ladder():
        runner = AsgiRunner(factory(), echo_request())
        err = await runner.check()
        if err is not None:
            return [{"layer": name, "status": "failed", "reason": err}]
        await runner.round(64)
        n = await calibrate(runner, settings.round_seconds)
        runners.append((name, runner, n))
    samples: dict[str, list[float]] = {name: [] for name, _, _ in runners}
    for r in range(settings.ladder_rounds):
        order = runners if r % 2 == 0 else list(reversed(runners))
        for name, runner, n in order:
            samples[name].append(await runner.round(n) / n * 1e6)
    out = []
    prev: list[float] | None = None
    for name, _, _ in runners:
        xs = samples[name]
        row: dict[str, Any] = {"layer": name, "status": "ok", "us_per_call": statistics.median(xs)}
        if prev is not None:
            diffs = [a - b for a, b in zip(xs, prev, strict=False)]
            row["marginal_us"] = statistics.median(diffs)
        out.append(row)
        prev = xs
    return out


def run_profile(settings: ProfileSettings) -> dict[str, Any]:
    """The profile section of a run (JSON-able)."""
    from aduib_asgi.bench.alloc import alloc_cases
    from aduib_asgi.bench.layers import echo_request

    wanted = ("ref.starlette-json", "rpc.dispatcher", "rpc.stack", "rpc.demo")

    async def main() -> dict[str, Any]:
        apps = {}
        for key, label, factory in alloc_cases():
            if key in wanted:
                apps[key] = {"label": label,
                             **await profile_app(factory(), echo_request(), settings.calls,
                                                 settings.top)}
        return {"apps": apps, "ladder": await _ladder(settings)}

    return _run(main())


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
