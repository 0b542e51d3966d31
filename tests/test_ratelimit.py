"""RateLimitMiddleware through the real stack, on memory and on a real Redis."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.ratelimit import (
    RateLimitMiddleware,
    RateLimitPolicy,
    policies_from_registry,
)
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import RPC, client_for, envelope
from tests.fixtures_redis import RedisServer
from tests.rl_idem_helpers import EnvelopeLayer, Services

pytestmark = pytest.mark.anyio

PING = "rpc.v2/Limited/ping"
RL = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def rpc_app(services: Services, **rl: Any) -> Any:
    rl.setdefault("policies", [RateLimitPolicy("ping", "3/10 seconds", methods=(PING,))])
    return build_stack(services.dispatcher(), [
        Layer.of(ErrorMappingMiddleware),
        Layer.of(EnvelopeLayer),
        Layer.of(RateLimitMiddleware, **rl),
    ])


async def call(client: httpx.AsyncClient, method: str = PING, tenant: str | None = "acme",
               **headers: str) -> httpx.Response:
    h = dict(headers)
    if tenant is not None:
        h["x-tenant-id"] = tenant
    return await client.post(RPC, json=envelope(method, {}), headers=h)


def rl_header(resp: httpx.Response) -> dict[str, Any]:
    m = RL.match(resp.headers["ratelimit"])
    assert m, resp.headers["ratelimit"]
    return {"name": m["name"], "r": int(m["r"]), "t": int(m["t"])}


async def test_admitted_request_reports_its_quota(backend: str) -> None:
    async with client_for(rpc_app(Services(), storage=backend)) as client:
        before = time.time()
        resp = await call(client)
    assert resp.status_code == 200
    assert resp.json()["result"] == {"pong": True}
    assert resp.headers["ratelimit-policy"] == '"ping";q=3;w=10'
    rl = rl_header(resp)
    assert rl["name"] == "ping" and rl["r"] == 2 and 0 <= rl["t"] <= 10
    meta = resp.json()["metadata"]["rate_limit"]
    assert meta["limit"] == 3 and meta["remaining"] == 2
    assert before * 1000 <= meta["reset_at_ms"] <= (before + 11) * 1000
    assert "ratelimit-limit" not in resp.headers


async def test_over_quota_is_429_with_retry_after_equal_to_t(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, storage=backend)) as client:
        codes = [(await call(client)).status_code for _ in range(3)]
        resp = await call(client)
    assert codes == [200, 200, 200]
    assert resp.status_code == 429
    body = resp.json()
    assert body["aduib_rpc"] == "2.0" and body["status"] == "error" and body["id"]
    assert body["error"]["code"] == 5020 and body["error"]["name"] == "RATE_LIMITED"
    rl = rl_header(resp)
    assert rl["r"] == 0 and 1 <= rl["t"] <= 10
    assert int(resp.headers["retry-after"]) == rl["t"]
    assert resp.headers["ratelimit-policy"] == '"ping";q=3;w=10'
    meta = body["metadata"]["rate_limit"]
    assert meta == {"limit": 3, "remaining": 0, "reset_at_ms": meta["reset_at_ms"]}
    assert meta["reset_at_ms"] / 1000 <= time.time() + int(resp.headers["retry-after"]) + 1
    assert services.calls["ping"] == 3  # the rejected call never reached the handler


async def test_other_tenant_is_unaffected(backend: str) -> None:
    async with client_for(rpc_app(Services(), storage=backend)) as client:
        for _ in range(3):
            await call(client, tenant="acme")
        assert (await call(client, tenant="acme")).status_code == 429
        other = await call(client, tenant="globex")
        default = await call(client, tenant=None)
    assert other.status_code == 200 and rl_header(other)["r"] == 2
    assert default.status_code == 200


@pytest.mark.parametrize("method,status", [("rpc.v2/Echo/fail", 400),
                                           ("rpc.v2/Echo/crash", 500)])
async def test_headers_survive_a_failing_handler(backend: str, method: str, status: int) -> None:
    policy = RateLimitPolicy("echo", "5/minute", services=("Echo",))
    async with client_for(rpc_app(Services(), storage=backend, policies=[policy])) as client:
        resp = await call(client, method=method)
    assert resp.status_code == status
    assert resp.json()["status"] == "error"
    assert resp.headers["ratelimit-policy"] == '"echo";q=5;w=60'
    assert rl_header(resp)["r"] == 4
    assert resp.json()["metadata"]["rate_limit"]["remaining"] == 4


async def test_unmatched_method_is_untouched(backend: str) -> None:
    async with client_for(rpc_app(Services(), storage=backend)) as client:
        resp = await call(client, method="rpc.v2/Counter/incr")
    assert resp.status_code == 200
    assert "ratelimit" not in resp.headers and "ratelimit-policy" not in resp.headers
    assert "rate_limit" not in resp.json()["metadata"]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
async def test_every_strategy_enforces_the_limit(backend: str, strategy: str) -> None:
    policy = RateLimitPolicy("ping", "2/minute", methods=(PING,))
    app = rpc_app(Services(), storage=backend, strategy=strategy, policies=[policy])
    async with client_for(app) as client:
        codes = [(await call(client)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_cost_weighs_requests(backend: str) -> None:
    policy = RateLimitPolicy("heavy", "3/minute", methods=(PING,), cost=2)
    async with client_for(rpc_app(Services(), storage=backend, policies=[policy])) as client:
        first = await call(client)
        second = await call(client)
    assert first.status_code == 200 and rl_header(first)["r"] == 1
    assert second.status_code == 429


async def test_partition_by_principal_and_method(backend: str) -> None:
    policy = RateLimitPolicy("pm", "1/minute", services=("Limited", "Counter"),
                             key_by=("principal", "method"))
    async with client_for(rpc_app(Services(), storage=backend, policies=[policy])) as client:
        a = await call(client)
        b = await call(client, method="rpc.v2/Counter/incr")  # other method: own bucket
        c = await call(client, tenant="other")  # same principal+method: shared bucket
    assert (a.status_code, b.status_code, c.status_code) == (200, 200, 429)


async def test_untrusted_client_cannot_change_its_bucket_with_forwarded_headers(
    backend: str,
) -> None:
    policy = RateLimitPolicy("ip", "1/minute", methods=(PING,), key_by=("client",))
    app = rpc_app(Services(), storage=backend, policies=[policy],
                  trusted_proxies=["10.0.0.0/8"])
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await call(client, **{"x-forwarded-for": "198.51.100.1"})
        second = await call(client, **{"x-forwarded-for": "198.51.100.2"})
        third = await call(client, forwarded="for=198.51.100.3")
    assert first.status_code == 200
    assert second.status_code == 429 and third.status_code == 429


async def test_trusted_proxy_forwarded_address_is_the_bucket(backend: str) -> None:
    policy = RateLimitPolicy("ip", "1/minute", methods=(PING,), key_by=("client",))
    app = rpc_app(Services(), storage=backend, policies=[policy],
                  trusted_proxies=["10.0.0.0/8"])
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        a1 = await call(client, **{"x-forwarded-for": "198.51.100.1, 10.0.0.9"})
        b1 = await call(client, **{"x-forwarded-for": "198.51.100.2"})
        a2 = await call(client, **{"x-forwarded-for": "spoofed, 198.51.100.1, 10.0.0.9"})
        c1 = await call(client, forwarded='for="[2001:db8::1]:4711";proto=https')
        c2 = await call(client, forwarded="for=192.0.2.9, for=\"[2001:db8::1]\"")
    assert (a1.status_code, b1.status_code, a2.status_code) == (200, 200, 429)
    assert (c1.status_code, c2.status_code) == (200, 429)


async def test_legacy_headers_when_asked(backend: str) -> None:
    async with client_for(rpc_app(Services(), storage=backend, legacy_headers=True)) as client:
        resp = await call(client)
    assert resp.headers["ratelimit-limit"] == "3"
    assert resp.headers["ratelimit-remaining"] == "2"
    assert 0 <= int(resp.headers["ratelimit-reset"]) <= 10


async def test_works_alone_around_a_plain_starlette_app(backend: str) -> None:
    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    app = RateLimitMiddleware(
        Starlette(routes=[Route("/hello", hello), Route("/free", hello)]),
        policies=[RateLimitPolicy("hello", "1/minute", paths=("/hello",), key_by=("client",))],
        storage=backend,
    )
    async with client_for(app) as client:
        ok = await client.get("/hello")
        refused = await client.get("/hello")
        free = await client.get("/free")
    assert ok.status_code == 200 and ok.json() == {"hello": "world"}
    assert ok.headers["ratelimit"].startswith('"hello";r=0;t=')
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"]["code"] == 5020 and body["metadata"]["rate_limit"]["remaining"] == 0
    assert refused.headers["retry-after"] and refused.headers["ratelimit-policy"]
    assert free.status_code == 200 and "ratelimit" not in free.headers


async def test_policies_from_registry() -> None:
    services = Services()
    services.registry.register("rpc.v2/Other/op", lambda data: {}, rate_limit="1/minute")
    policies = policies_from_registry(services.registry)
    assert [(p.name, p.methods, p.limit) for p in policies] == [
        ("Other.op", ("rpc.v2/Other/op",), "1/minute")]
    async with client_for(rpc_app(services, policies=policies)) as client:
        codes = [(await call(client, method="rpc.v2/Other/op")).status_code for _ in range(2)]
    assert codes == [200, 429]


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        RateLimitPolicy("x", "1/minute", key_by=("ip",))
    with pytest.raises(ValueError):
        RateLimitPolicy("x", "1/minute", cost=0)
    with pytest.raises(ValueError):
        RateLimitMiddleware(Starlette(), strategy="leaky-bucket")
    with pytest.raises(ValueError):
        RateLimitMiddleware(Starlette(), policies=[RateLimitPolicy("a", "1/minute")] * 2)



def test_policy_items_use_limits_own_storage_keys() -> None:
    """The layer memoises limits' key_for: same keys (shared Redis buckets), bounded memory."""
    from limits import parse

    from aduib_asgi.middleware import ratelimit

    layer = RateLimitMiddleware(Starlette(), policies=[RateLimitPolicy("p", "3/10 seconds")])
    item, plain = layer.policies[0].item, parse("3/10 seconds")
    for ids in (("p", "acme"), ("p", "acme"), ("p", "b%2Fc", "x")):
        assert item.key_for(*ids) == plain.key_for(*ids)
    assert item == plain and item.get_expiry() == 10 and str(item) == str(plain)
    for i in range(ratelimit._CACHE_MAX + 10):
        assert item.key_for("p", str(i)) == plain.key_for("p", str(i))
    assert len(item._keys) <= ratelimit._CACHE_MAX  # type: ignore[attr-defined]

