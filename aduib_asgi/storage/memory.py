"""In-process idempotency store: a lock-protected LRU dict with TTLs and leases."""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio

from aduib_asgi.storage import Reservation, StoredResponse, StoreEntry

__all__ = ["MemoryIdempotencyStore"]


class _Item:
    __slots__ = ("entry", "expires")

    def __init__(self, entry: StoreEntry, expires: float) -> None:
        self.entry = entry
        self.expires = expires


class MemoryIdempotencyStore:
    """Bounded (``max_entries``, least recently used evicted first) with TTLs.

    Only for one process: several instances need the Redis store. Every
    critical section is synchronous under one ``threading.Lock``, so the
    reservation is atomic for tasks and threads alike, and no call ever waits
    (``in_process``: callers need no timeout). A reservation's owner lives in
    this process and releases it on every path, so it is held until then
    (``needs_renewal`` is False); ``lease`` is kept as a safety net only when
    ``hold_reservations=False``.
    """

    in_process = True

    def __init__(self, *, max_entries: int = 10_000, hold_reservations: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.needs_renewal = not hold_reservations
        self._clock = clock
        self._tokens = itertools.count(1)
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._lock = threading.Lock()
        self._waiters: dict[str, anyio.Event] = {}

    def __len__(self) -> int:
        return len(self._items)

    def _live(self, key: str, now: float) -> _Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= now:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item

    def _evict(self, now: float) -> None:
        items = self._items
        for _ in range(len(items)):
            if len(items) <= self.max_entries:
                return
            key, item = items.popitem(last=False)
            if item.entry.response is None and item.expires > now:
                items[key] = item  # never evict a live reservation: move it back
        # every entry is a live reservation: allow the overflow rather than break one

    def _notify(self, key: str) -> None:
        event = self._waiters.pop(key, None)
        if event is not None:
            event.set()

    async def reserve(self, key: str, fingerprint: str, lease: float) -> Reservation:
        now = self._clock()
        with self._lock:
            item = self._live(key, now)
            if item is not None:
                entry = item.entry
                if entry.response is not None:
                    return Reservation("completed", entry=entry)
                return Reservation("in_flight", entry=entry)
            token = str(next(self._tokens))
            expires = now + lease if self.needs_renewal else float("inf")
            self._items[key] = _Item(StoreEntry(fingerprint, token), expires)
            self._evict(now)
            return Reservation("reserved", token=token)

    async def renew(self, key: str, token: str, lease: float) -> bool:
        now = self._clock()
        with self._lock:
            item = self._live(key, now)
            if item is None or item.entry.response is not None or item.entry.token != token:
                return False
            if self.needs_renewal:
                item.expires = now + lease
            return True

    async def complete(self, key: str, token: str, response: StoredResponse,
                       ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            item = self._live(key, now)
            if item is None or item.entry.response is not None or item.entry.token != token:
                return False
            item.entry = StoreEntry(item.entry.fingerprint, None, response)
            item.expires = now + ttl
            self._notify(key)
            return True

    async def release(self, key: str, token: str) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is not None and item.entry.response is None and item.entry.token == token:
                del self._items[key]
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
            self._items.clear()
