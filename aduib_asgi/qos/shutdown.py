"""Graceful shutdown: stop admitting, let in-flight requests finish, then end them.

One :class:`ShutdownController` is shared by the admission layer(s) of an app
and whoever learns about the shutdown (the demo CLI's SIGTERM handler, or the
ASGI ``lifespan.shutdown`` event seen by :class:`AdmissionMiddleware`):

1. :meth:`start_draining` — new requests answer 503 (5002) and queued ones are
   rejected the same way; in-flight requests carry on.
2. after ``grace_s`` (:meth:`drain` waits for it, or the CLI schedules it),
   :meth:`abort_in_flight` cancels what is still running: a request whose
   response has not started answers 503 (5002); a stream ends in-band (error
   frame, then ``end``) through the streaming layer's ``aduib.stream_abort``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import anyio

__all__ = ["Cancellable", "ShutdownController"]

logger = logging.getLogger("aduib_asgi.qos.shutdown")


class Cancellable(Protocol):
    """An in-flight request as the controller sees it (e.g. an anyio ``CancelScope``)."""

    def cancel(self) -> None: ...


class ShutdownController:
    """Draining state and the set of in-flight requests of one app."""

    def __init__(self, grace_s: float = 8.0, *, cancel_after_grace: bool = True) -> None:
        self.grace_s = grace_s
        #: When False, :meth:`drain` only waits: in-flight requests are counted
        #: but never cancelled, so admission layers skip their per-request
        #: cancel scope (the server's own graceful timeout ends what is left).
        self.cancel_after_grace = cancel_after_grace
        self.draining = False
        self._inflight: set[Cancellable] = set()
        self._counted = 0
        self._listeners: list[Callable[[], None]] = []
        self._idle: anyio.Event | None = None

    # -- used by the admission layer ---------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when draining starts (to reject queued waiters)."""
        self._listeners.append(callback)

    def enter(self, request: Cancellable) -> None:
        """``request`` is in flight: :meth:`abort_in_flight` will ``cancel()`` it."""
        self._inflight.add(request)

    def exit(self, request: Cancellable) -> None:
        self._inflight.discard(request)
        if self._idle is not None and not self._inflight and not self._counted:
            self._idle.set()

    def begin(self) -> None:
        """A request that cannot be cancelled is in flight (``cancel_after_grace=False``)."""
        self._counted += 1

    def end(self) -> None:
        self._counted -= 1
        if self._idle is not None and not self._inflight and not self._counted:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight) + self._counted

    # -- used by whoever handles the shutdown ------------------------------------------

    def start_draining(self) -> None:
        """Stop admitting (503 5002) and reject every queued request. Idempotent."""
        if self.draining:
            return
        self.draining = True
        logger.warning("draining: no new requests admitted; %d in flight", len(self._inflight))
        for callback in self._listeners:
            callback()

    def abort_in_flight(self) -> int:
        """Cancel every in-flight request (they end with 5002 / error + end frames)."""
        scopes = list(self._inflight)
        for s in scopes:
            s.cancel()
        if scopes:
            logger.warning("grace period over: ending %d in-flight requests", len(scopes))
        return len(scopes)

    async def drain(self, grace_s: float | None = None) -> bool:
        """Start draining, wait up to the grace period, then abort what is left.

        Returns True when everything finished within the grace period.
        """
        self.start_draining()
        if not self.in_flight:
            return True
        self._idle = anyio.Event()
        with anyio.move_on_after(self.grace_s if grace_s is None else grace_s):
            await self._idle.wait()
        if not self.in_flight:
            return True
        if not self.cancel_after_grace:
            return False
        self.abort_in_flight()
        with anyio.move_on_after(1.0):
            await self._idle.wait()
        return False
