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
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

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
    #: The run of a sync check whose thread has not returned yet (shared by callers).
    current: _ThreadRun | None = None


def _as_status(value: Any) -> HealthStatus:
    if value is None or value is True:
        return HealthStatus.HEALTHY
    if value is False:
        return HealthStatus.UNHEALTHY
    return HealthStatus(value)


class _ThreadRun:
    """One run of a sync check in its own thread; any number of callers await it."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


async def _shared_thread_run(check: HealthCheck) -> Any:
    """The result of ``check.func()`` run in a thread of its own.

    Callers arriving while a run is in progress wait for that run (each within
    its own timeout) instead of starting another: a check that hangs holds one
    thread, never one per probe, and never a token of anyio's worker pool.
    """
    run = check.current
    if run is None:
        run = check.current = _ThreadRun()
        token = anyio.lowlevel.current_token()

        def finish() -> None:
            check.current = None
            run.done.set()

        def target() -> None:
            try:
                run.value = check.func()
            except BaseException as exc:  # reported to the awaiting callers
                run.error = exc
            finally:
                try:
                    anyio.from_thread.run_sync(finish, token=token)
                except Exception:  # the event loop is gone (shutdown)
                    check.current = None

        threading.Thread(target=target, name=f"health-check-{check.name}", daemon=True).start()
    await run.done.wait()
    if run.error is not None:
        raise run.error
    return run.value


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
                    value = await _shared_thread_run(check)
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
