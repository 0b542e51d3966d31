"""A concurrency limit with a bounded wait queue ordered by priority (a bulkhead).

Up to ``limit`` holders at once. When full, waiters queue by priority
(highest first, FIFO within a priority) up to ``max_queue``; when the queue is
full, the lowest-priority waiter (the newest among equals) is shed — or the
arrival itself, when nothing queued ranks below it. A released slot is handed
straight to the best waiter. Single event loop; no locks needed.

:meth:`Bulkhead.resize` changes the limit of a bulkhead in use (runtime
configuration): holders keep their slots (a lowered limit admits nobody new
until enough of them left), and a raised limit admits waiters at once.
"""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["UNBOUNDED", "Bulkhead", "Rejected"]

#: A limit that never refuses: what a bulkhead whose limit was removed gets.
UNBOUNDED = 1 << 62

_WAITING, _GRANTED, _SHED, _DRAINED = 0, 1, 2, 3
_PRIORITIES = 4  # qos.priority 0 LOW .. 3 CRITICAL


class Rejected(Exception):
    """A request was not admitted: ``reason`` is "shed", "timeout" or "draining"."""

    def __init__(self, reason: str, bulkhead: Bulkhead) -> None:
        super().__init__(f"{reason} at {bulkhead.name}")
        self.reason = reason
        self.bulkhead = bulkhead


class _Waiter:
    __slots__ = ("event", "state")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.state = _WAITING


class Bulkhead:
    """``limit`` concurrent holders; a priority-ordered, bounded wait queue."""

    __slots__ = ("_queues", "in_flight", "limit", "max_queue", "name", "queued")

    def __init__(self, name: str, limit: int, *, max_queue: int = 64) -> None:
        if limit < 1:
            raise ValueError("a bulkhead limit must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self.name = name
        self.limit = limit
        self.max_queue = max_queue
        self.in_flight = 0
        self.queued = 0
        self._queues: tuple[deque[_Waiter], ...] = tuple(deque() for _ in range(_PRIORITIES))

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting (the not-saturated path)."""
        if self.in_flight < self.limit and not self.queued:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, priority: int, timeout: float) -> None:
        """Take a slot, queueing up to ``timeout`` seconds; raise :class:`Rejected` if not."""
        if self.try_acquire():
            return
        p = 0 if priority < 0 else _PRIORITIES - 1 if priority >= _PRIORITIES else priority
        if self.queued >= self.max_queue:
            self._shed_below(p)
        waiter = _Waiter()
        self._queues[p].append(waiter)
        self.queued += 1
        try:
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        except BaseException:  # cancelled while queued (deadline, disconnect)
            if waiter.state == _GRANTED:
                self.release()
            elif waiter.state == _WAITING:
                self._remove(p, waiter)
            raise
        state = waiter.state
        if state == _GRANTED:
            return
        if state == _WAITING:
            self._remove(p, waiter)
            raise Rejected("timeout", self)
        raise Rejected("shed" if state == _SHED else "draining", self)

    def _shed_below(self, p: int) -> None:
        """The queue is full: shed the lowest waiter ranking below ``p``, or refuse."""
        for q in range(p):
            queue = self._queues[q]
            if queue:
                victim = queue.pop()  # newest of the lowest priority
                self.queued -= 1
                victim.state = _SHED
                victim.event.set()
                return
        raise Rejected("shed", self)

    def _remove(self, p: int, waiter: _Waiter) -> None:
        try:
            self._queues[p].remove(waiter)
        except ValueError:
            return
        self.queued -= 1

    def release(self) -> None:
        """Give the slot back, handing it to the best waiter if any (unless a lowered
        limit is still exceeded)."""
        if self.queued and self.in_flight <= self.limit and self._grant():
            return  # handed over: in_flight stays
        self.in_flight -= 1

    def _grant(self) -> bool:
        """Hand one slot to the best waiter (the caller accounts for it)."""
        for queue in reversed(self._queues):
            if queue:
                waiter = queue.popleft()
                self.queued -= 1
                waiter.state = _GRANTED
                waiter.event.set()
                return True
        return False

    def resize(self, limit: int, max_queue: int | None = None) -> None:
        """A new limit (and queue bound) for a bulkhead in use.

        Holders keep their slots: a lowered limit only stops admitting until
        ``in_flight`` is below it. A raised limit hands the new slots to the best
        waiters now. A lowered ``max_queue`` sheds nobody already queued.
        """
        if limit < 1:
            raise ValueError("a bulkhead limit must be at least 1")
        if max_queue is not None:
            if max_queue < 0:
                raise ValueError("max_queue must not be negative")
            self.max_queue = max_queue
        self.limit = limit
        while self.queued and self.in_flight < self.limit and self._grant():
            self.in_flight += 1

    def drain(self) -> None:
        """Reject every waiter (shutdown): they answer 503 5002."""
        for queue in self._queues:
            while queue:
                waiter = queue.popleft()
                waiter.state = _DRAINED
                waiter.event.set()
        self.queued = 0

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.queued == 0

    def __repr__(self) -> str:
        return (f"Bulkhead({self.name!r}, limit={self.limit}, in_flight={self.in_flight}, "
                f"queued={self.queued})")
