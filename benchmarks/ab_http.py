"""HTTP A/B: the demo as shipped at a git ref and in this checkout, against the bare route.

Three servers on 127.0.0.1 with the bench's HTTP settings (aduib_asgi/bench/http.py):
the bare Starlette JSON echo route (this checkout), ``aduib-asgi demo --env prod
--no-access-log`` from ``--ref`` (its ``aduib_asgi`` exported with ``git archive``,
the server started in that directory so ``python -m`` imports it; same virtualenv)
and from this checkout. Rounds
alternate between them (forward, then backward); each round's demo req/s is
divided by the bare route's in the same round, so the machine's speed cancels.
Prints per server the median req/s and the median (range) of the per-round ratios,
and the server process's CPU time per request (Linux: ``/proc/PID/task/*/schedstat``,
all threads) with the per-round ratio bare-route CPU / server CPU: the req/s ratio
a CPU-bound server would reach, far steadier than req/s when other processes
share the cores::

    .venv/bin/python benchmarks/ab_http.py [--ref main] [--rounds 6] [--seconds 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from aduib_asgi.bench.http import _builtin, _Server, cpu_ns, planned_servers, shipped_settings

REPO = pathlib.Path(__file__).resolve().parent.parent


class _RefServer(_Server):
    """A server whose ``aduib_asgi`` is the exported ref's."""

    def __init__(self, name: str, label: str, argv: list[str], settings: str,
                 path: str) -> None:
        super().__init__(name, label, argv, settings)
        self.path = path

    def start(self) -> None:
        # ``python -m`` puts the working directory first on sys.path: run from the export
        from aduib_asgi.bench import http

        root = http._repo_root
        http._repo_root = lambda: pathlib.Path(self.path)  # type: ignore[assignment]
        try:
            super().start()
        finally:
            http._repo_root = root  # type: ignore[assignment]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tar = subprocess.run(["git", "-C", str(REPO), "archive", args.ref, "aduib_asgi"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
        known = {s.name: s for s in planned_servers(("demo", "bare-starlette"))}
        demo = known["demo"]
        servers: list[_Server] = [
            known["bare-starlette"],
            _RefServer("demo@ref", f"demo @ {args.ref}", demo.argv, shipped_settings(), tmp),
            _Server("demo@here", "demo @ this checkout", demo.argv, shipped_settings()),
        ]
        try:
            for s in servers:
                s.start()
            for s in servers:
                s.wait()
                if s.error:
                    raise SystemExit(f"{s.name}: {s.error}")
                _builtin(s.url or "", 1.0, 4)  # warm-up
            rps: dict[str, list[float]] = {s.name: [] for s in servers}
            cpu: dict[str, list[float]] = {s.name: [] for s in servers}
            for i in range(args.rounds):
                for s in servers if i % 2 == 0 else list(reversed(servers)):
                    pid = s.proc.pid if s.proc is not None else 0
                    before = cpu_ns(pid)
                    out: dict[str, Any] = _builtin(s.url or "", args.seconds, args.connections)
                    after = cpu_ns(pid)
                    if out.get("errors"):
                        raise SystemExit(f"{s.name}: {out['errors']} failed or non-2xx answers")
                    rps[s.name].append(float(out["rps"]))
                    if before is not None and after is not None and out["rps"]:
                        cpu[s.name].append((after - before) / 1e3 / (out["rps"] * args.seconds))
        finally:
            for s in servers:
                s.stop()
    bare, bare_cpu = rps["bare-starlette"], cpu["bare-starlette"]
    print(f"{args.rounds} alternating rounds of {args.seconds:g} s, {args.connections} "
          f"connections, built-in client; ratios are medians of per-round ratios to the bare "
          f"route (range); CPU: server CPU µs per request, ratio = bare route's CPU / this one")
    for s in servers:
        ratios = [a / b for a, b in zip(rps[s.name], bare, strict=True)]
        line = (f"  {s.label:44s} {statistics.median(rps[s.name]):7.0f} req/s "
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        if len(cpu[s.name]) == len(bare_cpu) == args.rounds:
            speed = [b / a for a, b in zip(cpu[s.name], bare_cpu, strict=True)]
            line += (f" | CPU {statistics.median(cpu[s.name]):6.1f} µs/req "
                     f"{statistics.median(speed):.2f}x ({min(speed):.2f}-{max(speed):.2f})")
        print(line)


if __name__ == "__main__":
    sys.exit(main())
