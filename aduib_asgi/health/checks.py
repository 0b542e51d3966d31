"""Health checks and their aggregation (PROTOCOL.md §10).

A check is a callable (sync ones run in a worker thread, one at a time per
check) returning a :class:`HealthStatus` (or its string), a bool (True healthy,
False unhealthy) or None (healthy: "it did not raise", e.g. a store's ``ping``).
Raising or exceeding its timeout counts as unhealthy. Aggregate: a *critical*
check unhealthy → unhealthy; any other check unhealthy or degraded → degraded;
else any unknown → unknown; else healthy.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from aduib_asgi.models import HealthCheckResponse, HealthStatus

__all__ = ["HealthCheck", "HealthRegistry", "aggregate"]

logger = logging.getLogger("aduib_asgi.health")

CheckFunc = Callable[[], Any | Awaitable[Any]]

_STILL_RUNNING = object()

_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.UNKNOWN: 1, HealthStatus.DEGRADED: 2,
         HealthStatus.UNHEALTHY: 3}


@dataclass(slots=True)
class HealthCheck:
    name: str
    func: CheckFunc
    critical: bool = False
    timeout: float = 2.0
    #: Sync callables run in a worker thread (None/True) or on the event loop (False).
    in_thread: bool | None = None
    #: Held by the worker thread running ``func`` (one at a time per check).
    lock: threading.Lock = field(default_factory=threading.Lock)


def _as_status(value: Any) -> HealthStatus:
    if value is None or value is True:
        return HealthStatus.HEALTHY
    if value is False:
        return HealthStatus.UNHEALTHY
    return HealthStatus(value)


class _CheckRaised(Exception):
    """A check raised something that is not an Exception (SystemExit, KeyboardInterrupt)."""


def _run_alone(check: HealthCheck) -> Any:
    """In a worker thread: run ``check.func`` unless another run of it still holds the check."""
    if not check.lock.acquire(blocking=False):
        return _STILL_RUNNING
    try:
        return check.func()
    except Exception:
        raise
    except BaseException as exc:  # never let a check stop the server
        raise _CheckRaised(f"{type(exc).__name__}: {exc}") from None
    finally:
        check.lock.release()


async def _run_in_thread(check: HealthCheck) -> Any:
    """``check.func()`` in a worker thread, at most one thread per check.

    A run abandoned past its timeout keeps the check until its thread returns;
    meanwhile callers wait (within their own timeouts) instead of starting
    another thread, so a hung check never holds more than one thread. The check
    is taken inside the thread, so a call that timed out before a worker picked
    it up leaves nothing behind.
    """
    while True:
        value = await anyio.to_thread.run_sync(_run_alone, check, abandon_on_cancel=True)
        if value is not _STILL_RUNNING:
            return value
        await anyio.sleep(0.02)


def aggregate(results: dict[str, HealthStatus], critical: set[str]) -> HealthStatus:
    """The overall status of several checks (see the module docstring)."""
    worst = HealthStatus.HEALTHY
    for name, status in results.items():
        if status is HealthStatus.UNHEALTHY and name not in critical:
            status = HealthStatus.DEGRADED
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst


class HealthRegistry:
    """The checks a server reports; ``services`` names RPC services known to be up."""

    def __init__(self, services: Callable[[], set[str]] | None = None) -> None:
        self._checks: dict[str, HealthCheck] = {}
        self._services = services or set

    def add(self, name: str, func: CheckFunc, *, critical: bool = False,
            timeout: float = 2.0, in_thread: bool | None = None) -> None:
        """Register a check; ``critical`` ones make the whole server unhealthy.

        A sync ``func`` runs in a worker thread unless ``in_thread=False`` (for a
        cheap callable that must run on the event loop's thread).
        """
        self._checks[name] = HealthCheck(name, func, critical, timeout, in_thread)

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    async def run_one(self, check: HealthCheck) -> HealthStatus:
        """Run one check within its timeout; sync callables run in a worker thread.

        A sync check may block (a socket call, a driver's ping): in a thread it
        cannot stall the event loop, and past the timeout it is abandoned (its
        thread finishes on its own) and reported unhealthy; until that thread
        returns, callers wait for it (within their timeouts) rather than start
        another. An awaitable it returns is awaited on the loop.
        """
        func = check.func
        try:
            with anyio.fail_after(check.timeout):
                if inspect.iscoroutinefunction(func):
                    value = await func()
                elif check.in_thread is False:
                    value = func()
                    if inspect.isawaitable(value):
                        value = await value
                else:
                    value = await _run_in_thread(check)
                    if inspect.isawaitable(value):
                        value = await value
            return _as_status(value)
        except Exception as exc:
            logger.warning("health check %s failed: %s", check.name, type(exc).__name__)
            return HealthStatus.UNHEALTHY

    async def check(self, service: str | None = None) -> HealthCheckResponse | None:
        """The aggregate response; for ``service`` its own status (None if unknown)."""
        if service is not None:
            one = self._checks.get(service)
            if one is not None:
                status = await self.run_one(one)
            elif service in self._services():
                status = HealthStatus.HEALTHY  # registered and served by this process
            else:
                return None
            return HealthCheckResponse(status=status, services={service: status})
        results: dict[str, HealthStatus] = {}
        checks = list(self._checks.values())

        async def run(c: HealthCheck) -> None:
            results[c.name] = await self.run_one(c)

        async with anyio.create_task_group() as tg:
            for c in checks:
                tg.start_soon(run, c)
        critical = {c.name for c in checks if c.critical}
        return HealthCheckResponse(status=aggregate(results, critical),
                                   services=dict(sorted(results.items())) or None)