# -- several instances, outages ---------------------------------------------------------


@pytest.mark.redis
async def test_two_instances_share_the_limit_through_redis(redis_url: str) -> None:
    a = client_for(rpc_app(Services(), storage=redis_url))
    b = client_for(rpc_app(Services(), storage=redis_url))
    async with a, b:
        codes = [(await call(c)).status_code for c in (a, b, a)]
        refused = await call(b)
    assert codes == [200, 200, 200]
    assert refused.status_code == 429


@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_killed_then_back(own_redis: RedisServer, fail_open: bool) -> None:
    errors: list[BaseException] = []
    app = rpc_app(Services(), storage=own_redis.url, timeout=0.5, fail_open=fail_open,
                  on_storage_error=errors.append)
    async with client_for(app) as client:
        assert (await call(client)).status_code == 200
        own_redis.kill()
        started = time.monotonic()
        down = await call(client)
        elapsed = time.monotonic() - started
        own_redis.start()
        back = await call(client)
    assert elapsed < 3.0  # bounded by the storage timeout, never a hang
    assert errors
    if fail_open:
        assert down.status_code == 200 and down.json()["result"] == {"pong": True}
        assert "ratelimit" not in down.headers
    else:
        assert down.status_code == 503
        assert down.json()["error"]["code"] == 5002 and down.headers["retry-after"] == "1"
    assert back.status_code == 200 and rl_header(back)["r"] == 2  # a fresh server


