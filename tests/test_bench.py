"""The bench harness runs end to end in its quickest mode and writes well-formed JSON.

No timing assertions: only that it runs, measures and reports in the documented shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aduib_asgi.bench.cases import Unavailable, _our_layers, all_cases
from aduib_asgi.cli import main


def test_bench_quickest_one_case_emits_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = main(["bench", "--quickest", "--cases", "layers/ref.noop", "--no-http",
               "--no-progress", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"meta", "groups", "cases", "targets", "http"}
    assert doc["meta"]["nproc"] >= 1 and doc["meta"]["python"]
    assert doc["http"] is None
    ids = {c["id"] for c in doc["cases"]}
    # the chosen case, plus the references it is compared with, all in one group
    assert {"layers/ref.noop", "layers/ref.starlette", "layers/ref.asgi"} <= ids
    assert all(i.startswith("layers/") for i in ids)
    noop = next(c for c in doc["cases"] if c["id"] == "layers/ref.noop")
    assert noop["status"] == "ok"
    assert noop["rounds"] == len(noop["samples_us"]) >= 1
    assert noop["median_us"] > 0
    assert noop["overhead_us"] is not None and noop["vs_starlette"] is not None
    for row in doc["targets"]:
        assert row["verdict"] in {"met", "missed", "n/a"}


def test_layers_filter_keeps_references_and_reports_missing_layers() -> None:
    cases = all_cases(layers=["errors"])
    kinds = {(c.kind, c.layer) for c in cases if c.kind == "ours"}
    assert kinds == {("ours", "errors")}
    assert any(c.key == "ref.starlette" for c in cases)
    # a layer that is not registered is reported, never timed
    ghost = _our_layers(["no-such-layer"])
    assert len(ghost) == 1
    with pytest.raises(Unavailable, match="has not landed"):
        ghost[0].build()


def test_http_mode_serves_the_demo_as_shipped_and_like_for_like() -> None:
    from aduib_asgi.bench.http import REFERENCE_SETTINGS, planned_servers, shipped_settings
    from aduib_asgi.bench.targets import evaluate_targets

    servers = {s.name: s for s in planned_servers()}
    shipped, same = servers["demo"], servers["demo-h11"]
    # both run the real CLI; the like-for-like one pins the reference's loop and parser
    assert shipped.argv[1:4] == ["-m", "aduib_asgi.cli", "demo"]
    assert "--loop" not in shipped.argv and shipped.settings == shipped_settings()
    assert same.argv[1:4] == ["-m", "aduib_asgi.cli", "demo"]
    assert same.argv[-4:] == ["--loop", "asyncio", "--http", "h11"]
    assert same.settings == REFERENCE_SETTINGS == servers["bare"].settings
    assert servers["bare-shipped"].settings == shipped.settings
    http = {"servers": [
        {"name": "demo", "settings": "uvloop, httptools", "rps": 6000.0},
        {"name": "demo-h11", "settings": REFERENCE_SETTINGS, "rps": 3300.0},
        {"name": "aduib-rpc", "settings": REFERENCE_SETTINGS, "rps": 3000.0},
    ]}
    row = evaluate_targets({}, [], http)[-1]
    assert row["measured"] == "2.00\u00d7" and row["verdict"] == "met"
    assert "like for like" in row["detail"] and "1.10\u00d7" in row["detail"]


def test_bench_quick_check_exit_status_follows_the_targets(tmp_path: Path) -> None:
    """`aduib-asgi bench --quick --check`: status 1 iff a target is missed (whatever the
    machine measures); plain progress lines when stderr is not a terminal; tables in
    120 columns; no internal wording."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "aduib_asgi.cli", "bench", "--quick", "--check",
         "--layers", "errors", "--no-http", "--json", str(out)],
        capture_output=True, text=True, timeout=100)
    targets = json.loads(out.read_text())["targets"]
    missed = [row for row in targets if row["verdict"] == "missed"]
    assert proc.returncode == (1 if missed else 0), proc.stderr
    assert ("targets missed" in proc.stderr) == bool(missed)
    progress = [line for line in proc.stderr.splitlines() if line.startswith("bench: ")]
    assert progress and "\x1b[" not in proc.stderr  # plain lines, no terminal codes
    lines = proc.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 120
    assert "issue" not in proc.stdout


def test_check_status_is_one_only_for_a_missed_target() -> None:
    from aduib_asgi.cli import check_status

    row = {"target": "t", "goal": "g", "measured": "m", "detail": ""}
    assert check_status([{**row, "verdict": "met"}, {**row, "verdict": "n/a"}]) == 0
    assert check_status([{**row, "verdict": "met"}, {**row, "verdict": "missed"}]) == 1
    assert check_status([]) == 0
