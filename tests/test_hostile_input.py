"""Hostile and malformed input through the full demo stack: always a table error, never a 500."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.errors import ERROR_TABLE
from tests.conftest import RPC, client_for

pytestmark = pytest.mark.anyio

_APP = build_demo_app(DemoConfig(env="prod"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["aduib_rpc", "id", "method", "name", "data", "supported_versions",
                          "trace_context", "metadata", "qos", "meta"])
methods = st.sampled_from(["rpc.v2/Echo/echo", "rpc.v2/Counter/incr", "rpc.v2/Limited/ping",
                           "rpc.v2/Legacy/old", "rpc.v2/Nope/x", "Echo.echo", "", "rpc.v2//"])
nested = st.fixed_dictionaries({}, optional={
    "tenant_id": json_values, "auth": json_values, "accept": json_values,
    "priority": json_values, "timeout_ms": json_values, "idempotency_key": json_values,
    "retry": json_values, "trace_id": json_values, "span_id": json_values,
})
envelopes = st.fixed_dictionaries({"method": methods}, optional={
    "aduib_rpc": st.sampled_from(["2.0", "1.0", "3.0", "x", "2.10"]) | json_values,
    "id": json_values, "data": json_values, "supported_versions": json_values,
    "trace_context": nested | json_values, "metadata": nested | json_values,
    "qos": nested | json_values, "meta": nested | json_values,
}) | st.dictionaries(fields, json_values, max_size=6)

header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.fixed_dictionaries({}, optional={
    "accept": header_values, "accept-encoding": header_values, "x-tenant-id": header_values,
    "idempotency-key": header_values, "x-timeout-ms": header_values,
    "traceparent": header_values, "authorization": header_values, "x-api-key": header_values,
    "aduib-stream-framing": header_values, "x-priority": header_values,
})


def _check(r: httpx.Response, path: str = RPC) -> None:
    assert r.status_code < 500 or r.status_code in (503, 504), (r.status_code, r.content[:300])
    if r.status_code >= 400 and r.headers.get("content-type") == "application/json":
        body = r.json()
        assert body["status"] == "error"
        # v1 answers in v1 shape: error {code, message, data} (PROTOCOL.md section 9).
        v1 = "/v1/" in path or body.get("aduib_rpc") == "1.0"
        required = {"code", "message"} if v1 else {"code", "name", "message"}
        assert required <= set(body["error"])
        assert body["error"]["code"] in ERROR_TABLE


PATHS = [RPC, RPC + "/stream", RPC + "/cancel", "/aduib_rpc/v1/rpc",
         "/aduib_rpc/v2/TaskService/Submit", "/aduib_rpc/v2/TaskService/Query",
         "/aduib_rpc/v2/HealthService/Check"]


async def _post(body: bytes, extra: dict[str, str], path: str = RPC) -> httpx.Response:
    async with client_for(_APP) as c:
        return await c.post(path, content=body,
                            headers={"content-type": "application/json", **extra})


#: More examples for a deeper local hunt: HOSTILE_EXAMPLES=5000 pytest tests/test_hostile_input.py
#: (derandomized so CI runs the same examples every time).
_EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "300"))


@settings(max_examples=_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(envelope=envelopes, extra=headers, path=st.sampled_from(PATHS))
async def test_arbitrary_envelopes_and_headers_never_500(envelope: dict[str, Any],
                                                          extra: dict[str, str],
                                                          path: str) -> None:
    _check(await _post(json.dumps(envelope).encode(), extra, path), path)


@settings(max_examples=_EXAMPLES // 2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), path=st.sampled_from(PATHS))
async def test_arbitrary_bytes_never_500(body: bytes, path: str) -> None:
    _check(await _post(body, {}, path), path)
