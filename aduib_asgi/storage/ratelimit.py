"""A rate-limit hit and the quota it leaves, on a ``limits.aio`` limiter.

Every admitted or refused request reports its remaining quota and reset, so
each hit needs the window's state too. ``limits`` answers that with a second
call, ``get_window_stats``, which on a fixed window is two more storage calls
(Redis: two more round trips). :class:`FixedWindowQuota` makes the storage call
``FixedWindowRateLimiter.hit`` makes (``incr``, whose return value is the
window's count) and keeps that count, so within a window one storage call
answers everything; the reset is read from the storage (``get_expiry``) when a
window starts or the remembered one has passed. Windows, counting and expiry
stay ``limits``' own. Other strategies ask ``limits`` with ``get_window_stats``.
"""

from __future__ import annotations

import time
from typing import Any

from limits import RateLimitItem
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
    """Fixed window: the count from ``incr``, the reset once per window."""

    __slots__ = ("_resets", "max_cached")

    def __init__(self, limiter: FixedWindowRateLimiter, *, max_cached: int = 4096) -> None:
        super().__init__(limiter)
        self.max_cached = max_cached
        self._resets: dict[str, float] = {}

    async def hit(self, item: RateLimitItem, ids: tuple[str, ...],
                  cost: int) -> tuple[bool, int, float]:
        storage: Any = self.limiter.storage
        key = item.key_for(*ids)
        count: int = await storage.incr(key, item.get_expiry(), amount=cost)
        reset = self._resets.get(key)
        # count == cost: this hit opened the window (limits sets its expiry then);
        # a remembered reset in the past belongs to a window that has ended
        if reset is None or count == cost or reset <= time.time():
            reset = float(await storage.get_expiry(key))
            resets = self._resets
            if len(resets) >= self.max_cached and key not in resets:
                resets.clear()
            resets[key] = reset
        amount = item.amount
        return count <= amount, (amount - count if count < amount else 0), reset


def quota_for(limiter: RateLimiter) -> WindowQuota:
    """The quickest exact way to hit ``limiter`` and read the quota it leaves."""
    if type(limiter) is FixedWindowRateLimiter:
        return FixedWindowQuota(limiter)
    return WindowQuota(limiter)
