"""Stored client-driven state is bounded in bytes per tenant and in total (OPERATIONS.md §5).

One tenant's keys never evict another tenant's record; at a bound new work gets
429 / 5021 with ``Retry-After``; a task idempotency key reused with other params
or method is 422 / 4011; memory and a real Redis.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import httpx
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.storage import StoredResponse, idempotency_store_from_url
from aduib_asgi.storage.budget import BudgetExceeded, ByteBudget
from aduib_asgi.storage.ratelimit import BudgetedMemoryStorage
from tests.conftest import RPC, client_for, envelope
from tests.rl_idem_helpers import Services
from tests.test_idempotency import rpc_app
from tests.test_tasks_support import TS, build_app, lifespan, submit, wait_terminal

pytestmark = pytest.mark.anyio


def demo(backend: str, **config: Any) -> Any:
    return build_demo_app(DemoConfig(redis_url=None if backend == "memory://" else backend,
                                     **config))


async def incr(client: httpx.AsyncClient, key: str, tenant: str) -> httpx.Response:
    return await client.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 1}),
                             headers={"idempotency-key": key, "x-tenant-id": tenant})


async def test_another_tenants_keys_never_evict_a_stored_record() -> None:
    """Issue 13 3(a): 10,001 keys of one tenant; the victim's retry still replays."""
    async with client_for(demo("memory://")) as client:
        first = await incr(client, "victim-key", "victim")
        assert first.status_code == 200 and first.json()["result"]["value"] == 1

        async def flood(start: int) -> None:
            for i in range(start, 10_001, 8):
                r = await client.post(RPC, json=envelope("rpc.v2/Echo/echo", {"i": i}),
                                      headers={"idempotency-key": f"k{i}",
                                               "x-tenant-id": "attacker"})
                assert r.status_code in (200, 429), r.text

        async with anyio.create_task_group() as tg:
            for start in range(8):
                tg.start_soon(flood, start)
        retry = await incr(client, "victim-key", "victim")
        fresh = await client.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": 1}),
                                  headers={"x-tenant-id": "victim"})
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert fresh.json()["result"]["value"] == 2  # incr ran once for the key, once fresh


async def call(client: httpx.AsyncClient, key: str, tenant: str,
               by: int = 1) -> httpx.Response:
    return await client.post(RPC, json=envelope("rpc.v2/Counter/incr", {"by": by}),
                             headers={"idempotency-key": key, "x-tenant-id": tenant})