@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [True, False])
async def test_hung_redis_is_bounded_by_the_timeout(own_redis: RedisServer,
                                                    fail_open: bool) -> None:
    app = rpc_app(Services(), storage=own_redis.url, timeout=0.3, fail_open=fail_open)
    async with client_for(app) as client:
        assert (await call(client)).status_code == 200
        own_redis.pause()
        try:
            started = time.monotonic()
            hung = await call(client)
            elapsed = time.monotonic() - started
        finally:
            own_redis.resume()
        back = await call(client)
    assert elapsed < 3.0
    assert hung.status_code == (200 if fail_open else 503)
    assert back.status_code == 200 and "ratelimit" in back.headers


async def test_several_policies_are_all_reported_and_all_enforced(backend: str) -> None:
    policies = [RateLimitPolicy("burst", "2/minute", methods=(PING,)),
                RateLimitPolicy("all", "10/minute")]
    async with client_for(rpc_app(Services(), storage=backend, policies=policies)) as client:
        first = await call(client)
        await call(client)
        refused = await call(client)
    assert first.headers["ratelimit-policy"] == '"burst";q=2;w=60, "all";q=10;w=60'
    assert re.fullmatch(r'"burst";r=1;t=\d+, "all";r=9;t=\d+', first.headers["ratelimit"])
    assert first.json()["metadata"]["rate_limit"]["limit"] == 2  # the tightest one
    assert refused.status_code == 429
    assert refused.json()["error"]["details"][0]["metadata"]["policy"] == "burst"
    assert refused.headers["ratelimit"].startswith('"burst";r=0;t=')
