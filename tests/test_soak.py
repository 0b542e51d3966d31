"""The soak (benchmarks/soak.py) in its bounded form: a real demo process under mixed load.

``make soak`` runs the long form (100,000 requests); see docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    # Streams in zstd and br are left to the test below (known growth).
    proc, report = run_soak(tmp_path, "--short", "--stream-codings",
                            "identity,gzip,lz4,snappy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["failures"] == []
    rss = report["rss_mib"]
    assert rss["end"] - rss["after_warmup"] <= 64
    assert report["hold"]["held"] == 1000 and report["hold"]["cleanup_s"] <= 1.0
    assert set(report["statuses"]["crash"]) == {"500"}  # the one intended 5xx
    assert all(int(s) < 500 for op, st in report["statuses"].items() if op != "crash"
               for s in st)


@pytest.mark.xfail(strict=True, reason="zstd/br SSE responses keep native memory (issue 13 "
                   "item 2c, compression); remove this mark once the soak holds")
def test_soak_zstd_and_br_streams_hold_the_memory_bound(tmp_path: Path) -> None:
    proc, report = run_soak(tmp_path, "--requests", "800", "--hold", "0", "--ops",
                            "stream_complete,stream_dropped", "--stream-codings", "zstd,br")
    assert report["failures"] == [] and proc.returncode == 0, proc.stdout
