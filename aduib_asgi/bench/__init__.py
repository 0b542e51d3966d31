"""Per-layer overhead benchmarks (``aduib-asgi bench``).

In-process mode drives ASGI apps directly (see :mod:`aduib_asgi.bench.driver`),
in alternating short rounds, and reports µs/request, the overhead over the
group's baseline and ratios to a bare Starlette route and a bare pure-ASGI app
measured in the same run. HTTP mode (:mod:`aduib_asgi.bench.http`) loads real
servers on loopback. Needs the ``bench`` extra (rich, matplotlib).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BenchOptions", "machine_facts", "run_bench"]


@dataclass
class BenchOptions:
    """What ``aduib-asgi bench`` was asked for."""

    layers: Sequence[str] | None = None
    cases: Sequence[str] | None = None
    quick: bool = False
    quickest: bool = False
    rounds: int | None = None
    round_ms: float | None = None
    json_path: str | None = None
    plot_path: str | None = None
    http: bool = True
    progress: bool = True
    print_table: bool = True


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("aduib-asgi", "starlette", "uvicorn", "uvloop", "limits", "zstandard", "brotli",
                "starlette-compress", "slowapi", "asgi-correlation-id",
                "opentelemetry-instrumentation-asgi", "opentelemetry-sdk"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run the bench; print/write what ``opts`` asks; return the JSON document."""
    from dataclasses import replace

    from aduib_asgi.bench.cases import all_cases
    from aduib_asgi.bench.http import HttpSettings, planned_servers, run_http
    from aduib_asgi.bench.report import print_report, to_json, write_json, write_plot
    from aduib_asgi.bench.runner import Settings, planned_steps, run_cases
    from aduib_asgi.bench.targets import evaluate_targets
    from aduib_asgi.stack import DEFAULT_ORDER, LAYER_CLASSES

    settings = (Settings.quickest() if opts.quickest else
                Settings.quick() if opts.quick else Settings())
    if opts.rounds:
        settings = replace(settings, rounds=opts.rounds)
    if opts.round_ms:
        settings = replace(settings, round_seconds=opts.round_ms / 1000)
    http_settings = HttpSettings.quick() if (opts.quick or opts.quickest) else HttpSettings()
    cases = all_cases(opts.layers, opts.cases)
    started = time.time()
    t0 = time.perf_counter()
    progress_ctx: Any = None
    on_case = on_http = None
    if opts.progress:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        progress_ctx = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                transient=True, console=Console(stderr=True))
        progress_ctx.start()
        task = progress_ctx.add_task("in-process", total=planned_steps(cases, settings))

        def on_case(group: str, n: int) -> None:
            progress_ctx.update(task, advance=n, description=f"in-process: {group}")

    try:
        results, loop_name = run_cases(cases, settings, on_case)
        http: dict[str, Any] | None = None
        if opts.http:
            if progress_ctx is not None:
                htask = progress_ctx.add_task(
                    "HTTP mode", total=http_settings.rounds * len(planned_servers()))

                def on_http(n: int) -> None:
                    progress_ctx.update(htask, advance=n)

            http = run_http(http_settings, on_http)
    finally:
        if progress_ctx is not None:
            progress_ctx.stop()
    layers = [n for n in (list(DEFAULT_ORDER) + [x for x in LAYER_CLASSES
                                                  if x not in DEFAULT_ORDER])
              if not opts.layers or n in opts.layers]
    targets = evaluate_targets(results, layers, http)
    meta = {
        **machine_facts(),
        "loop": loop_name,
        "mode": "quickest" if opts.quickest else "quick" if opts.quick else "full",
        "rounds": settings.rounds,
        "round_ms": round(settings.round_seconds * 1000, 2),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.perf_counter() - t0, 1),
        "layers_landed": sorted(LAYER_CLASSES),
        "layers_missing": [n for n in DEFAULT_ORDER if n not in LAYER_CLASSES],
        "versions": _versions(),
    }
    doc = to_json(meta, results, targets, http)
    if opts.print_table:
        print_report(doc, results)
    if opts.json_path:
        write_json(doc, opts.json_path)
    if opts.plot_path:
        write_plot(results, opts.plot_path)
    return doc
