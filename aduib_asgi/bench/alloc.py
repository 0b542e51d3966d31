"""Memory per request: what one call allocates, measured with :mod:`tracemalloc`.

For each app (the rpc group's: bare pure-ASGI floor, bare Starlette JSON echo,
dispatcher alone, default stack, demo app) the same echo request is run until
steady state (warm-up, untraced, then traced), with the cyclic GC off, and then:

* ``peak_bytes`` — the high-water mark of traced memory during one call, above
  the level before it (``tracemalloc.reset_peak``): what a request in flight
  costs at its largest, including the temporaries that come and go;
* ``live_bytes`` / ``live_blocks`` — memory blocks allocated by the call and
  still alive when its final ``http.response.body`` is sent (a snapshot diff at
  that moment): the request's working set (scope, context, envelope, reply...);
* ``retained_bytes`` / ``retained_blocks`` — what ``calls`` calls left behind,
  per call (should be ~0: anything else is a cache growing or a leak).

Per-call figures are medians over the measured calls. The driver's own objects
(the scope copy, receive/send) are in every row: the bare pure-ASGI row is that
floor. Allocation counts of short-lived temporaries that never coexist are not
visible to tracemalloc (it traces live blocks); ``peak_bytes`` bounds them.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message

from aduib_asgi.bench.driver import AsgiRunner, Request

__all__ = ["AllocResult", "AllocSettings", "alloc_cases", "measure_app", "run_allocations"]


@dataclass(frozen=True)
class AllocSettings:
    """How many calls: untraced warm-up, traced warm-up, measured calls."""

    warmup: int = 300
    traced_warmup: int = 50
    calls: int = 40
    retained_calls: int = 300

    @classmethod
    def quick(cls) -> AllocSettings:
        return cls(warmup=100, traced_warmup=20, calls=15, retained_calls=100)

    @classmethod
    def quickest(cls) -> AllocSettings:
        return cls(warmup=5, traced_warmup=2, calls=3, retained_calls=5)


@dataclass
class AllocResult:
    """One app's allocations per call (bytes, blocks); ``reason`` when it did not run."""

    key: str
    label: str
    status: str = "ok"
    reason: str | None = None
    calls: int = 0
    peak_bytes: int | None = None
    live_bytes: int | None = None
    live_blocks: int | None = None
    retained_bytes: float | None = None
    retained_blocks: float | None = None
    #: Where the live blocks at the response were allocated (one call): file:line, bytes, blocks.
    top_sites: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Probe:
    """receive/send for one traced call; snapshots memory at the final body send."""

    def __init__(self, body_msg: Message) -> None:
        self.body_msg = body_msg
        self.sent = False
        self.done = asyncio.Event()
        self.at_end: tracemalloc.Snapshot | None = None
        self.status = 0

    async def receive(self) -> Message:
        if not self.sent:
            self.sent = True
            return self.body_msg
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.at_end = tracemalloc.take_snapshot()
            self.done.set()


#: tracemalloc's own Python-level allocations (snapshot objects) are not the app's.
_NOT_OURS = [tracemalloc.Filter(False, tracemalloc.__file__)]


def _diff(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot) -> tuple[int, int]:
    after, before = after.filter_traces(_NOT_OURS), before.filter_traces(_NOT_OURS)
    stats = after.compare_to(before, "filename")
    return (sum(s.size_diff for s in stats), sum(s.count_diff for s in stats))


def _sites(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, top: int
           ) -> list[dict[str, Any]]:
    after, before = after.filter_traces(_NOT_OURS), before.filter_traces(_NOT_OURS)
    stats = [s for s in after.compare_to(before, "lineno") if s.count_diff > 0]
    stats.sort(key=lambda s: s.size_diff, reverse=True)
    out = []
    for s in stats[:top]:
        frame = s.traceback[0]
        out.append({"site": f"{_short(frame.filename)}:{frame.lineno}",
                    "bytes": s.size_diff, "blocks": s.count_diff})
    return out


def _short(filename: str) -> str:
    for marker in ("site-packages/", "aduib_asgi/", "lib/python"):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i + len(marker):] if marker != "aduib_asgi/" else filename[i:]
    return filename


