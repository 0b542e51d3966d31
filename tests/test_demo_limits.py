"""The demo's rate limit (Limited/ping) and idempotency (Counter/incr), memory and --redis."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio


def _has_layer(app: Any, name: str) -> bool:
    while app is not None:
        if getattr(app, "layer_name", None) == name:
            return True
        app = getattr(app, "app", None)
    return False


# Policies match the RPC method, which the content-negotiation layer decodes.
needs_content = pytest.mark.skipif(
    not _has_layer(build_demo_app(), "content"),
    reason="the demo stack has no content-negotiation layer yet (issue 3)",
)


def demo(backend: str) -> Any:
    return build_demo_app(DemoConfig(redis_url=None if backend == "memory://" else backend))


async def ping(client: httpx.AsyncClient, tenant: str) -> httpx.Response:
    return await client.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                             headers={"x-tenant-id": tenant})


def test_demo_stack_has_both_layers_in_default_order() -> None:
    from aduib_asgi.stack import DEFAULT_ORDER

    names = []
    app: Any = build_demo_app()
    while app is not None:
        if hasattr(app, "layer_name"):
            names.append(app.layer_name)
        app = getattr(app, "app", None)
    assert "ratelimit" in names and "idempotency" in names
    rpc_layers = [n for n in names if n in DEFAULT_ORDER]  # probes/access log sit outside
    assert rpc_layers == [n for n in DEFAULT_ORDER if n in names]


@needs_content
async def test_limited_ping_three_per_ten_seconds_per_tenant(backend: str) -> None:
    async with client_for(demo(backend)) as client:
        codes = [(await ping(client, "t1")).status_code for _ in range(4)]
        other = await ping(client, "t2")
    assert codes == [200, 200, 200, 429]
    assert other.status_code == 200 and other.json()["result"] == {"pong": True}
    assert other.json()["metadata"]["rate_limit"]["limit"] == 3


async def test_counter_incr_with_a_key_is_replayed(backend: str) -> None:
    async with client_for(demo(backend)) as client:
        body = envelope("rpc.v2/Counter/incr", {"by": 5})
        headers = {"idempotency-key": "demo-1", "x-tenant-id": "idem"}
        first = await client.post(RPC, json=body, headers=headers)
        second = await client.post(RPC, json=body, headers=headers)
        fresh = await client.post(RPC, json=body, headers={"x-tenant-id": "idem"})
    assert first.status_code == 200 and second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert fresh.json()["result"]["value"] == first.json()["result"]["value"] + 5


@pytest.mark.redis
async def test_two_demo_instances_share_redis(redis_url: str) -> None:
    a = client_for(demo(redis_url))
    b = client_for(demo(redis_url))
    body = envelope("rpc.v2/Counter/incr", {"by": 1})
    headers = {"idempotency-key": "shared-1"}
    async with a, b:
        first = await a.post(RPC, json=body, headers=headers)
        second = await b.post(RPC, json=body, headers=headers)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content


async def test_counter_incr_with_a_qos_key_and_a_conflicting_payload(backend: str) -> None:
    async with client_for(demo(backend)) as client:
        qos = {"idempotency_key": "demo-q"}
        first = await client.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 2}, qos=qos))
        replay = await client.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 2}, qos=qos))
        other = await client.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 3}, qos=qos))
    assert first.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert other.status_code == 422 and other.json()["error"]["code"] == 4011
