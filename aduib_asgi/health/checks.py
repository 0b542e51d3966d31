"""Health checks and their aggregation (PROTOCOL.md §10).

A check is a callable (sync ones run in a worker thread) returning a :class:`HealthStatus` (or its
string), a bool (True healthy, False unhealthy) or None (healthy: "it did not
raise", e.g. a store's ``ping``). Raising or exceeding its timeout counts as
unhealthy. Aggregate: a *critical* check unhealthy → unhealthy; any other check
unhealthy or degraded → degraded; else any unknown → unknown; else healthy.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from aduib_asgi.models import HealthCheckResponse, HealthStatus

__all__ = ["HealthCheck", "HealthRegistry", "aggregate"]

logger = logging.getLogger("aduib_asgi.health")

CheckFunc = Callable[[], Any | Awaitable[Any]]

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
    #: A worker thread still runs this check (abandoned past its timeout).
    busy: bool = False


def _as_status(value: Any) -> HealthStatus:
    if value is None or value is True:
        return HealthStatus.HEALTHY
    if value is False:
        return HealthStatus.UNHEALTHY
    return HealthStatus(value)


def _run_marking_done(check: HealthCheck) -> Any:
    """Run a sync check in its worker thread; it is free again when it returns."""
    try:
        return check.func()
    finally:
        check.busy = False


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
        returns the check is reported unhealthy without starting another one.
        An awaitable it returns is awaited on the loop.
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
                    if check.busy:  # the last run never returned: do not pile up threads
                        logger.warning("health check %s is still running", check.name)
                        return HealthStatus.UNHEALTHY
                    check.busy = True
                    value = await anyio.to_thread.run_sync(_run_marking_done, check,
                                                           abandon_on_cancel=True)
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
