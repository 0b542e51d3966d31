"""Unary interop: the real aduib-rpc 2.0.1 REST client against the demo server.

Bodies and expectations: /work/shared/spec/wire_contract.md (sections 3-6) and
PROTOCOL.md sections 2-3.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.interop


def _show(outcome: dict[str, Any]) -> str:
    log = outcome.pop("_server_log_tail", "")
    return json.dumps(outcome, indent=1, sort_keys=True) + "\n--- server output ---\n" + log


def test_echo_with_id(demo_server, run_client):
    out = run_client(demo_server, "echo_with_id")
    assert out["outcome"] == "response", _show(out)
    assert out["status"] == "success", _show(out)
    assert out["result"] == {"msg": "hi", "n": 1}, _show(out)
    assert out["id"] == "req-echo-1", _show(out)
    assert out["error_code"] is None, _show(out)


def test_echo_without_id_gets_generated_uuid(demo_server, run_client):
    out = run_client(demo_server, "echo_without_id")
    assert "id" not in out["request_body"], _show(out)  # the 2.0.1 client omits it by default
    assert out["outcome"] == "response", _show(out)
    assert out["status"] == "success", _show(out)
    assert out["result"] == {"msg": "hi", "n": 2}, _show(out)
    assert isinstance(out["id"], str) and out["id"], _show(out)
    generated = uuid.UUID(out["id"])  # raises if not a UUID string
    assert generated.version == 4, _show(out)  # PROTOCOL.md section 2: "generates a UUID v4"


def test_echo_with_every_optional_member(demo_server, run_client):
    """meta, qos.enabled, qos.idempotency_ttl_s, metadata.long_task, nulls: all tolerated."""
    out = run_client(demo_server, "echo_full_request")
    assert out["outcome"] == "response", _show(out)
    assert out["status"] == "success", _show(out)
    assert out["result"] == {"msg": "hi"}, _show(out)
    assert out["id"] == "req-full-1", _show(out)


def test_error_call_code_readable(demo_server, run_client):
    """Echo/fail code 4001: the caller can read the code (wire_contract.md section 6, A or B)."""
    out = run_client(demo_server, "error_call")
    assert out["error_code"] == 4001, _show(out)
    assert out["error_name"] == "METHOD_NOT_FOUND", _show(out)
    assert out["error_message"] == "nope", _show(out)
    if out["error_via"] == "http_error":
        assert out["exception"] == "ClientHTTPError", _show(out)
        assert out["error_body"]["status"] == "error", _show(out)
    else:
        assert out["error_via"] == "envelope", _show(out)
        assert out["status"] == "error", _show(out)


def test_error_call_http_status_follows_table(demo_server, run_client):
    """PROTOCOL.md section 3: 4001 -> HTTP 404 (the client sees ClientHTTPError(404))."""
    out = run_client(demo_server, "error_call")
    assert out["outcome"] == "exception", _show(out)
    assert out["http_status"] == 404, _show(out)
    assert out["error_code"] == 4001, _show(out)
