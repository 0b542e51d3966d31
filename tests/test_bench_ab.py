"""benchmarks/ab_rpc.py: speed-normalised before/after figures (no timing asserts)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

AB = Path(__file__).resolve().parent.parent / "benchmarks" / "ab_rpc.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ab_rpc", AB)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(route: float, disp: float, stack_over: float, json_echo: float | None) -> dict[str, Any]:
    cases = [{"id": "rpc/ref.starlette", "status": "ok", "median_us": route},
             {"id": "rpc/rpc.dispatcher", "status": "ok", "median_us": disp},
             {"id": "rpc/rpc.stack", "status": "ok", "median_us": disp + stack_over,
              "overhead_us": stack_over},
             {"id": "rpc/rpc.demo", "status": "failed", "median_us": None}]
    if json_echo is not None:
        cases.append({"id": "rpc/ref.starlette-json", "status": "ok", "median_us": json_echo})
    return {"cases": cases}


def test_figures_are_divided_by_the_runs_own_route_and_compared_by_median() -> None:
    ab = _module()
    # the same code on a machine twice as slow gives the same normalised figures
    fast = ab.normalised(_doc(10.0, 20.0, 30.0, None))
    slow = ab.normalised(_doc(20.0, 40.0, 60.0, 36.0))
    assert fast == {"route µs": 10.0, "dispatcher": 2.0, "stack over dispatcher": 3.0}
    assert slow["dispatcher"] == 2.0 and slow["JSON echo route"] == 1.8
    assert "demo" not in slow  # a failed case is left out, never compared
    base = [fast, ab.normalised(_doc(10.0, 22.0, 30.0, None)),
            ab.normalised(_doc(10.0, 18.0, 40.0, None))]
    head = [ab.normalised(_doc(10.0, 10.0, 10.0, 9.0))]
    rows = {r["metric"]: r for r in ab.compare(base, head)}
    assert rows["dispatcher"]["base_median"] == 2.0 and rows["dispatcher"]["head_vs_base"] == 0.5
    assert rows["stack over dispatcher"]["head_vs_base"] == pytest.approx(1 / 3)
    assert "JSON echo route" not in rows  # the base did not measure it
    with pytest.raises(ValueError, match=r"ref\.starlette"):
        ab.normalised({"cases": []})


def test_the_base_commit_is_extracted_as_a_package(tmp_path: Path) -> None:
    ab = _module()
    ab._extract("HEAD", tmp_path)
    assert (tmp_path / "aduib_asgi" / "bench" / "__init__.py").exists()
    assert not (tmp_path / "tests").exists()
