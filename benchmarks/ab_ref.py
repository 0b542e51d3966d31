"""A/B of this checkout against a git ref, in one process (issue 18 item 2).

On a shared, noisy 2-core machine two separate runs differ by more than most
single optimisations gain. This script puts both versions in **one process**:
the ref's ``aduib_asgi`` is exported (``git archive``) into a temporary
directory under another package name (``aduib_ref``), so ``aduib_ref`` (the
ref) and ``aduib_asgi`` (this checkout) are imported side by side and called in
finely interleaved rounds (forward, then backward) with the bench's own apps
and driver. Per case it prints the **minimum** of the rounds (what the code
costs when nothing else interferes: the robust estimator here) and the median,
both also as a multiple of the bare Starlette JSON echo route measured in the
same rounds, and for the default stack its cost over the dispatcher.

Cases: ``dispatcher``, ``stack`` (the bench's default stack), ``demo``
(``build_demo_app``), ``upto:NAME`` (the default stack built up to layer ``NAME``, as
the bench's profile ladder does; a case right after another ``upto:`` case also
reports its cost over it: ``upto:errors,upto:content`` gives content's marginal
cost in the fused stack), and ``layer:NAME:I`` (case ``I`` of the bench's layer
cases for ``NAME``, in a stack behind the context seed), which also reports
the layer's cost over a context seed + no-op layer of the same version,
``alone:NAME:I`` (the same case with the layer alone: it creates the context), and
``compress:CODING[:SIZE]`` (the bench's ``compress-20k``/``-1m`` case of our
layer, alone on the big route), which reports its cost over the uncompressed
route and over the raw codec call, both timed in the same rounds::

    .venv/bin/python benchmarks/ab_ref.py                      # main vs here
    .venv/bin/python benchmarks/ab_ref.py --ref HEAD~3 --cases dispatcher,layer:deadline:1
    .venv/bin/python benchmarks/ab_ref.py --cases compress:zstd,compress:br,compress:gzip
    .venv/bin/python benchmarks/ab_ref.py --cpu --cases layer:trace:2   # CPU time, busy host
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REF_PKG = "aduib_ref"
#: What a round is timed with: wall time, or this thread's CPU time (``--cpu``: time
#: the process spends descheduled on a busy shared machine does not count).
CLOCK = time.perf_counter
REPO = pathlib.Path(__file__).resolve().parent.parent


def export_ref(ref: str, into: pathlib.Path) -> None:
    """``git archive ref aduib_asgi`` into ``into/aduib_ref``, every import renamed."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", ref, "aduib_asgi"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    (into / "aduib_asgi").rename(into / REF_PKG)
    for path in (into / REF_PKG).rglob("*"):
        if path.suffix in (".py", ".pyi"):
            text = path.read_text()
            if "aduib_asgi" in text:
                path.write_text(text.replace("aduib_asgi", REF_PKG))


def json_route() -> Any:
    """The bare Starlette JSON echo route (decodes the envelope, answers its data)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        envelope = await request.json()
        return JSONResponse({"aduib_rpc": "2.0", "id": envelope.get("id"),
                             "status": "success", "result": envelope.get("data")})

    return Starlette(routes=[Route("/aduib_rpc/v2/rpc", echo, methods=["POST"])])


def build(pkg: str, case: str) -> Any:
    """A bench runner (``AsgiRunner``) of ``case`` built from package ``pkg``."""
    cases = importlib.import_module(pkg + ".bench.cases")
    layers = importlib.import_module(pkg + ".bench.layers")
    driver = importlib.import_module(pkg + ".bench.driver")
    if case == "json-route":
        return driver.AsgiRunner(json_route(), layers.echo_request())
    if case == "dispatcher":
        return driver.AsgiRunner(cases._dispatcher(), layers.echo_request())
    if case == "stack":
        return cases._stack_build()
    if case == "demo":
        return cases._demo_build()
    if case.startswith("upto:"):
        steps = dict(importlib.import_module(pkg + ".bench.profile").layer_ladder())
        return driver.AsgiRunner(steps[case.split(":", 1)[1]](), layers.echo_request())
    if case == "seed-noop":
        apps = importlib.import_module(pkg + ".bench.apps")
        return cases._starlette_runner(
            lambda: [cases._mw(apps.ContextSeed), cases._mw(apps.NoopLayer)],
            layers.echo_request())()
    if case.startswith(("compress:", "big-route:", "raw:")):
        kind, codec, size = _parts(case)
        if kind == "big-route":
            return cases._starlette_runner(list, cases._big_request(size, None), big=True)()
        if kind == "raw":
            data = apps_big(pkg, size)
            fn = cases.raw_codec(codec, layers.CODEC_LEVELS.get(codec))
            return driver.CallRunner(lambda: fn(data))
        found = [c for c in layers.layer_cases("compression", cases._load_layer("compression"))
                 if c.group == f"compress-{size}" and c.codec == codec]
        return cases._layer_build("compression", found[0], alone=True)()
    if case.startswith(("layer:", "alone:")):
        kind, name, index = case.split(":")
        found = [c for c in layers.layer_cases(name, cases._load_layer(name))
                 if c.group == "layers"]
        return cases._layer_build(name, found[int(index)], alone=kind == "alone")()
    raise SystemExit(f"unknown case {case!r}")


def _parts(case: str) -> tuple[str, str, str]:
    """``kind:coding[:size]`` (size "20k" unless given)."""
    kind, codec, *rest = case.split(":")
    return kind, codec, rest[0] if rest else "20k"


def apps_big(pkg: str, size: str) -> bytes:
    """The big route's body of ``size`` ("20k", "1m")."""
    apps = importlib.import_module(pkg + ".bench.apps")
    body: bytes = apps.big_body(apps.BIG_SIZES[size])
    return body


