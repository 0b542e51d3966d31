"""benchmarks/ratelimit_steps.py: the rate limit's handler and each of its steps, timed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ratelimit_steps.py"


def test_every_step_of_the_admitted_hit_is_timed() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "2", "--calls", "5"],
                         capture_output=True, text=True, timeout=90, check=True)
    assert "never awaited" not in out.stderr
    timed = dict(re.findall(r"^  (\S.*?)\s+(-?\d+\.\d+)$", out.stdout, re.M))
    assert set(timed) == {"handler (whole)", "policy lookup", "storage key", "hit (hit_now)",
                          "limits' incr (in the hit)", "report (headers, metadata)",
                          "ceil(reset - now)"}
