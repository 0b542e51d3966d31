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

__all__ = ["CaseResult", "Settings", "planned_steps", "quartiles", "run_cases"]


@dataclass(frozen=True)
class Settings:
    """How long to measure. ``quick`` is the preset behind ``--quick``."""

    rounds: int = 21
    round_seconds: float = 0.015
    warmup_seconds: float = 0.05

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=9, round_seconds=0.005, warmup_seconds=0.01)

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
    block_samples: dict[tuple[str, str], list[float]] = {}
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
        skipped = [c for c in cases if not results[c.id].ok]
        if skipped:
            nblocks = len({c.block or "" for c in cases if c.kind != "reference"}) or 1
            progress(cases[0].group, sum(nblocks if c.kind == "reference" else 1
                                         for c in skipped) * settings.rounds)
    # warm-up then calibration, one case after the other
    for _case, runner, res in runners:
        t_end = time.perf_counter() + settings.warmup_seconds
        while time.perf_counter() < t_end:
            await runner.round(16)
        res.n_per_round = await calibrate(runner, settings.round_seconds)
    gc.collect()
    # Blocks: the references run with every block, so that each case is paired
    # with yardstick samples taken a few milliseconds from its own.
    refs = [x for x in runners if x[0].kind == "reference"]
    blocks: dict[str, list[tuple[Case, Runner, CaseResult]]] = {}
    for x in runners:
        if x[0].kind != "reference":
            blocks.setdefault(x[0].block or "", []).append(x)
    if not blocks:
        blocks[""] = []
    for bname, members in blocks.items():
        lineup = refs + members
        for r in range(settings.rounds):
            order = lineup if r % 2 == 0 else list(reversed(lineup))
            for case, runner, res in order:
                n = res.n_per_round
                elapsed = await runner.round(n)
                us = elapsed / n * 1e6
                res.samples_us.append(us)
                block_samples.setdefault((case.id, bname), []).append(us)
                if progress is not None:
                    progress(case.group, 1)
    for _case, runner, res in runners:
        res.rounds = len(res.samples_us)
        res.q1_us, res.median_us, res.q3_us = quartiles(res.samples_us)
        runner.close()
    group = GROUPS[cases[0].group]
    for case in cases:
        _paired(results, block_samples, case, group.baseline, "overhead")
        if case.compare_to:
            _paired(results, block_samples, case, case.compare_to, "delta")
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


def _paired(results: dict[str, CaseResult], block_samples: dict[tuple[str, str], list[float]],
            case: Case, base_key: str, what: str) -> None:
    """Median and IQR of (case - base) over rounds of the same block."""
    res = results[case.id]
    if not res.ok:
        return
    if res.kind == "raw":  # a raw codec's cost is its time
        if what == "overhead":
            res.overhead_us, res.overhead_q1_us, res.overhead_q3_us = (
                res.median_us, res.q1_us, res.q3_us)
        return
    base_id = f"{case.group}/{base_key}"
    base = results.get(base_id)
    if base is None or not base.ok:
        return
    diffs: list[float] = []
    for (cid, bname), xs in block_samples.items():
        if cid != case.id:
            continue
        ys = block_samples.get((base_id, bname), [])
        diffs.extend(a - b for a, b in zip(xs, ys, strict=False))
    if not diffs:
        return
    q1, med, q3 = quartiles(diffs)
    setattr(res, f"{what}_us", med)
    setattr(res, f"{what}_q1_us", q1)
    setattr(res, f"{what}_q3_us", q3)


def planned_steps(cases: list[Case], settings: Settings) -> int:
    """How many timed rounds :func:`run_cases` will run (for a progress bar)."""
    total = 0
    for g in {c.group for c in cases}:
        members = [c for c in cases if c.group == g]
        refs = sum(1 for c in members if c.kind == "reference")
        blocks = {c.block or "" for c in members if c.kind != "reference"} or {""}
        total += (refs * len(blocks) + len(members) - refs) * settings.rounds
    return total


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
