"""Streaming interop: call_server_stream() of the real 2.0.1 client, envelope framing.

The 2.0.1 client validates every SSE event as an AduibRpcResponse and stops only when the
body closes (wire_contract.md sections 2 and 7), so these run against the demo server
started with ``--stream-framing envelope`` (PROTOCOL.md section 5.1).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.interop


def _show(outcome: dict[str, Any]) -> str:
    log = outcome.pop("_server_log_tail", "")
    return json.dumps(outcome, indent=1, sort_keys=True) + "\n--- server output ---\n" + log


def test_stream_three_items(demo_server_envelope, run_client):
    out = run_client(demo_server_envelope, "stream")
    assert out["outcome"] == "completed", _show(out)
    items = out["items"]
    assert [item["result"] for item in items] == [{"index": i} for i in range(3)], _show(out)
    assert all(item["status"] == "success" for item in items), _show(out)
    assert all(item["error_code"] is None for item in items), _show(out)
    assert all(item["id"] == "req-stream-1" for item in items), _show(out)


def test_stream_in_band_error_at_fail_at(demo_server_envelope, run_client):
    """count=5, fail_at=2: two items, then one error envelope (default code 5000), then close."""
    out = run_client(demo_server_envelope, "stream_fail")
    assert out["outcome"] == "completed", _show(out)
    items = out["items"]
    assert len(items) == 3, _show(out)
    assert [item["result"] for item in items[:2]] == [{"index": 0}, {"index": 1}], _show(out)
    assert all(item["status"] == "success" for item in items[:2]), _show(out)
    last = items[2]
    assert last["status"] == "error", _show(out)
    assert last["result"] is None, _show(out)
    assert last["error_code"] == 5000, _show(out)
    assert last["error_name"] == "INTERNAL_ERROR", _show(out)


def test_stream_unknown_method_code_readable(demo_server_envelope, run_client):
    """Pre-stream error: non-200, but sent as text/event-stream with one error envelope."""
    out = run_client(demo_server_envelope, "stream_unknown_method")
    assert out["outcome"] == "completed", _show(out)  # no SSEError: content type is SSE
    assert len(out["items"]) == 1, _show(out)
    item = out["items"][0]
    assert item["status"] == "error", _show(out)
    assert item["error_code"] in (4001, 4002), _show(out)
    assert item["error_name"] in ("METHOD_NOT_FOUND", "SERVICE_NOT_FOUND"), _show(out)


def test_stream_envelope_framing_by_header(demo_server, run_client):
    """Default (StreamMessage) server; the request asks ``Aduib-Stream-Framing: envelope``."""
    out = run_client(demo_server, "stream_header_envelope")
    assert out["outcome"] == "completed", _show(out)
    items = out["items"]
    assert [item["result"] for item in items] == [{"index": i} for i in range(3)], _show(out)
    assert all(item["status"] == "success" for item in items), _show(out)
    assert all(item["id"] == "req-stream-4" for item in items), _show(out)