async def timed(runner: Any, n: int, clock: Callable[[], float] | None = None) -> float:
    """µs per call of ``n`` calls (the driver's request loop, or the raw codec call),
    on ``clock`` (default: this run's ``CLOCK``)."""
    from aduib_asgi.bench.driver import Exchange

    if clock is None:
        clock = CLOCK
    if not hasattr(runner, "app"):
        func = runner.func
        t0 = clock()
        for _ in range(n):
            func()
        return (clock() - t0) / n * 1e6
    app, tmpl, body = runner.app, runner._tmpl, runner._body_msg
    t0 = clock()
    for _ in range(n):
        ex = Exchange(body)
        await app(dict(tmpl), ex.receive, ex.send)
    return (clock() - t0) / n * 1e6


async def run(case_names: list[str], rounds: int, calls: int, ref: str) -> None:
    runners: dict[tuple[str, str], Any] = {("", "json-route"): build("aduib_asgi", "json-route")}
    for case in case_names:
        for pkg in (REF_PKG, "aduib_asgi"):
            runners[(pkg, case)] = build(pkg, case)
            if case.startswith("layer:") and (pkg, "seed-noop") not in runners:
                runners[(pkg, "seed-noop")] = build(pkg, "seed-noop")
            if case.startswith("compress:"):
                _, codec, size = _parts(case)
                for extra in (f"big-route:-:{size}", f"raw:{codec}:{size}"):
                    runners.setdefault(("", extra), build("aduib_asgi", extra))
    for key, runner in runners.items():
        problem = await runner.check()
        if problem is not None:
            raise SystemExit(f"{key}: {problem}")
        await runner.round(300)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        for key in keys if i % 2 == 0 else reversed(keys):
            samples[key].append(await timed(runners[key], calls))
    low = {k: min(v) for k, v in samples.items()}
    mid = {k: statistics.median(v) for k, v in samples.items()}
    ref_low, ref_mid = low[("", "json-route")], mid[("", "json-route")]
    print(f"{rounds} interleaved rounds of {calls} calls; µs per call, min (median); "
          f"x = multiple of the bare Starlette JSON route in the same rounds")
    print(f"  {'bare Starlette JSON route':34s} {ref_low:8.2f} ({ref_mid:.2f})")
    for i, case in enumerate(case_names):
        for pkg, label in ((REF_PKG, ref), ("aduib_asgi", "this checkout")):
            k = (pkg, case)
            line = (f"  {case + ' @ ' + label:34s} {low[k]:8.2f} ({mid[k]:.2f})  "
                    f"{low[k] / ref_low:.3f}x ({mid[k] / ref_mid:.3f}x)")
            if case == "stack" and (pkg, "dispatcher") in low:
                line += (f"  over the dispatcher +{low[k] - low[(pkg, 'dispatcher')]:.2f} "
                         f"(+{mid[k] - mid[(pkg, 'dispatcher')]:.2f})")
            if case.startswith("layer:"):
                line += f"  over seed + no-op +{low[k] - low[(pkg, 'seed-noop')]:.2f}"
            if case.startswith("upto:") and i > 0 and case_names[i - 1].startswith("upto:"):
                prev = (pkg, case_names[i - 1])
                line += (f"  over {case_names[i - 1][5:]} +{low[k] - low[prev]:.2f} "
                         f"(+{mid[k] - mid[prev]:.2f})")
            if case.startswith("compress:"):
                _, codec, size = _parts(case)
                route, raw = ("", f"big-route:-:{size}"), ("", f"raw:{codec}:{size}")
                over, over_mid = low[k] - low[route], mid[k] - mid[route]
                line += (f"  over the route +{over:.2f} (+{over_mid:.2f}) = raw codec "
                         f"{low[raw]:.2f} ({mid[raw]:.2f}) + {over - low[raw]:.2f} "
                         f"(+{over_mid - mid[raw]:.2f})")
            print(line)


def run_loop(main: Any) -> None:
    """Run the coroutine ``main`` on uvloop when it is installed (as the bench does)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main", help="git ref to compare with (main)")
    parser.add_argument("--cases", default="dispatcher,stack,demo")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--calls", type=int, default=50, help="calls per round")
    parser.add_argument("--cpu", action="store_true",
                        help="time rounds by this thread's CPU time, not wall time")
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.thread_time
    with tempfile.TemporaryDirectory() as tmp:
        export_ref(args.ref, pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        run_loop(run([c for c in args.cases.split(",") if c], args.rounds, args.calls,
                      args.ref))


if __name__ == "__main__":
    main()
