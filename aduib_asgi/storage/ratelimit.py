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

:class:`BudgetedMemoryStorage` (``memory://``) is ``limits``' own synchronous
memory storage behind the ``limits.aio`` interface (in-process counting never
waits), its buckets charged to the byte budget of the tenant whose request
created them, so a client rotating keys (tenant ids, addresses, client ids)
cannot grow it without bound: past the budget a new bucket is refused (429 / 5021).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from limits import RateLimitItem
from limits.aio.storage import (
    MemoryStorage,
    MovingWindowSupport,
    SlidingWindowCounterSupport,
    Storage,
)
from limits.aio.strategies import FixedWindowRateLimiter, RateLimiter
from limits.storage import MemoryStorage as SyncMemoryStorage

from aduib_asgi.context import current_context
from aduib_asgi.storage.budget import BudgetExceeded, ByteBudget

__all__ = ["BudgetedMemoryStorage", "FixedWindowQuota", "WindowQuota", "is_memory", "quota_for"]

#: Seconds between sweeps of expired buckets (memory only: a bucket's own expiry is
#: checked on every access, so this never changes a count).
SWEEP_S = 1.0
#: Bytes charged per bucket on top of twice its key (counter, expiry, lock entries).
BUCKET_OVERHEAD = 256


class _BudgetedMemory(SyncMemoryStorage):
    """``limits``' synchronous in-process storage, buckets charged to a :class:`ByteBudget`.

    Windows, counting and expiry stay ``limits``' own: a bucket is charged when a
    request creates it (``incr``, ``acquire_entry``; the sliding window counter
    goes through ``incr``), to the tenant of that request, and refunded once
    ``limits`` has let it expire (checked when a charge is refused, at most once
    a second, so the admitted path costs one dict lookup).
    """

    STORAGE_SCHEME = ["budgeted-memory"]

    def __init__(self, uri: str | None = None, *, budget: ByteBudget | None = None,
                 **options: Any) -> None:
        super().__init__(uri, **options)
        self.timer.cancel()  # limits' first sweep thread: sweeps run on the event loop
        self.budget = budget if budget is not None else ByteBudget()
        self._charged: dict[str, tuple[str, int]] = {}  # key -> (tenant, bytes)
        self._reconciled = 0.0
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    def _MemoryStorage__schedule_expiry(self) -> None:  # limits' hook, called on every hit
        """Run ``limits``' sweep of idle buckets on the event loop, every ``SWEEP_S``.

        ``limits`` starts a thread for it whenever the previous one has ended (every
        10 ms under traffic): the thread start blocks the caller until the OS runs
        it, and the sweep would race the loop's own calls. On the loop it is one
        timer per ``SWEEP_S`` and never concurrent with a hit. Outside a running
        loop, ``limits``' own thread.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            SyncMemoryStorage._MemoryStorage__schedule_expiry(self)  # type: ignore[attr-defined]
            return
        if self._sweep_loop is not loop:
            self._sweep_loop = loop
            loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweep_loop = None
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]

    def _admit(self, key: str) -> None:
        if key in self._charged:
            return
        ctx = current_context.get()
        tenant = (ctx.tenant_id if ctx is not None else None) or "default"
        size = BUCKET_OVERHEAD + 2 * len(key)
        try:
            self.budget.charge(tenant, size, "a rate-limit bucket")
        except BudgetExceeded:
            if not self._reconcile():
                raise
            self.budget.charge(tenant, size, "a rate-limit bucket")
        self._charged[key] = (tenant, size)

    def _reconcile(self) -> bool:
        """Refund buckets ``limits`` has expired; False when it ran less than 1 s ago."""
        now = time.monotonic()
        if now - self._reconciled < 1.0:
            return False
        self._reconciled = now
        wall = time.time()
        for key, (tenant, size) in list(self._charged.items()):
            events = self.events.get(key)
            if events and events[0].expiry > wall:
                continue  # a moving window with live entries
            if self.expirations.get(key, 0) > wall:
                continue
            self.clear(key)
            del self._charged[key]
            self.budget.refund(tenant, size)
        return True

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self._admit(key)
        return super().incr(key, expiry, amount)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        self._admit(key)
        return super().acquire_entry(key, limit, expiry, amount)

    def reset(self) -> int | None:
        for tenant, size in self._charged.values():
            self.budget.refund(tenant, size)
        self._charged.clear()
        return super().reset()


def _unwrap_rewrapped(cls: type, base: type) -> None:
    """Undo the second error wrapper ``limits`` puts on each storage method of a subclass.

    ``limits`` wraps its storage methods (``incr``, ``get``...) in an error
    translator again in every subclass, inherited ones included: each level is
    one more call per call. Inherited methods get the base's (wrapped once)
    back; methods the subclass overrides lose their wrapper, since what they
    call on ``super()`` is wrapped already.
    """
    for name, attr in list(vars(cls).items()):
        if not callable(attr) or not hasattr(attr, "__wrapped__"):
            continue
        inherited = getattr(base, name, None)
        f = attr
        while f is not inherited and hasattr(f, "__wrapped__"):
            f = f.__wrapped__
        setattr(cls, name, f)


_unwrap_rewrapped(_BudgetedMemory, SyncMemoryStorage)


class BudgetedMemoryStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """The ``memory://`` storage: a ``limits.aio`` storage over ``limits``' synchronous one.

    In-process counting never waits, so there is nothing to await: every call
    runs ``limits.storage.MemoryStorage`` (``memory``, buckets charged to
    ``budget``) directly — no asyncio lock, no expiry task per call (``limits.aio``'s
    memory storage schedules one whenever the previous has run, i.e. per request
    under a server, and each scans every bucket). Each call completes without
    yielding to the event loop, so it is atomic with respect to other requests;
    ``limits`` guards each bucket with a lock and expires idle buckets in its own
    timer thread. The hot path (:class:`FixedWindowQuota`) calls ``memory``
    without a coroutine.
    """

    STORAGE_SCHEME = ["async+budgeted-memory"]

    def __init__(self, uri: str | None = None, *, budget: ByteBudget | None = None,
                 wrap_exceptions: bool = False, **options: Any) -> None:
        self.memory = _BudgetedMemory(budget=budget, wrap_exceptions=wrap_exceptions)
        self.budget = self.memory.budget
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    async def _reconcile(self) -> bool:
        """Refund buckets ``limits`` has expired; False when it ran less than 1 s ago."""
        return self.memory._reconcile()

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.memory.incr(key, expiry, amount)

    async def decr(self, key: str, amount: int = 1) -> int:
        return self.memory.decr(key, amount)

    async def get(self, key: str) -> int:
        return self.memory.get(key)

    async def get_expiry(self, key: str) -> float:
        return self.memory.get_expiry(key)

    async def check(self) -> bool:
        return self.memory.check()

    async def reset(self) -> int | None:
        return self.memory.reset()

    async def clear(self, key: str) -> None:
        self.memory.clear(key)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.memory.acquire_entry(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int,
                                expiry: int) -> tuple[float, int]:
        return self.memory.get_moving_window(key, limit, expiry)

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                           amount: int = 1) -> bool:
        return self.memory.acquire_sliding_window_entry(key, limit, expiry, amount)

    async def get_sliding_window(self, key: str,
                                 expiry: int) -> tuple[int, float, int, float]:
        return self.memory.get_sliding_window(key, expiry)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.memory.clear_sliding_window(key, expiry)


_unwrap_rewrapped(BudgetedMemoryStorage, Storage)


def is_memory(storage: Any) -> bool:
    """True for in-process storages (never wait; resets exact and local)."""
    return isinstance(storage, (BudgetedMemoryStorage, MemoryStorage))


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
        self.remember = is_memory(limiter.storage)
        self._resets: dict[str, list[Any]] = {}  # key -> [reset, last count]

    async def hit(self, item: RateLimitItem, ids: tuple[str, ...],
                  cost: int) -> tuple[bool, int, float]:
        storage: Any = self.limiter.storage
        key = item.key_for(*ids)
        memory = storage.memory if type(storage) is BudgetedMemoryStorage else None
        if memory is not None:  # limits' synchronous memory storage: no coroutine
            count: int = memory.incr(key, item.get_expiry(), cost)
        else:
            count = await storage.incr(key, item.get_expiry(), amount=cost)
        amount = item.amount
        remaining = amount - count if count < amount else 0
        if not self.remember:
            return count <= amount, remaining, float(await storage.get_expiry(key))
        known = self._resets.get(key)
        if known is not None and count != cost and count > known[1] and known[0] > time.time():
            known[1] = count  # same window: the remembered reset holds
            return count <= amount, remaining, known[0]
        reset = float(memory.get_expiry(key) if memory is not None
                      else await storage.get_expiry(key))
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
