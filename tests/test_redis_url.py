"""One Redis URL for every store (aduib_asgi.storage.redis_url): the URL forms, the
``limits`` mapping, and every store's multi-key scripts on a real single Redis,
Sentinel and Redis Cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aduib_asgi.middleware.ratelimit import make_limiter
from aduib_asgi.models.tasks import TaskRecord
from aduib_asgi.storage import StoredResponse, idempotency_store_from_url
from aduib_asgi.storage.budget import BudgetExceeded, RedisByteBudget
from aduib_asgi.storage.redis_url import limits_storage, parse_redis_url, redis_client
from aduib_asgi.tasks.redis_store import RedisTaskStore
from aduib_asgi.tasks.store import TaskEntry


def _entry(task_id: str) -> TaskEntry:
    return TaskEntry(record=TaskRecord(task_id=task_id, target_method="rpc.v2/Echo/echo",
                                       tenant_id="t", created_at_ms=0))


def test_single_url() -> None:
    t = parse_redis_url("redis://:s3cret@127.0.0.1:6380/2")
    assert (t.kind, t.password, t.wait_replicas) == ("single", "s3cret", 0)
    assert t.url == "redis://:s3cret@127.0.0.1:6380/2"
    assert parse_redis_url("rediss://h:1/0").kind == "single"


def test_sentinel_url() -> None:
    t = parse_redis_url("redis+sentinel://user:pw@10.0.0.1:26379,10.0.0.2:26380/svc/3"
                        "?wait_timeout_ms=250")
    assert t.kind == "sentinel" and t.service_name == "svc" and t.db == 3
    assert t.locations == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (t.username, t.password) == ("user", "pw")
    assert (t.wait_replicas, t.wait_timeout_ms) == (1, 250)  # Sentinel: wait for 1
    # limits gets its own form: the service as the path, the database as an option,
    # our query parameters removed, the primary only
    uri, options = limits_storage("redis+sentinel://h:1,h:2/svc/3?wait_replicas=0")
    assert uri == "async+redis+sentinel://h:1,h:2/svc"
    assert options == {"use_replicas": False, "db": 3}


def test_cluster_url() -> None:
    t = parse_redis_url("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001?wait_replicas=1")
    assert t.kind == "cluster" and t.wait_replicas == 1 and t.password == "pw"
    assert t.locations == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert t.url == "redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001"
    assert limits_storage("redis+cluster://a:1,b:2?wait_replicas=1") == \
        ("async+redis+cluster://a:1,b:2", {})


@pytest.mark.parametrize("url", [
    "memcached://h:1",
    "redis+sentinel://h:1",  # no service name
    "redis+sentinel://h:1/a/b/c",
    "redis+cluster://h:1/0",  # a cluster has no database
    "redis+cluster://h",  # no port
    "redis://h:1?wait_replicas=x",
    "redis://h:1?wait_timeout_ms=0",
])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)


# -- every store on every topology --------------------------------------------------------


@pytest.fixture(params=["single", "sentinel", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> str:
    if request.param == "single":
        url: str = request.getfixturevalue("redis_url")
        return url
    group: Any = request.getfixturevalue(f"redis_{request.param}")
    group.flushall()
    return str(group.url) + "?wait_replicas=1"


@pytest.mark.anyio
@pytest.mark.redis
async def test_idempotency_store_on_every_topology(any_redis: str) -> None:
    store: Any = idempotency_store_from_url(any_redis, per_tenant=1_000_000, total=10_000_000)
    try:
        first = await store.reserve("k", "fp", 30, tenant="t")
        assert first.outcome == "reserved"
        assert (await store.reserve("k", "fp", 30, tenant="t")).outcome == "in_flight"
        assert await store.renew("k", first.token, 30)
        assert await store.complete("k", first.token, StoredResponse(200, (), b"ok"), 60)
        again = await store.reserve("k", "fp", 30, tenant="t")
        assert again.outcome == "completed" and again.entry.response.body == b"ok"
        assert await store.budget.used("t") > 0
        if "wait_replicas=1" in any_redis:  # the replica acknowledged the result
            assert store.unreplicated == 0
    finally:
        await store.aclose()


@pytest.mark.anyio
@pytest.mark.redis
async def test_task_store_scripts_on_every_topology(any_redis: str) -> None:
    store = RedisTaskStore.from_url(any_redis)
    try:
        entries = [_entry(f"t{i}") for i in range(3)]
        for e in entries:
            await store.create(e, idempotency_key=f"idem-{e.task_id}")
        # the same idempotency key finds the first task
        dup = _entry("other")
        assert (await store.create(dup, idempotency_key="idem-t0")).task_id == "t0"
        assert sorted(await store.orphans()) == ["t0", "t1", "t2"]  # SMEMBERS + MGET
        for e in entries[:2]:
            assert await store.claim(e.task_id, "me", 30)
        await store.renew("me", ["t0", "t1"], 30)  # one script over several leases
        assert await store.orphans() == ["t2"]
        got = await store.get("t0")
        assert got is not None and got.task_id == "t0"
        assert store.unreplicated == 0
    finally:
        await store.aclose()


@pytest.mark.anyio
@pytest.mark.redis
async def test_byte_budget_script_on_every_topology(any_redis: str) -> None:
    client = redis_client(any_redis)
    budget = RedisByteBudget(client, per_tenant=1000, total=100_000)
    try:
        await budget.charge("t", "a", 600, time.time() + 60)
        with pytest.raises(BudgetExceeded):
            await budget.charge("t", "b", 600, time.time() + 60)
        await budget.refund("t", "a")
        await budget.charge("t", "b", 600, time.time() + 60)
        assert await budget.used("t") == 600
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.redis
async def test_rate_limit_storage_on_every_topology(any_redis: str) -> None:
    from limits import parse

    from aduib_asgi.storage.ratelimit import quota_for

    limiter = make_limiter(any_redis, socket_timeout=2, socket_connect_timeout=2)
    quota = quota_for(limiter)
    item = parse("3/10second")
    key = (f"rl-{time.monotonic_ns()}",)
    seen = [(await quota.hit(item, key, 1))[0] for _ in range(5)]
    assert seen == [True] * 3 + [False] * 2
