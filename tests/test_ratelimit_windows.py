"""A hit and the quota it leaves: the same answers as limits' own calls, fewer storage calls."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from limits import parse
from limits.aio.strategies import STRATEGIES

from aduib_asgi.middleware.ratelimit import make_limiter
from aduib_asgi.storage.ratelimit import FixedWindowQuota, WindowQuota, quota_for

pytestmark = pytest.mark.anyio


class CountingStorage:
    """Counts the calls a limiter makes to its storage (wraps a real limits storage)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attr(*args, **kwargs)

        return call


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_reports_what_limits_itself_reports(backend: str, strategy: str) -> None:
    """After every hit (admitted and refused): limits' verdict, remaining and reset."""
    limiter = make_limiter(backend, strategy)
    quota = quota_for(limiter)
    item = parse("3/10 seconds")
    verdicts = []
    for _ in range(5):
        ok, remaining, reset = await quota.hit(item, ("p", "acme"), 1)
        own_reset, own_remaining = await limiter.get_window_stats(item, "p", "acme")
        verdicts.append(ok)
        assert remaining == own_remaining
        if strategy == "fixed-window":  # the others report limits' own call as it is
            assert abs(reset - own_reset) <= 1.0  # Redis reports its TTL in whole seconds
            assert time.time() - 1 <= reset <= time.time() + 11
    assert verdicts == [True, True, True, False, False]


async def test_fixed_window_storage_calls(backend: str) -> None:
    """One call within a window on memory (reset remembered), two on shared storage."""
    limiter = make_limiter(backend, "fixed-window")
    quota = quota_for(limiter)
    assert isinstance(quota, FixedWindowQuota)
    storage = CountingStorage(limiter.storage)
    limiter.storage = storage  # type: ignore[assignment]
    item = parse("100/minute")
    await quota.hit(item, ("p", "acme"), 1)
    assert storage.calls == ["incr", "get_expiry"]  # the window starts: read its reset
    storage.calls.clear()
    for _ in range(10):
        await quota.hit(item, ("p", "acme"), 1)
    per_hit = ["incr"] if backend == "memory://" else ["incr", "get_expiry"]
    assert storage.calls == per_hit * 10  # limits' hit + get_window_stats: 3 calls each
    storage.calls.clear()
    await quota.hit(item, ("p", "other"), 1)  # another bucket has a window of its own
    assert storage.calls == ["incr", "get_expiry"]


async def test_fixed_window_reads_the_new_reset_when_the_window_rolls_over(backend: str) -> None:
    limiter = make_limiter(backend, "fixed-window")
    quota = quota_for(limiter)
    item = parse("2/second")
    _, _, first_reset = await quota.hit(item, ("p", "acme"), 1)
    ok, remaining, _ = await quota.hit(item, ("p", "acme"), 1)
    assert (ok, remaining) == (True, 0)
    assert not (await quota.hit(item, ("p", "acme"), 1))[0]
    await anyio.sleep(max(0.0, first_reset - time.time()) + 1.1)
    ok, remaining, reset = await quota.hit(item, ("p", "acme"), 1)
    own_reset, _ = await limiter.get_window_stats(item, "p", "acme")
    assert (ok, remaining) == (True, 1)
    assert reset > first_reset and abs(reset - own_reset) <= 1.0


async def test_fixed_window_sees_a_cleared_bucket(backend: str) -> None:
    limiter = make_limiter(backend, "fixed-window")
    quota = quota_for(limiter)
    item = parse("5/minute")
    for _ in range(3):
        await quota.hit(item, ("p", "acme"), 1)
    await limiter.clear(item, "p", "acme")
    ok, remaining, reset = await quota.hit(item, ("p", "acme"), 1)
    own_reset, own_remaining = await limiter.get_window_stats(item, "p", "acme")
    assert (ok, remaining) == (True, own_remaining) == (True, 4)
    assert abs(reset - own_reset) <= 1.0


