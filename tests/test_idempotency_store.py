"""The idempotency stores' own contract: atomic reserve, owner-only updates, LRU + TTL."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aduib_asgi.storage import IdempotencyStore, StoredResponse, idempotency_store_from_url
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


async def test_memory_lru_evicts_completed_entries_first() -> None:
    store = MemoryIdempotencyStore(max_entries=2)
    for key in ("a", "b"):
        res = await store.reserve(key, "fp", 60)
        assert res.token is not None
        await store.complete(key, res.token, RESP, ttl=60)
    await store.get("a")  # "a" is now the most recently used
    await store.reserve("c", "fp", 60)
    assert await store.get("b") is None
    assert await store.get("a") is not None and len(store) == 2
    # live reservations are never evicted, even past the bound
    store2 = MemoryIdempotencyStore(max_entries=1)
    await store2.reserve("x", "fp", 60)
    await store2.reserve("y", "fp", 60)
    assert await store2.get("x") is not None and await store2.get("y") is not None


def test_store_urls() -> None:
    assert isinstance(idempotency_store_from_url("memory://?max_entries=5"),
                      MemoryIdempotencyStore)
    with pytest.raises(ValueError):
        idempotency_store_from_url("mongodb://x")


@pytest.mark.redis
async def test_a_reserve_whose_reply_comes_too_late_leaves_no_orphan(redis_url: str) -> None:
    """SET NX ran on the server but the caller timed out: the reservation is dropped."""
    store = idempotency_store_from_url(redis_url)
    real_set = store._redis.set  # type: ignore[attr-defined]

    async def late_reply(*args: Any, **kwargs: Any) -> Any:
        result = await real_set(*args, **kwargs)  # executed on the server...
        await anyio.sleep(5)  # ...but the reply arrives after the caller gave up
        return result

    store._redis.set = late_reply  # type: ignore[attr-defined]
    try:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await store.reserve("k", "fp", 30.0)
    finally:
        store._redis.set = real_set  # type: ignore[attr-defined]
    assert await store.get("k") is None  # no orphan in flight
    again = await store.reserve("k", "fp", 30.0)
    assert again.outcome == "reserved"
    await store.aclose()
