"""Before/after on a noisy machine: the rpc group of two commits, in alternating processes.

    python benchmarks/ab_rpc.py                    # main vs the working tree, 3 runs each
    python benchmarks/ab_rpc.py --base b2143cd --runs 5
    python benchmarks/ab_rpc.py --base main --head perf   # two commits, neither checked out

The base commit's ``aduib_asgi`` is extracted with ``git archive`` into a
temporary directory and run with this virtualenv's dependencies; the working
tree is the other side (or ``--head REV``, extracted the same way). Runs
alternate (base, head, head, base, ...), each one
``aduib-asgi bench --cases rpc --no-http``. Every figure is divided by the same
run's bare Starlette route (fixed body), which both sides measure with the same
Starlette, so the machine's speed at that moment cancels out; what is left is
the code. Prints every run and the medians, and the head/base ratio of medians.
See docs/performance.md ("Is main slower than ...") for why this beats comparing
two separate full runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: (name, case id, what) — ``median`` of the case, or its paired ``overhead``.
METRICS = (
    ("dispatcher", "rpc/rpc.dispatcher", "median_us"),
    ("stack over dispatcher", "rpc/rpc.stack", "overhead_us"),
    ("demo", "rpc/rpc.demo", "median_us"),
    ("JSON echo route", "rpc/ref.starlette-json", "median_us"),
)


def normalised(doc: Mapping[str, Any]) -> dict[str, float]:
    """Each metric of one bench JSON ÷ that run's bare Starlette route (absent: left out)."""
    cases = {c["id"]: c for c in doc["cases"]}
    route = cases.get("rpc/ref.starlette", {}).get("median_us")
    if not route:
        raise ValueError("the run has no rpc/ref.starlette median")
    out = {"route µs": float(route)}
    for name, cid, key in METRICS:
        value = cases.get(cid, {}).get(key)
        if value is not None and cases[cid].get("status") == "ok":
            out[name] = float(value) / route
    return out


def compare(base: Sequence[Mapping[str, float]], head: Sequence[Mapping[str, float]]
            ) -> list[dict[str, Any]]:
    """Per metric: the base and head medians over runs and head ÷ base."""
    rows = []
    for name, _, _ in METRICS:
        b = [r[name] for r in base if name in r]
        h = [r[name] for r in head if name in r]
        if not b or not h:
            continue
        mb, mh = statistics.median(b), statistics.median(h)
        rows.append({"metric": name, "base": b, "head": h, "base_median": mb,
                     "head_median": mh, "head_vs_base": mh / mb if mb else None})
    return rows


def _extract(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "aduib_asgi"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _run(cwd: Path, extracted: bool, out: Path, rounds: int, round_ms: float
         ) -> dict[str, float]:
    argv = [sys.executable, "-m", "aduib_asgi.cli", "bench", "--cases", "rpc", "--no-http",
            "--no-progress", "--rounds", str(rounds), "--round-ms", str(round_ms),
            "--json", str(out)]
    if (cwd / "aduib_asgi" / "bench" / "alloc.py").exists():  # a bench that measures them
        argv.append("--no-alloc")
    env = dict(os.environ)
    if extracted:  # the extracted package must win over an installed (editable) one
        env["PYTHONPATH"] = str(cwd)
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True,
                   timeout=600)
    return normalised(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--base", default="main", help="commit to compare against (default main)")
    p.add_argument("--head", default=None, help="commit to measure (default: the working tree)")
    p.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--round-ms", type=float, default=10.0)
    p.add_argument("--json", dest="json_path", default=None)
    args = p.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="aduib-ab-") as tmp:
        dirs = {"base": Path(tmp) / "base", "head": ROOT}
        dirs["base"].mkdir()
        _extract(args.base, dirs["base"])
        if args.head:
            dirs["head"] = Path(tmp) / "head"
            dirs["head"].mkdir()
            _extract(args.head, dirs["head"])
        for i in range(args.runs):
            order = ("base", "head") if i % 2 == 0 else ("head", "base")
            for side in order:
                cwd = dirs[side]
                r = _run(cwd, cwd != ROOT, Path(tmp) / f"{side}-{i}.json", args.rounds,
                         args.round_ms)
                results[side].append(r)
                shown = ", ".join(f"{k} {v:.2f}" + ("" if k == "route µs" else "x")
                                  for k, v in r.items())
                print(f"run {i + 1} {side}: {shown}", flush=True)
    rows = compare(results["base"], results["head"])
    print(f"\n{'÷ bare Starlette route':<24}{'base median':>12}{'head median':>12}"
          f"{'head ÷ base':>12}")
    for row in rows:
        print(f"{row['metric']:<24}{row['base_median']:>11.2f}x{row['head_median']:>11.2f}x"
              f"{row['head_vs_base']:>11.2f}x")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"base": args.base, "runs": results, "compare": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