async def test_cost_counts_against_the_quota(backend: str) -> None:
    limiter = make_limiter(backend, "fixed-window")
    quota = quota_for(limiter)
    item = parse("5/minute")
    assert (await quota.hit(item, ("p", "acme"), 2))[:2] == (True, 3)
    assert (await quota.hit(item, ("p", "acme"), 2))[:2] == (True, 1)
    assert (await quota.hit(item, ("p", "acme"), 2))[:2] == (False, 0)


@pytest.mark.redis
async def test_a_window_another_instance_started_is_read_from_redis(redis_url: str) -> None:
    """Instance A cached a window that ended; B starts the next one; A reports B's reset."""
    a, b = make_limiter(redis_url, "fixed-window"), make_limiter(redis_url, "fixed-window")
    qa, qb = quota_for(a), quota_for(b)
    item = parse("10/second")
    _, _, old_reset = await qa.hit(item, ("p", "acme"), 1)
    await anyio.sleep(max(0.0, old_reset - time.time()) + 1.1)
    await qb.hit(item, ("p", "acme"), 1)  # B starts the new window (count 1)
    ok, remaining, reset = await qa.hit(item, ("p", "acme"), 1)  # A sees count 2
    own_reset, _ = await a.get_window_stats(item, "p", "acme")
    assert (ok, remaining) == (True, 8)
    assert reset > old_reset and abs(reset - own_reset) <= 1.0


async def test_other_strategies_ask_limits_for_the_window() -> None:
    for strategy in ("moving-window", "sliding-window-counter"):
        quota = quota_for(make_limiter("memory://", strategy))
        assert type(quota) is WindowQuota


async def test_the_reset_cache_is_bounded() -> None:
    quota = quota_for(make_limiter("memory://", "fixed-window"))
    assert isinstance(quota, FixedWindowQuota)
    item = parse("5/minute")
    for i in range(quota.max_cached + 50):
        await quota.hit(item, ("p", str(i)), 1)
    assert len(quota._resets) <= quota.max_cached


@pytest.mark.redis
async def test_a_bucket_cleared_and_restarted_elsewhere_reports_the_new_reset(
        redis_url: str) -> None:
    """Another instance clears the bucket and opens a new window: the reset moves later."""
    a, b = make_limiter(redis_url, "fixed-window"), make_limiter(redis_url, "fixed-window")
    qa, qb = quota_for(a), quota_for(b)
    item = parse("5/10 seconds")
    _, _, first = await qa.hit(item, ("p", "acme"), 1)
    await anyio.sleep(2.1)
    await b.clear(item, "p", "acme")
    await qb.hit(item, ("p", "acme"), 1)
    await qb.hit(item, ("p", "acme"), 1)
    ok, remaining, reset = await qa.hit(item, ("p", "acme"), 1)  # count 3: not a new window
    own_reset, _ = await a.get_window_stats(item, "p", "acme")
    assert (ok, remaining) == (True, 2)
    assert reset >= first + 1.5 and abs(reset - own_reset) <= 1.0  # never the old reset


async def test_memory_sees_a_bucket_cleared_and_refilled_by_another_user_of_its_storage() -> None:
    """Two limiters over one memory storage: a clear + refill by the other is noticed."""
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import FixedWindowRateLimiter

    storage = MemoryStorage()
    a, b = FixedWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    qa = quota_for(a)
    item = parse("5/10 seconds")
    for _ in range(3):
        _, _, first = await qa.hit(item, ("p", "acme"), 1)
    await anyio.sleep(1.1)
    await b.clear(item, "p", "acme")
    await b.hit(item, "p", "acme")
    ok, remaining, reset = await qa.hit(item, ("p", "acme"), 1)  # count 2 after 3: restarted
    own_reset, _ = await a.get_window_stats(item, "p", "acme")
    assert (ok, remaining) == (True, 3)
    assert reset == own_reset and reset >= first + 1.0


