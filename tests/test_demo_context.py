"""The demo's trace/tenant/auth behaviour (DEMO.md), through the full demo stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def _layers(app: Any) -> list[str]:
    names = []
    while app is not None:
        if hasattr(app, "layer_name"):
            names.append(app.layer_name)
        app = getattr(app, "app", None)
    return names


def test_demo_has_trace_tenant_auth_after_version() -> None:
    names = _layers(build_demo_app(DemoConfig()))
    assert names.index("trace") < names.index("tenant") < names.index("auth")
    if "version" in names:
        assert names.index("version") < names.index("trace")


async def test_context_from_headers(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/context", {}), headers={
        "traceparent": f"00-{TRACE}-{SPAN}-01", "X-Tenant-ID": "acme",
        "Authorization": "Bearer demo-user-token"})
    assert r.status_code == 200
    seen = r.json()["result"]
    assert (seen["tenant_id"], seen["principal"], seen["roles"]) == ("acme", "alice", ["user"])
    assert (seen["trace_id"], seen["parent_span_id"]) == (TRACE, SPAN)
    assert seen["span_id"] == r.json()["trace_context"]["span_id"] != SPAN
    assert r.headers["traceresponse"] == f"00-{TRACE}-{seen['span_id']}-01"


async def test_default_tenant_and_anonymous(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/context", {}))
    seen = r.json()["result"]
    assert (seen["tenant_id"], seen["principal"], seen["roles"]) == ("default", None, [])
    assert len(seen["trace_id"]) == 32 and seen["parent_span_id"] is None


async def test_envelope_context_wins_or_must_agree(demo_client: httpx.AsyncClient) -> None:
    if "content" not in _layers(build_demo_app(DemoConfig())):
        pytest.skip("needs the content-negotiation layer in the demo stack")
    body = envelope("rpc.v2/Echo/context", {},
                    trace_context={"trace_id": TRACE, "span_id": SPAN},
                    metadata={"tenant_id": "t1",
                              "auth": {"scheme": "bearer", "credentials": "demo-admin-token"}})
    r = await demo_client.post(RPC, json=body, headers={
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "X-Tenant-Id": "t1"})
    seen = r.json()["result"]
    assert (seen["tenant_id"], seen["principal"], seen["trace_id"]) == ("t1", "admin", TRACE)
    clash = await demo_client.post(RPC, json=body, headers={"X-Tenant-ID": "t2"})
    assert clash.status_code == 400 and clash.json()["error"]["code"] == 2003
    mtls = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {}, metadata={
        "auth": {"scheme": "mtls"}}))
    assert mtls.status_code == 401 and mtls.json()["error"]["code"] == 3000


async def test_admin_secret_rules(demo_client: httpx.AsyncClient) -> None:
    if "content" not in _layers(build_demo_app(DemoConfig())):
        pytest.skip("role rules need the method: the content layer must decode the envelope")
    secret = envelope("rpc.v2/Admin/secret", {})
    anon = await demo_client.post(RPC, json=secret)
    user = await demo_client.post(RPC, json=secret,
                                  headers={"Authorization": "Bearer demo-user-token"})
    svc = await demo_client.post(RPC, json=secret, headers={"X-API-Key": "demo-key"})
    admin = await demo_client.post(RPC, json=secret,
                                   headers={"Authorization": "Bearer demo-admin-token"})
    other = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {}),
                                   headers={"Authorization": "Bearer whatever"})
    assert anon.status_code == 401 and anon.json()["error"]["code"] == 3000
    assert "www-authenticate" in anon.headers
    assert user.status_code == 403 and user.json()["error"]["code"] in (3010, 3011)
    assert svc.status_code == 403
    assert admin.status_code == 200 and admin.json()["result"] == {"secret": "ok"}
    assert other.status_code == 401 and other.json()["error"]["code"] == 3001
    assert "whatever" not in other.text


async def test_api_key_principal(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/context", {}),
                               headers={"X-API-Key": "demo-key"})
    seen = r.json()["result"]
    assert (seen["principal"], seen["roles"]) == ("svc", ["service"])


async def test_prometheus_metrics_endpoint() -> None:
    async with client_for(build_demo_app(DemoConfig())) as c:
        await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {"a": 1}))
        await c.post(RPC, json=envelope("rpc.v2/Admin/secret", {}))
        r = await c.get("/aduib_rpc/metrics")
    assert r.status_code == 200
    assert "rpc_server_requests_total{" in r.text
    assert "rpc_server_duration_milliseconds_bucket{" in r.text


async def test_echo_returns_null_or_absent_data_unchanged(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json={"aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo",
                                          "data": None})
    absent = await demo_client.post(RPC, json={"aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo"})
    assert r.status_code == 200 and r.json().get("result") is None
    assert absent.status_code == 200 and absent.json().get("result") is None
