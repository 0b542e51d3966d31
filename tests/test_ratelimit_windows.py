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


async def test_fixed_window_uses_one_storage_call_within_a_window(backend: str) -> None:
    """The count comes back from incr; the reset is read once per window, not per request."""
    limiter = make_limiter(backend, "fixed-window")
    storage = CountingStorage(limiter.storage)
    limiter.storage = storage  # type: ignore[assignment]
    quota = quota_for(limiter)
    assert isinstance(quota, FixedWindowQuota)
    item = parse("100/minute")
    await quota.hit(item, ("p", "acme"), 1)
    assert storage.calls == ["incr", "get_expiry"]  # the window starts: read its reset once
    storage.calls.clear()
    for _ in range(10):
        await quota.hit(item, ("p", "acme"), 1)
    assert storage.calls == ["incr"] * 10
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