async def test_a_limiter_assigned_to_the_middleware_is_the_one_used() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
    from tests.conftest import client_for

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    policy = RateLimitPolicy("p", "5/minute", key_by=("client",))
    mw = RateLimitMiddleware(Starlette(routes=[Route("/", ok)]), policies=[policy])
    replacement = make_limiter("memory://", "moving-window")
    mw.limiter = replacement
    async with client_for(mw) as client:
        resp = await client.get("/")
    assert mw.limiter is replacement and type(mw.quota) is WindowQuota
    assert resp.headers["ratelimit"] == '"p";r=4;t=60'
    _, remaining = await replacement.get_window_stats(mw.policies[0].item, "p", "127.0.0.1")
    assert remaining == 4


async def test_memory_hits_schedule_no_task_and_never_yield() -> None:
    """memory:// counts in limits' synchronous storage: no task per hit, no suspension.

    limits.aio's memory storage schedules an expiry task whenever the previous one
    has run, i.e. once per request under a server, and that task scans every bucket.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    created: list[Any] = []
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kw)

    for strategy in sorted(STRATEGIES):
        limiter = make_limiter("memory://", strategy)
        quota = quota_for(limiter)
        item = parse("100/minute")
        loop.set_task_factory(counting)
        try:
            for i in range(20):
                coro = quota.hit(item, ("p", "acme"), 1)
                with pytest.raises(StopIteration) as done:  # completes on its first step
                    coro.send(None)
                assert done.value.value[:2] == (True, 99 - i), strategy
                await asyncio.sleep(0)  # let the loop run between requests, as a server does
        finally:
            loop.set_task_factory(factory)
        assert created == [], strategy


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_memory_admits_exactly_the_limit_under_concurrency(strategy: str) -> None:
    """150 concurrent hits on a limit of 100: exactly 100 admitted, remaining never repeats."""
    quota = quota_for(make_limiter("memory://", strategy))
    item = parse("100/minute")
    results: list[tuple[bool, int, float]] = []

    async def one() -> None:
        await anyio.sleep(0)
        results.append(await quota.hit(item, ("p", "acme"), 1))

    async with anyio.create_task_group() as tg:
        for _ in range(150):
            tg.start_soon(one)
    admitted = [r for r in results if r[0]]
    assert len(admitted) == 100
    assert sorted(r[1] for r in admitted) == list(range(100))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_memory_buckets_are_charged_to_the_budget_for_every_strategy(strategy: str) -> None:
    from aduib_asgi.storage.budget import BudgetExceeded, ByteBudget

    limiter = make_limiter("memory://", strategy, budget=ByteBudget(per_tenant=700, total=10_000))
    quota = quota_for(limiter)
    item = parse("5/minute")
    await quota.hit(item, ("p", "a"), 1)
    assert limiter.storage.budget.used_total > 0  # type: ignore[attr-defined]
    with pytest.raises(BudgetExceeded):  # more buckets than the tenant's bytes allow
        for i in range(10):
            await quota.hit(item, ("p", "k" * 50 + str(i)), 1)


async def test_memory_hits_start_no_thread_and_idle_buckets_are_swept_on_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """limits' sweep of expired buckets runs on the event loop, not a thread per 10 ms."""
    import threading

    import limits.storage.memory

    from aduib_asgi.storage import ratelimit as rl

    started: list[str] = []

    class CountingTimer(threading.Timer):
        def start(self) -> None:
            started.append(self.name)
            super().start()

    monkeypatch.setattr(limits.storage.memory.threading, "Timer", CountingTimer)
    monkeypatch.setattr(rl, "SWEEP_S", 0.05)
    storage = make_limiter("memory://", "fixed-window").storage
    memory = storage.memory  # type: ignore[attr-defined]
    started.clear()  # limits starts (and we cancel) one at construction
    for _ in range(5):
        await storage.incr("idle", 0.5)
        await anyio.sleep(0.03)  # longer than limits' 10 ms thread timer
    assert started == []
    assert memory.storage["idle"] == 5
    await anyio.sleep(0.6)  # expired, and never read again
    await storage.incr("busy", 60)  # traffic elsewhere: a sweep removes the idle bucket
    await anyio.sleep(0.3)
    assert "idle" not in memory.storage and "idle" not in memory.expirations
    assert memory.storage["busy"] == 1 and started == []
