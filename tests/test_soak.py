"""The soak (benchmarks/soak.py) in its bounded form: a real demo process under mixed load.

``make soak`` runs the long form (100,000 requests); see docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def run_soak(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=110)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


def test_soak_short_holds_its_bounds(tmp_path: Path) -> None:
    # 2,000 mixed requests (unary, streams completed / dropped / cancelled, errors, every
    # coding, fresh idempotency keys, tasks), then 1,000 SSE streams held and dropped.
    proc, report = run_soak(tmp_path, "--short")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["failures"] == []
    rss = report["rss_mib"]
    assert rss["end"] - rss["after_warmup"] <= 64
    assert report["hold"]["held"] == 1000 and report["hold"]["cleanup_s"] <= 1.0
    assert set(report["statuses"]["crash"]) == {"500"}  # the one intended 5xx
    assert all(int(s) < 500 for op, st in report["statuses"].items() if op != "crash"
               for s in st)
