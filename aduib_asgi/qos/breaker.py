"""The circuit breaker state machine: closed -> open -> half-open -> closed.

Failures are counted over a sliding time window split into buckets. The breaker
opens when, within the window, at least ``min_requests`` outcomes were recorded
and the failure rate reaches ``failure_rate``. After ``open_s`` it lets up to
``half_open_probes`` probe requests through at once; ``half_open_successes``
successful probes close it, one failed probe opens it again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BreakerOpen", "BreakerSettings", "CircuitBreaker"]

logger = logging.getLogger("aduib_asgi.qos.circuit")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: What :meth:`CircuitBreaker.acquire` returns: a normal call, or a half-open probe.
#: ``acquire`` tokens: CALL in the closed state; a probe's token is PROBE plus the
#: number of the half-open period it belongs to (stale probes are ignored).
CALL, PROBE = 0, 1


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The knobs of one breaker (see docs/qos.md)."""

    failure_rate: float = 0.5
    min_requests: int = 10
    window_s: float = 30.0
    buckets: int = 10
    open_s: float = 30.0
    half_open_probes: int = 1
    half_open_successes: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_requests < 1 or self.buckets < 1 or self.half_open_probes < 1:
            raise ValueError("min_requests, buckets and half_open_probes must be >= 1")
        if self.window_s <= 0 or self.open_s < 0 or self.half_open_successes < 1:
            raise ValueError("window_s must be > 0, open_s >= 0, half_open_successes >= 1")


class BreakerOpen(Exception):
    """The breaker rejects the call; ``retry_after`` seconds until it may probe."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open, retry after {retry_after:.3f}s")
        self.retry_after = retry_after


Listener = Callable[[str, str, str], None]


class CircuitBreaker:
    """One breaker (per method, or per method and tenant)."""

    __slots__ = ("_bucket_end", "_bucket_start", "_clock", "_fails", "_half_open_period",
                 "_listener", "_slot", "_stamps", "_totals", "_width", "name", "opened_until",
                 "probe_successes", "probes", "settings", "state")

    def __init__(self, name: str, settings: BreakerSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 listener: Listener | None = None) -> None:
        self.name = name
        self.settings = s = settings or BreakerSettings()
        self.state = CLOSED
        self.opened_until = 0.0
        self.probes = 0
        self.probe_successes = 0
        self._half_open_period = 0
        self._clock = clock
        self._listener = listener
        self._width = s.window_s / s.buckets
        self._totals = [0] * s.buckets
        self._fails = [0] * s.buckets
        self._stamps = [-1] * s.buckets
        # The bucket outcomes go to while the clock is in [_bucket_start, _bucket_end).
        self._slot = 0
        self._bucket_start = self._bucket_end = -math.inf

    def acquire(self) -> int:
        """Admit a call (CALL or PROBE) or raise :class:`BreakerOpen`."""
        state = self.state
        if state == CLOSED:
            return CALL
        if state == OPEN:
            left = self.opened_until - self._clock()
            if left > 0:
                raise BreakerOpen(left)
            self._transition(HALF_OPEN)
        if self.probes < self.settings.half_open_probes:
            self.probes += 1
            return PROBE + self._half_open_period
        raise BreakerOpen(min(1.0, self.settings.open_s) or 1.0)

    def record(self, token: int, failure: bool | None) -> None:
        """Record an outcome: True failure, False success, None neither (released)."""
        if token == CALL:
            if failure is None or self.state != CLOSED:
                return
            now = self._clock()
            slot = (self._slot if self._bucket_start <= now < self._bucket_end
                    else self._bucket(now))
            self._totals[slot] += 1
            if failure:
                self._failed(slot, now)
            return
        if token >= PROBE:
            if self.state != HALF_OPEN or token != PROBE + self._half_open_period:
                return  # a probe of an earlier half-open period
            self.probes -= 1
            if failure is None:
                return
            if failure:
                self._open()
                return
            self.probe_successes += 1
            if self.probe_successes >= self.settings.half_open_successes:
                self._reset_window()
                self._transition(CLOSED)

    def _bucket(self, now: float) -> int:
        """The bucket of ``now`` (emptied when it starts a new epoch); cached until it ends."""
        epoch = int(now / self._width)
        slot = epoch % self.settings.buckets
        if self._stamps[slot] != epoch:
            self._stamps[slot] = epoch
            self._totals[slot] = 0
            self._fails[slot] = 0
        self._slot = slot
        self._bucket_start = epoch * self._width
        self._bucket_end = (epoch + 1) * self._width
        return slot

    def _failed(self, slot: int, now: float) -> None:
        self._fails[slot] += 1
        n = self.settings.buckets
        oldest = int(now / self._width) - n
        total = fails = 0
        for i in range(n):
            if self._stamps[i] > oldest:
                total += self._totals[i]
                fails += self._fails[i]
        s = self.settings
        if total >= s.min_requests and fails >= s.failure_rate * total:
            self._open()

    def counts(self) -> tuple[int, int]:
        """(outcomes, failures) in the current window."""
        oldest = int(self._clock() / self._width) - self.settings.buckets
        total = fails = 0
        for i in range(self.settings.buckets):
            if self._stamps[i] > oldest:
                total += self._totals[i]
                fails += self._fails[i]
        return total, fails

    def _open(self) -> None:
        self.opened_until = self._clock() + self.settings.open_s
        self._transition(OPEN)

    def _reset_window(self) -> None:
        n = self.settings.buckets
        self._totals = [0] * n
        self._fails = [0] * n
        self._stamps = [-1] * n
        self._bucket_start = self._bucket_end = -math.inf

    def _transition(self, new: str) -> None:
        old = self.state
        self.state = new
        self.probes = 0
        self.probe_successes = 0
        if new == HALF_OPEN:
            self._half_open_period += 1
        if new == CLOSED:
            self._reset_window()
        logger.warning("circuit %s: %s -> %s", self.name, old, new)
        if self._listener is not None:
            self._listener(self.name, old, new)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state})"