async def measure_app(app: ASGIApp, request: Request, settings: AllocSettings,
                      key: str = "app", label: str = "app", top: int = 0) -> AllocResult:
    """Allocations per call of ``app`` answering ``request`` (see the module doc)."""
    runner = AsgiRunner(app, request)
    err = await runner.check()
    if err is not None:
        return AllocResult(key, label, status="failed", reason=err)
    await runner.round(settings.warmup)
    tmpl = runner._tmpl
    body_msg = {"type": "http.request", "body": request.body, "more_body": False}
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(1)
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        await runner.round(settings.traced_warmup)
        peaks, lives, blocks = [], [], []
        sites: list[dict[str, Any]] | None = None
        for _ in range(settings.calls):
            probe = _Probe(body_msg)
            scope = dict(tmpl)
            before = tracemalloc.take_snapshot()
            level = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            await app(scope, probe.receive, probe.send)
            peaks.append(tracemalloc.get_traced_memory()[1] - level)
            if probe.at_end is not None:
                size, count = _diff(probe.at_end, before)
                lives.append(size)
                blocks.append(count)
                if top and sites is None:
                    sites = _sites(probe.at_end, before, top)
            del probe, scope, before
        gc.collect()
        start = tracemalloc.take_snapshot()
        await runner.round(settings.retained_calls)
        gc.collect()
        size, count = _diff(tracemalloc.take_snapshot(), start)
    finally:
        if gc_was:
            gc.enable()
        if not was_tracing:
            tracemalloc.stop()
        runner.close()
    n = max(1, settings.retained_calls)
    return AllocResult(
        key, label, calls=settings.calls,
        peak_bytes=int(statistics.median(peaks)) if peaks else None,
        live_bytes=int(statistics.median(lives)) if lives else None,
        live_blocks=int(statistics.median(blocks)) if blocks else None,
        retained_bytes=round(size / n, 1), retained_blocks=round(count / n, 2), top_sites=sites)


def alloc_cases() -> list[tuple[str, str, Callable[[], ASGIApp]]]:
    """(key, label, app factory) of the apps measured: the rpc group's."""
    from aduib_asgi.bench.apps import bare_asgi_app, starlette_json_app
    from aduib_asgi.bench.cases import _dispatcher, stack_status
    from aduib_asgi.bench.layers import STACK_KWARGS

    def stack() -> ASGIApp:
        from aduib_asgi.bench.cases import _load_layer
        from aduib_asgi.stack import Layer, build_stack

        present, _ = stack_status()
        layers = [Layer(_load_layer(n), STACK_KWARGS.get(n, dict)()) for n in present]
        return build_stack(_dispatcher(), layers)

    def demo() -> ASGIApp:
        from aduib_asgi.demo import DemoConfig, build_demo_app

        return build_demo_app(DemoConfig(env="prod"))

    return [
        ("ref.asgi", "bare pure-ASGI app (driver floor)", bare_asgi_app),
        ("ref.starlette-json", "bare Starlette JSON echo route", starlette_json_app),
        ("rpc.dispatcher", "dispatcher alone", _dispatcher),
        ("rpc.stack", "default stack (10 layers)", stack),
        ("rpc.demo", "demo app (full DEFAULT_ORDER stack)", demo),
    ]


def run_allocations(settings: AllocSettings, keys: list[str] | None = None, top: int = 0
                    ) -> list[AllocResult]:
    """Measure every app of :func:`alloc_cases` (or those in ``keys``), one after the other;
    ``top`` > 0 also lists each one's largest allocation sites."""
    from aduib_asgi.bench.layers import echo_request

    async def main() -> list[AllocResult]:
        out = []
        for key, label, factory in alloc_cases():
            if keys is not None and key not in keys:
                continue
            try:
                app = factory()
            except Exception as exc:
                out.append(AllocResult(key, label, status="failed",
                                       reason=f"build raised {type(exc).__name__}: {exc}"))
                continue
            out.append(await measure_app(app, echo_request(), settings, key, label, top))
        return out

    return asyncio.run(main())
