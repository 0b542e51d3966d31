"""QoS metrics through the OpenTelemetry metrics API (no-op until an SDK is configured).

Instruments (meter ``aduib_asgi.qos``):

- ``aduib.circuit.transitions`` (counter; ``method``, ``from``, ``to``)
- ``aduib.circuit.state`` (observable gauge; ``method``; 0 closed, 1 half-open, 2 open)
- ``aduib.admission.rejected`` (counter; ``limit``, ``reason``, ``priority``)
- ``aduib.retry.attempts`` (counter; ``method``, ``outcome``)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = [
    "STATE_VALUES",
    "record_rejection",
    "record_retry",
    "record_transition",
    "watch_breakers",
]

STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class _StateSource(Protocol):
    def states(self) -> Iterable[tuple[str, str]]: ...


_meter = metrics.get_meter("aduib_asgi.qos")
_transitions = _meter.create_counter(
    "aduib.circuit.transitions", description="Circuit breaker state changes")
_rejected = _meter.create_counter(
    "aduib.admission.rejected", description="Requests not admitted (shed, timeout, draining)")
_retries = _meter.create_counter(
    "aduib.retry.attempts", description="Server-side retry attempts of idempotent methods")
_sources: weakref.WeakSet[Any] = weakref.WeakSet()


def _observe(options: CallbackOptions) -> Iterator[Observation]:
    for source in list(_sources):
        for method, state in source.states():
            yield Observation(STATE_VALUES[state], {"method": method})


_meter.create_observable_gauge(
    "aduib.circuit.state", callbacks=[_observe],
    description="Circuit breaker state per method: 0 closed, 1 half-open, 2 open")


def watch_breakers(source: _StateSource) -> None:
    """Export ``source.states()`` through the ``aduib.circuit.state`` gauge."""
    _sources.add(source)


def record_transition(method: str, old: str, new: str) -> None:
    _transitions.add(1, {"method": method, "from": old, "to": new})


def record_rejection(limit: str, reason: str, priority: int) -> None:
    _rejected.add(1, {"limit": limit, "reason": reason, "priority": priority})


def record_retry(method: str, outcome: str) -> None:
    _retries.add(1, {"method": method, "outcome": outcome})
