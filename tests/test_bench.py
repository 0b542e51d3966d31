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