def _refused(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == 5021
    assert int(r.headers["retry-after"]) >= 1


async def test_a_tenant_at_its_byte_budget_is_refused_others_are_not(backend: str) -> None:
    services = Services()
    store = idempotency_store_from_url(backend, per_tenant=4000, total=1_000_000)
    async with client_for(rpc_app(services, store=store, max_body_size=500)) as client:
        codes = [(await call(client, f"a{i}", "a")).status_code for i in range(20)]
        refused = await call(client, "a-late", "a")
        other = await call(client, "b1", "b")
        again = await call(client, "a0", "a")  # a stored record is still replayed
    assert codes[0] == 200 and 429 in codes  # ~600 bytes a record: full within 20
    admitted = codes.count(200)
    assert codes == [200] * admitted + [429] * (20 - admitted)
    _refused(refused)
    assert other.status_code == 200
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert services.calls["incr"] == admitted + 1  # refused calls never ran
    await store.aclose()


async def test_the_total_byte_budget_refuses_every_tenant(backend: str) -> None:
    services = Services()
    store = idempotency_store_from_url(backend, per_tenant=1_000_000, total=4000)
    async with client_for(rpc_app(services, store=store, max_body_size=500)) as client:
        codes = [(await call(client, f"k{i}", f"t{i}")).status_code for i in range(20)]
        late = await call(client, "late", "fresh-tenant")
    assert codes[0] == 200 and codes[-1] == 429
    _refused(late)
    assert "server's storage" in late.json()["error"]["message"]
    await store.aclose()


async def test_a_tenant_keeps_one_replay_limit_of_room_for_each_new_key(
        backend: str) -> None:
    """New keys are refused once less than the replay limit is left for the response."""
    services = Services()
    store: Any = idempotency_store_from_url(backend, per_tenant=2_000, total=1_000_000)
    async with client_for(rpc_app(services, store=store, max_body_size=1_000)) as client:
        codes = [(await call(client, f"k{i}", "a")).status_code for i in range(3)]
        refused = await call(client, "k-late", "a")
    used = store.budget.used("a")
    used = await used if not isinstance(used, int) else used
    assert codes[0] == 200 and codes[-1] == 429
    _refused(refused)
    assert used + 600 < 2_000  # a record would fit; its response's room would not
    await store.aclose()


async def test_a_response_past_the_budget_is_kept_as_not_retained(backend: str) -> None:
    """Concurrent keys used the room: the late response is marked, never run again."""
    store = idempotency_store_from_url(backend, per_tenant=1200, total=1_000_000)
    try:
        res = await store.reserve("k", "fp", 10, tenant="a")
        assert res.token is not None
        response = StoredResponse(200, ((b"content-type", b"application/json"),),
                                  b"x" * 2000)
        assert await store.complete("k", res.token, response, 60)
        again = await store.reserve("k", "fp", 10, tenant="a")
        assert again.outcome == "completed" and again.entry is not None
        assert again.entry.response is not None and not again.entry.response.retained
        assert again.entry.response.status == 200
    finally:
        await store.aclose()


async def test_memory_budget_accounting_returns_to_zero() -> None:
    budget = ByteBudget(per_tenant=100, total=150)
    budget.charge("a", 100)
    with pytest.raises(BudgetExceeded):
        budget.charge("a", 1)
    with pytest.raises(BudgetExceeded) as total:
        budget.charge("b", 51)
    assert total.value.headers["Retry-After"] == "30"
    budget.charge("b", 50)
    budget.refund("a", 100)
    budget.refund("b", 50)
    assert budget.used_total == 0 and budget.used("a") == 0 and not budget._used


# -- rate-limit buckets ------------------------------------------------------------------


async def test_rate_limit_buckets_of_rotating_tenants_are_bounded() -> None:
    """Limited/ping with a new tenant id each call: past the budget 429 / 5021."""
    app = demo("memory://", total_budget=40_000)
    async with client_for(app) as client:
        codes = []
        for i in range(300):
            r = await client.post(RPC, json=envelope("rpc.v2/Limited/ping", {}),
                                  headers={"x-tenant-id": f"rot-{i}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                _refused(r)
                assert r.json()["error"]["code"] == 5021
    assert codes[0] == 200 and codes.count(429) > 100


async def test_budgeted_storage_refunds_buckets_limits_expired() -> None:
    budget = ByteBudget(per_tenant=10_000, total=10_000)
    storage = BudgetedMemoryStorage(budget=budget)
    await storage.incr("k1", 1)
    held = budget.used_total
    assert held > 0
    await anyio.sleep(1.2)  # the 1 s window has passed
    storage.memory.refund_expired()
    assert budget.used_total == 0


async def test_expired_buckets_give_their_bytes_back_with_no_further_rate_limit_traffic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client rotating tenant ids filled the shared budget with buckets; once their
    windows passed, nothing refunded them (only a refused *bucket* did), so idempotency
    records and tasks - the same budget - stayed refused."""
    from aduib_asgi.storage import ratelimit as rl

    monkeypatch.setattr(rl, "SWEEP_S", 0.1)
    budget = ByteBudget(per_tenant=10**9, total=200_000)
    storage = BudgetedMemoryStorage(budget=budget)
    for i in range(300):
        await storage.incr(f"rot-{i}", 1)
    assert budget.used_total > 150_000
    with pytest.raises(BudgetExceeded):
        budget.charge("other", 100_000, "an idempotency record")
    await anyio.sleep(1.6)  # windows over; no rate-limit call since
    assert budget.used_total == 0 and not storage.memory._charged
    budget.charge("other", 100_000, "an idempotency record")


async def test_a_refused_bucket_refunds_only_what_expired_without_scanning_live_ones() -> None:
    budget = ByteBudget(per_tenant=10**9, total=60_000)
    storage = BudgetedMemoryStorage(budget=budget)
    for i in range(50):
        await storage.incr(f"live-{i}", 60)
    await storage.incr("short", 1)
    live_bytes = budget.used_total
    await anyio.sleep(1.2)
    seen: list[str] = []
    real_get = storage.memory.expirations.get

    class Watch(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            seen.append(key)
            return real_get(key, default)

    storage.memory.expirations = Watch(storage.memory.expirations)
    with contextlib.suppress(BudgetExceeded):
        for i in range(1000):
            await storage.incr(f"new-{i}", 60)
    # the expired bucket was refunded; the live ones were never looked at for it
    assert "short" not in storage.memory._charged
    assert not any(k.startswith("live-") for k in seen)
    assert all(storage.memory.storage[f"live-{i}"] == 1 for i in range(50))
    assert budget.used_total <= 60_000 and live_bytes > 0


# -- tasks -----------------------------------------------------------------------------


async def test_task_key_reused_with_other_params_or_method_is_422(backend: str) -> None:
    app, _, h = build_app(backend)
    h.gate.set()
    async with lifespan(app), client_for(app) as c:
        first = await submit(c, "rpc.v2/T/order", {"tag": "a"}, idempotency_key="tk")
        same = await submit(c, "rpc.v2/T/order", {"tag": "a"}, idempotency_key="tk")
        params = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/order",
                                                   "params": {"tag": "b"},
                                                   "idempotency_key": "tk"})
        method = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/ok",
                                                   "params": {"tag": "a"},
                                                   "idempotency_key": "tk"})
    assert same["task_id"] == first["task_id"]
    for r in (params, method):
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == 4011
        assert first["task_id"] not in r.text


async def test_task_submissions_past_the_tenant_budget_are_429(backend: str) -> None:
    app, _, h = build_app(backend, store_options={"per_tenant": 6000, "total": 1_000_000})
    async with lifespan(app), client_for(app) as c:
        codes = []
        for i in range(10):
            r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/block",
                                                  "params": {"pad": "p" * 1000, "i": i}},
                             headers={"x-tenant-id": "a"})
            codes.append(r.status_code)
            if r.status_code == 429:
                _refused(r)
        other = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/ok"},
                             headers={"x-tenant-id": "b"})
        h.gate.set()
    assert codes[0] == 200 and codes[-1] == 429
    assert other.status_code == 200


async def test_a_task_result_past_the_budget_fails_with_5021_not_retained(
        backend: str) -> None:
    app, _, _ = build_app(backend, store_options={"per_tenant": 5000, "total": 1_000_000})
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ok", {"pad": "x"})
        small = await wait_terminal(c, sub["task_id"])
        big = await submit(c, "rpc.v2/T/ok", {"pad": "y" * 2000})
        # the record (params) fits; its result ({"echo": params}) takes it past 5000
        done = await wait_terminal(c, big["task_id"])
    assert small["status"] == "succeeded"
    assert done["status"] == "failed" and done.get("result") is None
    assert done["error"]["code"] == 5021 and "not retained" in done["error"]["message"]


# -- Redis outage (issue 17): task operations answer 503 / 5002, never 500 -------------


@pytest.mark.redis
async def test_task_operations_answer_503_during_a_redis_outage_and_recover(
        own_redis: Any) -> None:
    from tests.fixtures_redis import RedisServer

    server: RedisServer = own_redis
    app, _, h = build_app(server.url)
    h.gate.set()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/order", {"tag": "before"})
        await wait_terminal(c, sub["task_id"])
        server.kill()
        calls = {
            "Submit": {"target_method": "rpc.v2/T/ok", "params": {}},
            "Query": {"task_id": sub["task_id"]},
            "Cancel": {"task_id": sub["task_id"]},
            "Subscribe": {"task_id": sub["task_id"]},
        }
        for name, body in calls.items():
            with anyio.fail_after(10):
                r = await c.post(TS + name, json=body)
            assert r.status_code == 503, (name, r.status_code, r.text)
            assert r.json()["error"]["code"] == 5002 and r.headers["retry-after"] == "1"
        server.start()
        with anyio.fail_after(5):  # service is back within 5 s
            while True:
                # the test server keeps nothing across the restart: the old id is 404
                q = await c.post(TS + "Query", json={"task_id": sub["task_id"]})
                if q.status_code == 404:
                    break
                assert q.status_code == 503, q.text
                await anyio.sleep(0.1)
        after = await submit(c, "rpc.v2/T/order", {"tag": "after"})
        assert (await wait_terminal(c, after["task_id"]))["status"] == "succeeded"


async def test_a_live_moving_window_sheds_its_expired_entries_in_the_sweep() -> None:
    storage = BudgetedMemoryStorage(budget=ByteBudget(per_tenant=10**9, total=10**9))
    for _ in range(50):
        assert await storage.acquire_entry("mw", 1000, 1)
    await anyio.sleep(1.2)  # those 50 entries expired; the window is used again
    assert await storage.acquire_entry("mw", 1000, 1)
    storage.memory.refund_expired()
    assert len(storage.memory.events["mw"]) == 1 and "mw" in storage.memory._charged
