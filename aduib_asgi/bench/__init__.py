"""Per-layer overhead benchmarks (``aduib-asgi bench``).

In-process mode drives ASGI apps directly (see :mod:`aduib_asgi.bench.driver`),
in alternating short rounds, and reports µs/request, the overhead over the
group's baseline and ratios to a bare Starlette route and a bare pure-ASGI app
measured in the same run. HTTP mode (:mod:`aduib_asgi.bench.http`) loads real
servers on loopback. Allocations per call (:mod:`aduib_asgi.bench.alloc`) and,
on request, a per-call profile (:mod:`aduib_asgi.bench.profile`) complete the
rpc group. Needs the ``bench`` extra (rich, matplotlib).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BenchOptions", "PlainProgress", "machine_facts", "require_bench_extras", "run_bench"]


@dataclass
class BenchOptions:
    """What ``aduib-asgi bench`` was asked for."""

    layers: Sequence[str] | None = None
    cases: Sequence[str] | None = None
    groups: Sequence[str] | None = None
    quick: bool = False
    quickest: bool = False
    rounds: int | None = None
    round_ms: float | None = None
    json_path: str | None = None
    plot_path: str | None = None
    http: bool = True
    http_rounds: int | None = None
    http_seconds: float | None = None
    http_servers: Sequence[str] | None = None
    alloc: bool = True
    profile: bool = False
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


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages (the machine's noise: other work on the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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


class PlainProgress:
    """Progress as plain lines on stderr (when it is not a terminal: CI logs, files).

    The subset of rich's ``Progress`` the bench uses; one line per change of
    description, plus one every ``every_s`` seconds.
    """

    def __init__(self, stream: Any = None, every_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._tasks: dict[int, list[Any]] = {}  # id -> [description, completed, total]
        self._last = 0.0
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._t0 = time.monotonic()

    def stop(self) -> None:
        for task in self._tasks.values():
            self._line(task)

    def add_task(self, description: str, total: int) -> int:
        tid = len(self._tasks)
        self._tasks[tid] = [description, 0, total]
        self._line(self._tasks[tid])
        return tid

    def update(self, tid: int, advance: int = 0, description: str | None = None) -> None:
        task = self._tasks[tid]
        task[1] += advance
        changed = description is not None and description != task[0]
        if description is not None:
            task[0] = description
        if changed or time.monotonic() - self._last >= self.every_s:
            self._line(task)

    def _line(self, task: list[Any]) -> None:
        self._last = time.monotonic()
        desc, done, total = task
        print(f"bench: {desc} {done}/{total} ({self._last - self._t0:.0f} s)",
              file=self.stream, flush=True)


def _progress() -> Any:
    """rich's live progress bar on a terminal, plain lines otherwise."""
    if not sys.stderr.isatty():
        return PlainProgress()
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    transient=True, console=Console(stderr=True))


def require_bench_extras(opts: BenchOptions) -> None:
    """Fail before any work when a package the run needs is missing (naming its extra)."""
    from aduib_asgi.extras import require

    feature = "aduib-asgi bench"
    require("rich", "bench", feature)
    require("opentelemetry.sdk.trace", "bench", feature)
    require("opentelemetry.instrumentation.asgi", "bench", feature)
    if opts.plot_path:
        require("matplotlib", "bench", f"{feature} --plot")
    if opts.http:
        require("uvicorn", "server", f"{feature} (HTTP mode; --no-http skips it)")


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run the bench; print/write what ``opts`` asks; return the JSON document."""
    require_bench_extras(opts)
    from dataclasses import replace

    from aduib_asgi.bench.alloc import AllocSettings, run_allocations
    from aduib_asgi.bench.cases import all_cases
    from aduib_asgi.bench.http import HttpSettings, planned_servers, run_http
    from aduib_asgi.bench.profile import ProfileSettings, run_profile
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
    if opts.http_rounds:
        http_settings = replace(http_settings, rounds=opts.http_rounds)
    if opts.http_seconds:
        http_settings = replace(http_settings, round_seconds=opts.http_seconds)
    if opts.http_servers:
        from aduib_asgi.bench.http import SERVER_NAMES

        unknown = set(opts.http_servers) - set(SERVER_NAMES)
        if unknown:
            raise ValueError(f"unknown HTTP server(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(SERVER_NAMES)})")
        http_settings = replace(http_settings, servers=tuple(opts.http_servers))
    cases = all_cases(opts.layers, opts.cases, opts.groups)
    started = time.time()
    load_start = _loadavg()
    t0 = time.perf_counter()
    progress_ctx: Any = None
    on_case = on_http = None
    if opts.progress:
        progress_ctx = _progress()
        progress_ctx.start()
        task = progress_ctx.add_task("in-process", total=planned_steps(cases, settings))

        def on_case(group: str, n: int) -> None:
            progress_ctx.update(task, advance=n, description=f"in-process: {group}")

    allocations: list[dict[str, Any]] | None = None
    profile: dict[str, Any] | None = None
    try:
        results, loop_name = run_cases(cases, settings, on_case)
        if opts.alloc and any(c.group == "rpc" for c in cases):
            if progress_ctx is not None:
                progress_ctx.add_task("allocations per call", total=1)
            allocations = [r.to_json() for r in run_allocations(
                AllocSettings.quickest() if opts.quickest else
                AllocSettings.quick() if opts.quick else AllocSettings(), top=8)]
        if opts.profile:
            if progress_ctx is not None:
                progress_ctx.add_task("profile", total=1)
            profile = run_profile(ProfileSettings.quickest() if opts.quickest else
                                  ProfileSettings.quick() if opts.quick else ProfileSettings())
        http: dict[str, Any] | None = None
        if opts.http:
            if progress_ctx is not None:
                htask = progress_ctx.add_task(
                    "HTTP mode",
                    total=http_settings.rounds * len(planned_servers(http_settings.servers)))

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
        "groups": sorted({c.group for c in cases}),
        "round_ms": round(settings.round_seconds * 1000, 2),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.perf_counter() - t0, 1),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "layers_landed": sorted(LAYER_CLASSES),
        "layers_missing": [n for n in DEFAULT_ORDER if n not in LAYER_CLASSES],
        "versions": _versions(),
    }
    doc = to_json(meta, results, targets, http, allocations, profile)
    if opts.print_table:
        print_report(doc, results)
    if opts.json_path:
        write_json(doc, opts.json_path)
    if opts.plot_path:
        write_plot(results, opts.plot_path)
    return doc
