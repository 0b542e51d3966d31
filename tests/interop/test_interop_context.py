"""Context from a real 2.0.1 client request takes effect (PROTOCOL.md sections 4 and 6).

The request sets every optional member the client has (trace_context, supported_versions,
metadata.tenant_id, qos, and ``meta.headers`` -> ``X-Tenant-Id`` HTTP header) and calls
``rpc.v2/Echo/context``, which returns what the handler saw (DEMO.md). These need the
version, trace and tenant layers of the demo stack.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.interop


def _show(outcome: dict[str, Any]) -> str:
    log = outcome.pop("_server_log_tail", "")
    return json.dumps(outcome, indent=1, sort_keys=True) + "\n--- server output ---\n" + log


def test_trace_continues_and_version_negotiated(demo_server, run_client):
    out = run_client(demo_server, "echo_full_request")
    assert out["outcome"] == "response", _show(out)
    sent = out["request_body"]["trace_context"]
    trace = out["trace_context"]
    assert trace is not None, _show(out)
    assert trace["trace_id"] == sent["trace_id"], _show(out)
    assert trace["span_id"] != sent["span_id"], _show(out)  # the server span is a child
    assert out["negotiated_version"] == "2.0", _show(out)


def test_handler_sees_client_context(demo_server, run_client):
    out = run_client(demo_server, "context_full_request")
    assert out["outcome"] == "response", _show(out)
    assert out["status"] == "success", _show(out)
    seen = out["result"]
    sent = out["request_body"]
    assert seen["tenant_id"] == "t1", _show(out)
    assert seen["trace_id"] == sent["trace_context"]["trace_id"], _show(out)
    assert seen["parent_span_id"] == sent["trace_context"]["span_id"], _show(out)
    assert seen["negotiated_version"] == "2.0", _show(out)
    assert seen["priority"] == 2, _show(out)  # qos.priority HIGH
    assert seen["request_id"] == "req-full-2", _show(out)
    remaining = seen["deadline_remaining_ms"]
    assert remaining is not None and 0 < remaining <= 3000, _show(out)  # qos/meta timeout_ms
    assert seen["principal"] is None, _show(out)  # no credentials: anonymous
