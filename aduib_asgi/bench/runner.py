"""Running the in-process cases: warm-up, calibration, alternating rounds, statistics.

Within a group every case runs one short round in turn, forward on even rounds
and backward on odd ones (A-B-B-A), so slow drift of the machine hits all cases
alike. Each round gives µs per operation; a case reports the median and the
inter-quartile range of its rounds. Overheads are the median of the per-round
differences to the group's baseline (paired, same round), so they are not
thrown off by a noisy neighbour the way a difference of two medians is.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aduib_asgi.bench.cases import GROUPS, Case, Unavailable
from aduib_asgi.bench.driver import Runner, calibrate

__all__ = ["CaseResult", "Settings", "quartiles", "run_cases"]


@dataclass(frozen=True)
class Settings:
    """How long to measure. ``quick`` is the preset behind ``--quick``."""

    rounds: int = 25
    round_seconds: float = 0.02
    warmup_seconds: float = 0.05

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=9, round_seconds=0.004, warmup_seconds=0.01)

    @classmethod
    def quickest(cls) -> Settings:
        return cls(rounds=3, round_seconds=0.001, warmup_seconds=0.0)


@dataclass
class CaseResult:
    """What one case measured (all times in µs per operation)."""

    id: str
    group: str
    key: str
    label: str
    kind: str
    layer: str | None
    variant: str
    triggered: bool | None
    codec: str | None
    note: str
    status: str = "ok"  # "ok" | "not available" | "failed"
    reason: str | None = None
    n_per_round: int = 0
    rounds: int = 0
    samples_us: list[float] = field(default_factory=list)
    median_us: float | None = None
    q1_us: float | None = None
    q3_us: float | None = None
    overhead_us: float | None = None
    overhead_q1_us: float | None = None
    overhead_q3_us: float | None = None
    vs_starlette: float | None = None
    vs_asgi: float | None = None
    compare_to: str | None = None
    delta_us: float | None = None
    delta_q1_us: float | None = None
    delta_q3_us: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_us"] = [round(x, 4) for x in self.samples_us]
        return d


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3) — the inclusive method, so 3 samples are enough."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def _result_for(case: Case) -> CaseResult:
    return CaseResult(
        id=case.id, group=case.group, key=case.key, label=case.label, kind=case.kind,
        layer=case.layer, variant=case.variant, triggered=case.triggered, codec=case.codec,
        note=case.note, compare_to=case.compare_to, extra=dict(case.extra),
    )


Progress = Callable[[str, int], None]


async def _run_group(cases: list[Case], settings: Settings, progress: Progress | None,
                     results: dict[str, CaseResult]) -> None:
    runners: list[tuple[Case, Runner, CaseResult]] = []
    for case in cases:
        res = _result_for(case)
        results[case.id] = res
        try:
            runner = case.build()
        except Unavailable as exc:
            res.status, res.reason = "not available", str(exc)
            continue
        except Exception as exc:
            res.status, res.reason = "failed", f"build raised {type(exc).__name__}: {exc}"
            continue
        try:
            err = await runner.check()
        except Exception as exc:
            err = f"raised {type(exc).__name__}: {exc}"
        if err is not None:
            res.status, res.reason = "failed", err
            continue
        runners.append((case, runner, res))
    if progress is not None:
        skipped = len(cases) - len(runners)
        if skipped:
            progress(cases[0].group, skipped * settings.rounds)
    # warm-up then calibration, one case after the other
    for _case, runner, res in runners:
        t_end = time.perf_counter() + settings.warmup_seconds
        while time.perf_counter() < t_end:
            await runner.round(16)
        res.n_per_round = await calibrate(runner, settings.round_seconds)
    gc.collect()
    for r in range(settings.rounds):
        order = runners if r % 2 == 0 else list(reversed(runners))
        for case, runner, res in order:
            n = res.n_per_round
            elapsed = await runner.round(n)
            res.samples_us.append(elapsed / n * 1e6)
            if progress is not None:
                progress(case.group, 1)
    for _case, runner, res in runners:
        res.rounds = len(res.samples_us)
        res.q1_us, res.median_us, res.q3_us = quartiles(res.samples_us)
        runner.close()
    group = GROUPS[cases[0].group]
    _paired(results, cases, group.baseline, "overhead")
    for case in cases:
        if case.compare_to:
            _paired(results, [case], case.compare_to, "delta", group=case.group)
    ref_s = results.get(f"{group.name}/ref.starlette")
    ref_a = results.get(f"{group.name}/ref.asgi")
    for case in cases:
        res = results[case.id]
        if not res.ok or res.median_us is None:
            continue
        if ref_s is not None and ref_s.ok and ref_s.median_us:
            res.vs_starlette = res.median_us / ref_s.median_us
        if ref_a is not None and ref_a.ok and ref_a.median_us:
            res.vs_asgi = res.median_us / ref_a.median_us


def _paired(results: dict[str, CaseResult], cases: list[Case], base_key: str, what: str,
            group: str | None = None) -> None:
    g = group or cases[0].group
    base = results.get(f"{g}/{base_key}")
    for case in cases:
        res = results[case.id]
        if not res.ok or res.kind == "raw":
            if res.ok and what == "overhead":  # a raw codec's cost is its time
                res.overhead_us, res.overhead_q1_us, res.overhead_q3_us = (
                    res.median_us, res.q1_us, res.q3_us)
            continue
        if base is None or not base.ok or len(base.samples_us) != len(res.samples_us):
            continue
        diffs = [a - b for a, b in zip(res.samples_us, base.samples_us, strict=True)]
        q1, med, q3 = quartiles(diffs)
        setattr(res, f"{what}_us", med)
        setattr(res, f"{what}_q1_us", q1)
        setattr(res, f"{what}_q3_us", q3)


def _loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


def run_cases(cases: list[Case], settings: Settings, progress: Progress | None = None
              ) -> tuple[dict[str, CaseResult], str]:
    """Run every case (group by group) on uvloop when available; return results and loop."""
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    results: dict[str, CaseResult] = {}
    factory, loop_name = _loop_factory()

    async def main() -> None:
        for group_cases in groups.values():
            await _run_group(group_cases, settings, progress, results)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    ordered = {c.id: results[c.id] for c in cases}
    return ordered, loop_name
