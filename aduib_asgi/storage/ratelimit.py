"""A rate-limit hit and the quota it leaves, on a ``limits.aio`` limiter.

Every admitted or refused request reports its remaining quota and reset, so
each hit needs the window's state too. ``limits`` answers that with a second
call, ``get_window_stats``, which on a fixed window is two more storage calls
(Redis: two more round trips). :class:`FixedWindowQuota` makes the storage call
``FixedWindowRateLimiter.hit`` makes (``incr``, whose return value is the
window's count) and keeps that count, so remaining needs no second call; the
reset is the storage's ``get_expiry`` (on the in-process memory storage,
remembered per window). Windows, counting and expiry stay ``limits``' own.
Other strategies ask ``limits`` with ``get_window_stats``.
"""

from __future__ import annotations

import time
from typing import Any

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter, RateLimiter

__all__ = ["FixedWindowQuota", "WindowQuota", "quota_for"]


class WindowQuota:
    """``hit`` then ``get_window_stats``: works with every ``limits`` strategy."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def hit(self, item: RateLimitItem, ids: tuple[str, ...],
                  cost: int) -> tuple[bool, int, float]:
        """Consume ``cost``: (admitted, remaining, reset as epoch seconds)."""
        ok = await self.limiter.hit(item, *ids, cost=cost)
        reset, remaining = await self.limiter.get_window_stats(item, *ids)
        return ok, remaining, reset


class FixedWindowQuota(WindowQuota):
    """Fixed window: the count from ``incr``; the reset from the storage.

    Shared storages (Redis...) are read for the reset after every hit: other
    instances may clear a bucket and open a new window at any time, and Redis
    reports expiry in whole seconds. The in-process memory storage has exact
    expiries and only this process's users, so there the reset is remembered per
    key and read again only when a window starts (the count equals the cost),
    when the remembered one has passed, or when the count went down (the bucket
    was cleared and refilled by another user of the same storage).
    """

    __slots__ = ("_resets", "max_cached", "remember")

    def __init__(self, limiter: FixedWindowRateLimiter, *, max_cached: int = 4096) -> None:
        super().__init__(limiter)
        self.max_cached = max_cached
        self.remember = isinstance(limiter.storage, MemoryStorage)
        self._resets: dict[str, list[Any]] = {}  # key -> [reset, last count]

    async def hit(self, item: RateLimitItem, ids: tuple[str, ...],
                  cost: int) -> tuple[bool, int, float]:
        storage: Any = self.limiter.storage
        key = item.key_for(*ids)
        count: int = await storage.incr(key, item.get_expiry(), amount=cost)
        amount = item.amount
        remaining = amount - count if count < amount else 0
        if not self.remember:
            return count <= amount, remaining, float(await storage.get_expiry(key))
        known = self._resets.get(key)
        if known is not None and count != cost and count > known[1] and known[0] > time.time():
            known[1] = count  # same window: the remembered reset holds
            return count <= amount, remaining, known[0]
        reset = float(await storage.get_expiry(key))
        resets = self._resets
        if len(resets) >= self.max_cached and key not in resets:
            resets.clear()
        resets[key] = [reset, count]
        return count <= amount, remaining, reset


def quota_for(limiter: RateLimiter) -> WindowQuota:
    """The quickest exact way to hit ``limiter`` and read the quota it leaves."""
    if type(limiter) is FixedWindowRateLimiter:
        return FixedWindowQuota(limiter)
    return WindowQuota(limiter)
