"""Health and task interop: health_check(), task_submit() + task_query() of the real 2.0.1 client.

Bodies as the client sends them (wire_contract.md section 3): Check ``{}`` /
``{"service": "Echo"}``; Submit ``{"target_method": ..., "params": {"ms": 50},
"priority": [1]}`` -- the client's default priority is a one-element list (PROTOCOL.md 10).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.interop


def _show(outcome: dict[str, Any]) -> str:
    log = outcome.pop("_server_log_tail", "")
    return json.dumps(outcome, indent=1, sort_keys=True) + "\n--- server output ---\n" + log


def test_health_check(demo_server, run_client):
    out = run_client(demo_server, "health_check")
    assert out["outcome"] == "response", _show(out)
    # Memory backends only: nothing should be degraded.
    assert out["overall"]["status"] == "healthy", _show(out)
    assert out["service"]["status"] in ("healthy", "unknown"), _show(out)


def test_task_submit_then_query(demo_server, run_client):
    out = run_client(demo_server, "task_submit_query")
    assert out["submit_body"]["priority"] == [1], _show(out)
    assert out["outcome"] == "response", _show(out)
    submitted = out["submit"]
    assert submitted["task_id"], _show(out)
    assert submitted["status"] in ("pending", "scheduled", "running", "succeeded"), _show(out)
    assert isinstance(submitted["created_at_ms"], int), _show(out)

    final = out["final"]
    assert final["task_id"] == submitted["task_id"], _show(out)
    assert final["status"] == "succeeded", _show(out)
    assert final["priority"] == 1, _show(out)
    result = final["result"]
    # The record's result is the target's result, or (as the reference does) its whole
    # response envelope.
    if isinstance(result, dict) and "aduib_rpc" in result:
        result = result.get("result")
    assert result == {"slept_ms": 50}, _show(out)
