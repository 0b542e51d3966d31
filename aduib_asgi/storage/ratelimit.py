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
import bisect
import heapq
import time
from collections.abc import Callable
from types import MethodType
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
#: Expired buckets refunded per loop turn at most (a mass expiry is spread over turns).
REFUND_BATCH = 1000
#: limits' own ``MemoryStorage.incr`` (with its error translator), called without
#: building a ``super()`` proxy per hit.
_LIMITS_INCR = SyncMemoryStorage.incr
#: Bytes charged per bucket on top of twice its key (counter, expiry and lock entries,
#: the charge record and its expiry-queue entry: ~520 bytes measured, key included).
BUCKET_OVERHEAD = 512


class _BudgetedMemory(SyncMemoryStorage):
    """``limits``' synchronous in-process storage, buckets charged to a :class:`ByteBudget`.

    Windows, counting and expiry stay ``limits``' own: a bucket is charged when a
    request creates it (``incr``, ``acquire_entry``; the sliding window counter
    goes through ``incr``), to the tenant of that request, and refunded once
    ``limits`` has let it expire: charged buckets wait in a queue ordered by expiry,
    and every sweep (once a second while any bucket is charged, traffic or not) and
    every refused charge refund the expired ones at its head — work in proportion
    to what expired, never a scan of live buckets. The admitted path costs one dict
    lookup.
    """

    STORAGE_SCHEME = ["budgeted-memory"]

    def __init__(self, uri: str | None = None, *, budget: ByteBudget | None = None,
                 **options: Any) -> None:
        super().__init__(uri, **options)
        self.timer.cancel()  # limits' first sweep thread: sweeps run on the event loop
        self.budget = budget if budget is not None else ByteBudget()
        self._charged: dict[str, tuple[str, int]] = {}  # key -> (tenant, bytes)
        self._expiring: list[tuple[float, str]] = []  # (expiry, key) of charged keys
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        # limits' error translator only re-raises what it catches unless it wraps
        # exceptions: then every hit (incr, and the get it makes) calls limits' own
        # methods without it, one frame less each
        self._incr: Callable[..., int] = _LIMITS_INCR
        if not self.wrap_exceptions:
            self._incr = _unwrapped(_LIMITS_INCR)
            self.get = MethodType(_unwrapped(SyncMemoryStorage.get), self)  # type: ignore[method-assign]

    def _MemoryStorage__schedule_expiry(self) -> None:  # limits' hook, called on every hit
        """Sweep expired buckets on the event loop, every ``SWEEP_S``.

        ``limits`` starts a sweep thread whenever the previous one has ended (every
        10 ms under traffic), which blocks the caller until the OS runs it, races
        the loop's own calls and passes over every bucket. On the loop it is one
        timer per ``SWEEP_S``, never concurrent with a hit, and walks the expiry
        queue only. Outside a running loop, ``limits``' own thread.
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
        # instead of limits' sweep (a pass over every bucket): the expiry queue, so a
        # sweep's work is what expired, at most REFUND_BATCH buckets per loop turn
        loop, self._sweep_loop = self._sweep_loop, None
        self.refund_expired(REFUND_BATCH)
        if self._charged and loop is not None and not loop.is_closed():
            # charged buckets give their bytes back when they expire, traffic or not;
            # more expired than one batch: the rest on the next loop turn
            self._sweep_loop = loop
            more = bool(self._expiring) and self._expiring[0][0] <= time.time()
            loop.call_later(0 if more else SWEEP_S, self._sweep)

    def _live_until(self, key: str) -> float:
        events = self.events.get(key)
        newest = events[0].expiry if events else 0.0  # a moving window's newest entry
        return max(newest, self.expirations.get(key, 0.0))

    def refund_expired(self, limit: int | None = None) -> int:
        """Refund the charged buckets ``limits`` has let expire (at most ``limit``);
        how many."""
        wall = time.time()
        queue, refunded = self._expiring, 0
        while queue and queue[0][0] <= wall and (limit is None or refunded < limit):
            _, key = heapq.heappop(queue)
            charge = self._charged.get(key)
            if charge is None:
                continue
            live_until = self._live_until(key)
            if live_until > wall:  # used again since: a later window
                events = self.events.get(key)
                if events:  # a moving window: drop its expired entries (newest first)
                    del events[bisect.bisect_left(events, -wall, key=lambda e: -e.expiry):]
                heapq.heappush(queue, (live_until, key))
                continue
            self.clear(key)
            del self._charged[key]
            self.budget.refund(*charge)
            refunded += 1
        return refunded

    def _admit(self, key: str) -> bool:
        """Charge a bucket ``key`` creates; True when it is new (queue it once created)."""
        if key in self._charged:
            return False
        ctx = current_context.get()
        tenant = (ctx.tenant_id if ctx is not None else None) or "default"
        size = BUCKET_OVERHEAD + 2 * len(key)
        try:
            self.budget.charge(tenant, size, "a rate-limit bucket")
        except BudgetExceeded:
            if not self.refund_expired(REFUND_BATCH):
                raise
            self.budget.charge(tenant, size, "a rate-limit bucket")
        self._charged[key] = (tenant, size)
        return True

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        if key in self._charged:  # a charged bucket (the usual hit): limits' own incr
            return self._incr(self, key, expiry, amount)
        new = self._admit(key)
        count = self._incr(self, key, expiry, amount)
        if new:
            heapq.heappush(self._expiring, (self._live_until(key), key))
        return count

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        new = self._admit(key)
        acquired = super().acquire_entry(key, limit, expiry, amount)
        if new:
            heapq.heappush(self._expiring, (self._live_until(key), key))
        return acquired

    def reset(self) -> int | None:
        for tenant, size in self._charged.values():
            self.budget.refund(tenant, size)
        self._charged.clear()
        self._expiring.clear()
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


def _unwrapped(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` without limits' error translator (``functools.wraps`` sets ``__wrapped__``)."""
    inner: Callable[..., Any] = getattr(f, "__wrapped__", f)
    return inner


class BudgetedMemoryStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """The ``memory://`` storage: a ``limits.aio`` storage over ``limits``' synchronous one.

    In-process counting never waits, so there is nothing to await: every call
    runs ``limits.storage.MemoryStorage`` (``memory``, buckets charged to
    ``budget``) directly — no asyncio lock, no expiry task per call (``limits.aio``'s
    memory storage schedules one whenever the previous has run, i.e. per request
    under a server, and each scans every bucket). Each call completes without
    yielding to the event loop, so it is atomic with respect to other requests;
    ``limits`` guards each bucket with a lock; expired buckets are removed (and
    refunded) from an expiry queue on the event loop. The hot path
    (:class:`FixedWindowQuota`) calls ``memory`` without a coroutine.
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

    def hit_now(self, item: RateLimitItem, key: str, cost: int,
                expiry: int | None = None) -> tuple[bool, int, float, float] | None:
        """:meth:`hit` without a coroutine on the ``memory://`` storage (None on any
        other: await :meth:`hit`), for the storage ``key`` (``item.key_for(*ids)``):
        (admitted, remaining, reset, now as epoch seconds). ``expiry``: the item's
        ``get_expiry()``, when the caller has it at hand.

        The storage is read per call: a limiter's storage may be replaced.
        """
        storage = self.limiter.storage
        if type(storage) is not BudgetedMemoryStorage:
            return None
        memory = storage.memory
        if expiry is None:
            expiry = item.get_expiry()
        count: int = (memory._incr(memory, key, expiry, cost) if key in memory._charged
                      else memory.incr(key, expiry, cost))  # a charged bucket: limits' own incr
        now = time.time()
        amount = item.amount
        known = self._resets.get(key)
        if known is not None and count != cost and count > known[1] and known[0] > now:
            known[1] = count  # same window: the remembered reset holds (_remembered)
            reset: float = known[0]
        else:
            reset = self._remember(key, count, float(memory.get_expiry(key)))
        return count <= amount, amount - count if count < amount else 0, reset, now

    async def hit(self, item: RateLimitItem, ids: tuple[str, ...],
                  cost: int) -> tuple[bool, int, float]:
        key = item.key_for(*ids)
        now = self.hit_now(item, key, cost)
        if now is not None:  # limits' synchronous memory storage: no await
            return now[:3]
        storage: Any = self.limiter.storage
        count: int = await storage.incr(key, item.get_expiry(), amount=cost)
        amount = item.amount
        remaining = amount - count if count < amount else 0
        if not self.remember:
            return count <= amount, remaining, float(await storage.get_expiry(key))
        known = self._remembered(key, count, cost, time.time())
        if known is None:
            known = self._remember(key, count, float(await storage.get_expiry(key)))
        return count <= amount, remaining, known

    def _remembered(self, key: str, count: int, cost: int, now: float) -> float | None:
        """The remembered reset of ``key`` while it holds (same window), else None."""
        known = self._resets.get(key)
        if known is not None and count != cost and count > known[1] and known[0] > now:
            known[1] = count  # same window: the remembered reset holds
            reset: float = known[0]
            return reset
        return None

    def _remember(self, key: str, count: int, reset: float) -> float:
        resets = self._resets
        if len(resets) >= self.max_cached and key not in resets:
            resets.clear()
        resets[key] = [reset, count]
        return reset


def quota_for(limiter: RateLimiter) -> WindowQuota:
    """The quickest exact way to hit ``limiter`` and read the quota it leaves."""
    if type(limiter) is FixedWindowRateLimiter:
        return FixedWindowQuota(limiter)
    return WindowQuota(limiter)
