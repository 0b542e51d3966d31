"""The idempotency stores' own contract: atomic reserve, owner-only updates, LRU + TTL."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aduib_asgi.storage import IdempotencyStore, StoredResponse, idempotency_store_from_url
from aduib_asgi.storage.budget import BudgetExceeded, ByteBudget
from aduib_asgi.storage.memory import MemoryIdempotencyStore

pytestmark = pytest.mark.anyio

RESP = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"ok":true}')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_reserve_complete_release_contract(backend: str) -> None:
    store: IdempotencyStore = idempotency_store_from_url(backend)
    try:
        first = await store.reserve("k", "fp", 10)
        second = await store.reserve("k", "fp", 10)
        assert first.outcome == "reserved" and first.token
        assert second.outcome == "in_flight" and second.entry is not None
        assert second.entry.fingerprint == "fp"
        assert not await store.complete("k", "not-the-owner", RESP, 60)
        await store.release("k", "not-the-owner")  # ignored: not the owner
        assert await store.renew("k", first.token, 10)
        assert await store.complete("k", first.token, RESP, 60)
        done = await store.reserve("k", "fp", 10)
        assert done.outcome == "completed" and done.entry is not None
        assert done.entry.response == RESP
        assert not await store.renew("k", first.token, 10)

        other = await store.reserve("k2", "fp", 10)
        assert other.token is not None
        await store.release("k2", other.token)
        assert await store.get("k2") is None
        assert (await store.reserve("k2", "fp", 10)).outcome == "reserved"
    finally:
        await store.aclose()


async def test_memory_ttl_and_lease_expiry() -> None:
    clock = Clock()
    store = MemoryIdempotencyStore(clock=clock, hold_reservations=False)
    held = MemoryIdempotencyStore(clock=clock)
    await held.reserve("k", "fp", 5)
    res = await store.reserve("k", "fp", 5)
    assert res.token is not None
    clock.now += 6  # lease ran out without renewal
    assert (await store.reserve("k", "fp", 5)).outcome == "reserved"
    assert (await held.reserve("k", "fp", 5)).outcome == "in_flight"  # held by its owner
    res = await store.reserve("c", "fp", 5)
    assert res.token is not None
    await store.complete("c", res.token, RESP, ttl=30)
    clock.now += 29
    assert (await store.get("c")) is not None
    clock.now += 2
    assert (await store.get("c")) is None


async def test_memory_store_never_evicts_a_live_record_to_make_room() -> None:
    """At ``max_entries`` new keys are refused (429 / 5021); stored records stay."""
    store = MemoryIdempotencyStore(max_entries=2)
    for key in ("a", "b"):
        res = await store.reserve(key, "fp", 60)
        assert res.token is not None
        await store.complete(key, res.token, RESP, ttl=60)
    with pytest.raises(BudgetExceeded) as refused:
        await store.reserve("c", "fp", 60)
    assert refused.value.http_status == 429 and refused.value.code == 5021
    assert refused.value.headers["Retry-After"]
    assert await store.get("a") is not None and await store.get("b") is not None


async def test_memory_store_sweeps_expired_records_and_refunds_their_bytes() -> None:
    clock = Clock()
    budget = ByteBudget(per_tenant=10_000, total=100_000)
    store = MemoryIdempotencyStore(clock=clock, budget=budget)
    res = await store.reserve("k", "fp", 60, tenant="t")
    assert res.token is not None and budget.used("t") > 0
    await store.complete("k", res.token, RESP, ttl=30)
    held = budget.used("t")
    assert held > RESP.size
    clock.now += 31
    await store.reserve("other", "fp", 60, tenant="u")  # any reserve sweeps
    assert budget.used("t") == 0 and len(store) == 1


def test_store_urls() -> None:
    assert isinstance(idempotency_store_from_url("memory://?max_entries=5"),
                      MemoryIdempotencyStore)
    with pytest.raises(ValueError):
        idempotency_store_from_url("mongodb://x")


@pytest.mark.redis
async def test_a_reserve_whose_reply_comes_too_late_leaves_no_orphan(redis_url: str) -> None:
    """SET NX (and its charge) ran on the server but the caller timed out: both dropped."""
    store = idempotency_store_from_url(redis_url)
    redis = store._redis  # type: ignore[attr-defined]
    real_pipeline = redis.pipeline

    def slow_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        async def late_reply(*a: Any, **kw: Any) -> Any:
            result = await real_execute(*a, **kw)  # executed on the server...
            await anyio.sleep(5)  # ...but the reply arrives after the caller gave up
            return result

        pipe.execute = late_reply
        return pipe

    redis.pipeline = slow_pipeline
    try:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await store.reserve("k", "fp", 30.0)
    finally:
        redis.pipeline = real_pipeline
    assert await store.get("k") is None  # no orphan in flight
    assert await store.budget.used("default") == 0  # nor its charge  # type: ignore[attr-defined]
    again = await store.reserve("k", "fp", 30.0)
    assert again.outcome == "reserved"
    await store.aclose()
