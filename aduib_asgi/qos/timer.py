"""One event-loop timer for the deadlines of many requests (asyncio).

``anyio.CancelScope(deadline=...)`` arms a loop timer per scope and cancels it
when the scope exits; on uvloop that pair costs several µs per request, most
of the price of a request deadline. :class:`DeadlineTimer` instead keeps the
deadlines of the running requests in a heap under one ``loop.call_at`` for the
earliest: a request enters a plain ``CancelScope`` and registers a
:class:`Timed` entry; when its deadline passes (on the loop clock, as anyio's
own deadline check) the timer calls its ``expire()``. Typical traffic adds
deadlines later than the armed one, so registering is a heap push and leaving
marks the entry dead; dead entries are dropped when they reach the top or
when they outnumber the live ones.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from heapq import heapify, heappop, heappush

__all__ = ["DeadlineTimer", "Timed"]

_COMPACT_MIN = 64


class Timed(ABC):
    """A heap entry: ``expire()`` runs when ``when`` (loop clock) has passed."""

    __slots__ = ("_seq", "when")

    def __init__(self) -> None:
        self.when = math.inf
        self._seq = -1  # sequence number of the live heap item, -1 when not queued

    @abstractmethod
    def expire(self) -> None:
        """Called by the timer when ``when`` has passed."""


class DeadlineTimer:
    """Deadlines of one event loop, served by a single ``call_at`` timer."""

    __slots__ = ("_armed", "_dead", "_handle", "_heap", "_seq", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = 0
        self._dead = 0
        self._armed = math.inf
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Entries waiting for their deadline (live ones)."""
        return len(self._heap) - self._dead

    def add(self, entry: Timed, when: float) -> None:
        """Expire ``entry`` at ``when`` (loop clock); replaces an earlier registration."""
        if entry._seq >= 0:
            self.remove(entry)
        entry.when = when
        if when == math.inf:
            return
        seq = self._seq = self._seq + 1
        entry._seq = seq
        heappush(self._heap, (when, seq, entry))
        if when < self._armed:
            self._arm(when)

    def remove(self, entry: Timed) -> None:
        """Forget ``entry`` (it finished): its heap item is dead from now on."""
        if entry._seq < 0:
            return
        entry._seq = -1
        heap = self._heap
        if heap[-1][2] is entry:  # the latest deadline (usual with equal budgets)
            heap.pop()
            return
        dead = self._dead = self._dead + 1
        if dead > _COMPACT_MIN and dead * 2 > len(self._heap):
            self._compact()

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self.loop.call_at(when, self._fire)

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if item[2]._seq == item[1]]
        heapify(self._heap)
        self._dead = 0

    def _fire(self) -> None:
        self._handle = None
        self._armed = math.inf
        now = self.loop.time()
        while self._heap:  # re-read: expire() may compact the heap
            when, seq, entry = self._heap[0]
            live = entry._seq == seq
            if live and when > now:
                self._arm(when)
                return
            heappop(self._heap)
            if live:
                entry._seq = -1
                entry.expire()
            else:
                self._dead -= 1
