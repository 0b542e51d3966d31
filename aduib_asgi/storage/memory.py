"""In-process idempotency store: a lock-protected dict with TTLs, leases and a byte budget."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

import anyio

from aduib_asgi.storage import Reservation, StoredResponse, StoreEntry
from aduib_asgi.storage.budget import RECORD_OVERHEAD, BudgetExceeded, ByteBudget, budget_exceeded

__all__ = ["MemoryIdempotencyStore"]


class _Item:
    __slots__ = ("entry", "expires", "size", "tenant")

    def __init__(self, entry: StoreEntry, expires: float, tenant: str, size: int) -> None:
        self.entry = entry
        self.expires = expires
        self.tenant = tenant
        self.size = size


class MemoryIdempotencyStore:
    """Bounded in bytes per tenant and in total (``budget``), with TTLs.

    A record stays until its TTL (or its owner's release); nothing is evicted to
    make room: past a tenant's budget (or the total) new keys are refused with
    429 / 5021 and ``Retry-After``, so one tenant's keys never push another
    tenant's record out (exactly-once would silently break). ``max_entries``
    optionally caps the number of records the same way. Expired records are
    swept in expiry order on every reserve.

    Only for one process: several instances need the Redis store. Every
    critical section is synchronous under one ``threading.Lock``, so the
    reservation is atomic for tasks and threads alike, and no call ever waits
    (``in_process``: callers need no timeout). A reservation's owner lives in
    this process and releases it on every path, so it is held until then
    (``needs_renewal`` is False); ``lease`` is kept as a safety net only when
    ``hold_reservations=False``.
    """

    in_process = True

    def __init__(self, *, budget: ByteBudget | None = None, max_entries: int | None = None,
                 hold_reservations: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.budget = budget if budget is not None else ByteBudget()
        self.max_entries = max_entries
        self.needs_renewal = not hold_reservations
        self._clock = clock
        self._tokens = itertools.count(1)
        self._items: dict[str, _Item] = {}
        self._expiry: list[tuple[float, str]] = []  # (expires, key), a heap
        self._lock = threading.Lock()
        self._waiters: dict[str, anyio.Event] = {}

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, key: str, item: _Item) -> None:
        del self._items[key]
        self.budget.refund(item.tenant, item.size)

    def _live(self, key: str, now: float) -> _Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= now:
            self._drop(key, item)
            return None
        return item

    def _expire_at(self, key: str, item: _Item, expires: float) -> None:
        item.expires = expires
        if expires != float("inf"):
            heapq.heappush(self._expiry, (expires, key))

    def _sweep(self, now: float) -> None:
        heap = self._expiry
        items = self._items
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            item = items.get(key)
            if item is not None and item.expires <= now:
                self._drop(key, item)
        if len(heap) > 2 * len(items) + 64:  # renewed leases left stale heap rows
            self._expiry = [(i.expires, k) for k, i in items.items()
                            if i.expires != float("inf")]
            heapq.heapify(self._expiry)

    def _notify(self, key: str) -> None:
        event = self._waiters.pop(key, None)
        if event is not None:
            event.set()

    async def reserve(self, key: str, fingerprint: str, lease: float, *,
                      tenant: str = "default", headroom: int = 0) -> Reservation:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            item = self._live(key, now)
            if item is not None:
                entry = item.entry
                if entry.response is not None:
                    return Reservation("completed", entry=entry)
                return Reservation("in_flight", entry=entry)
            if self.max_entries is not None and len(self._items) >= self.max_entries:
                raise budget_exceeded(tenant, "an idempotency record", total=True,
                                      retry_after=self.budget.retry_after)
            size = RECORD_OVERHEAD + len(key) + len(fingerprint)
            self.budget.charge(tenant, size, "an idempotency record", headroom=headroom)
            token = str(next(self._tokens))
            item = self._items[key] = _Item(StoreEntry(fingerprint, token), float("inf"),
                                            tenant, size)
            if self.needs_renewal:
                self._expire_at(key, item, now + lease)
            return Reservation("reserved", token=token)

    async def renew(self, key: str, token: str, lease: float) -> bool:
        now = self._clock()
        with self._lock:
            item = self._live(key, now)
            if item is None or item.entry.response is not None or item.entry.token != token:
                return False
            if self.needs_renewal:
                self._expire_at(key, item, now + lease)
            return True

    async def complete(self, key: str, token: str, response: StoredResponse,
                       ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            item = self._live(key, now)
            if item is None or item.entry.response is not None or item.entry.token != token:
                return False
            try:
                self.budget.charge(item.tenant, response.size, "the response")
            except BudgetExceeded:  # ran once: a repeat is told so, never run again
                response = StoredResponse.not_retained(response.status)
            else:
                item.size += response.size
            item.entry = StoreEntry(item.entry.fingerprint, None, response)
            self._expire_at(key, item, now + ttl)
            self._notify(key)
            return True

    async def release(self, key: str, token: str) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is not None and item.entry.response is None and item.entry.token == token:
                self._drop(key, item)
            self._notify(key)

    async def get(self, key: str) -> StoreEntry | None:
        with self._lock:
            item = self._live(key, self._clock())
            return None if item is None else item.entry

    async def wait(self, key: str, timeout: float) -> StoreEntry | None:
        deadline = self._clock() + timeout
        while True:
            with self._lock:
                item = self._live(key, self._clock())
                if item is None or item.entry.response is not None:
                    return None if item is None else item.entry
                event = self._waiters.get(key)
                if event is None:
                    event = self._waiters[key] = anyio.Event()
                # a lease that runs out without a release also ends the wait
                until = min(deadline, item.expires)
            left = until - self._clock()
            if left <= 0:
                if self._clock() >= deadline:
                    return await self.get(key)
                continue
            with anyio.move_on_after(left):
                await event.wait()
            if self._clock() >= deadline:
                return await self.get(key)

    async def aclose(self) -> None:
        with self._lock:
            for key, item in list(self._items.items()):
                self._drop(key, item)
            self._expiry.clear()
