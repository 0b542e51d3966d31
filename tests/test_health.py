"""HealthService Check through the real stack: aggregation of registered checks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aduib_asgi.health import HealthRegistry, aggregate
from aduib_asgi.models import HealthStatus
from tests.test_tasks_support import HS, build_app, client_for

pytestmark = pytest.mark.anyio

H, D, U, K = (HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY,
              HealthStatus.UNKNOWN)


def _health(app: Any) -> HealthRegistry:
    # build_app's ErrorMappingMiddleware -> PrincipalLayer -> dispatcher
    reg: HealthRegistry = app.app.app.health
    return reg


async def test_check_with_only_the_memory_store_is_healthy() -> None:
    app, _, _ = build_app()
    async with client_for(app) as c:
        r = await c.post(HS + "Check", json={})
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "services": {"tasks": "healthy"}}


@pytest.mark.parametrize(("results", "critical", "expected"), [
    ({}, set(), H),
    ({"a": H, "b": H}, set(), H),
    ({"a": H, "b": K}, set(), K),
    ({"a": H, "b": D}, set(), D),
    ({"a": H, "b": U}, set(), D),  # a non-critical failure degrades
    ({"a": U, "b": H}, {"a"}, U),  # a critical one makes the server unhealthy
    ({"a": D, "b": K}, {"a"}, D),
])
def test_aggregate(results: dict[str, HealthStatus], critical: set[str],
                   expected: HealthStatus) -> None:
    assert aggregate(results, critical) is expected


async def test_checks_of_every_kind_are_aggregated() -> None:
    app, _, _ = build_app()
    health = _health(app)
    state = {"db": "healthy"}

    async def db() -> str:
        return state["db"]

    def cache() -> bool:
        return True

    async def slow() -> None:
        await anyio.sleep(10)

    def broken() -> None:
        raise ConnectionError("down")

    health.add("db", db, critical=True)
    health.add("cache", cache)
    async with client_for(app) as c:
        r = await c.post(HS + "Check", json={})
        assert r.json() == {"status": "healthy",
                            "services": {"cache": "healthy", "db": "healthy", "tasks": "healthy"}}
        state["db"] = "degraded"
        assert (await c.post(HS + "Check", json={})).json()["status"] == "degraded"
        state["db"] = "unhealthy"
        assert (await c.post(HS + "Check", json={})).json()["status"] == "unhealthy"
        state["db"] = "healthy"
        health.add("slow", slow, timeout=0.05)
        health.add("broken", broken)
        body = (await c.post(HS + "Check", json={})).json()
        assert body["status"] == "degraded"
        assert body["services"]["slow"] == "unhealthy"
        assert body["services"]["broken"] == "unhealthy"


async def test_check_of_one_service() -> None:
    app, _, _ = build_app()
    async with client_for(app) as c:
        r = await c.post(HS + "Check", json={"service": "T"})  # a registered RPC service
        assert r.json() == {"status": "healthy", "services": {"T": "healthy"}}
        r = await c.post(HS + "Check", json={"service": "tasks"})  # a registered check
        assert r.json() == {"status": "healthy", "services": {"tasks": "healthy"}}
        r = await c.post(HS + "Check", json={"service": "Nope"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == 4002


async def test_bad_check_bodies_are_non_2xx_errors() -> None:
    app, _, _ = build_app()
    async with client_for(app) as c:
        r = await c.post(HS + "Check", json={"service": 5})
        assert (r.status_code, r.json()["error"]["code"]) == (400, 1002)
        r = await c.post(HS + "Check", content=b"{nope", headers={"content-type":
                                                                 "application/json"})
        assert r.status_code >= 400 and r.json()["status"] == "error"
        r = await c.put(HS + "Check", json={})
        assert r.status_code == 405
        assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]


async def test_demo_health_check(demo_client: Any) -> None:
    r = await demo_client.post(HS + "Check", json={})
    assert r.status_code == 200
    assert r.json()["status"] == "healthy"
    r = await demo_client.post(HS + "Check", json={"service": "Echo"})
    assert r.json() == {"status": "healthy", "services": {"Echo": "healthy"}}


async def test_a_blocking_sync_check_runs_in_a_thread_and_keeps_its_timeout() -> None:
    """A sync check that blocks (a socket call, say) neither stalls the loop nor the answer."""
    import threading
    import time

    release = threading.Event()
    threads: list[str] = []

    def blocking() -> bool:
        threads.append(threading.current_thread().name)
        release.wait(5)  # stuck until the test ends
        return True

    def quick() -> str:
        threads.append(threading.current_thread().name)
        return "degraded"

    def returns_a_coroutine() -> Any:  # e.g. ``lambda: store.ping()`` on an async client
        async def ping() -> bool:
            return False

        return ping()

    registry = HealthRegistry()
    registry.add("stuck", blocking, timeout=0.2)
    registry.add("quick", quick)
    registry.add("async-by-lambda", returns_a_coroutine)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            started = time.monotonic()
            result = await registry.check()
            elapsed = time.monotonic() - started
            tg.cancel_scope.cancel()
    finally:
        release.set()
    assert result is not None
    assert result.services == {"async-by-lambda": U, "quick": D, "stuck": U}
    assert elapsed < 1.0  # the timeout held although the function never returned
    assert ticks >= 5  # the loop kept running while the check blocked
    assert threading.main_thread().name not in threads


async def test_a_hung_sync_check_is_not_started_again_while_it_still_runs() -> None:
    """Checks polled often must not pile up threads behind one that never returns."""
    import threading

    release = threading.Event()
    started = 0

    def hung() -> bool:
        nonlocal started
        started += 1
        release.wait(5)
        return True

    registry = HealthRegistry()
    registry.add("hung", hung, timeout=0.05)
    try:
        for _ in range(5):
            result = await registry.check()
            assert result is not None and result.services == {"hung": U}
        assert started == 1
    finally:
        release.set()
    with anyio.fail_after(5):  # once it returns, the next run starts normally
        while True:
            result = await registry.check()
            assert result is not None
            if result.services == {"hung": H}:
                break
            await anyio.sleep(0.02)
    assert started == 2  # one new run once the stuck one had returned


async def test_in_thread_false_runs_a_sync_check_on_the_loop() -> None:
    import asyncio

    def on_loop() -> bool:  # raises RuntimeError in a worker thread
        return asyncio.get_running_loop() is not None

    registry = HealthRegistry()
    registry.add("on-loop", on_loop, in_thread=False)
    registry.add("in-thread", on_loop)
    result = await registry.check()
    assert result is not None
    assert result.services == {"in-thread": U, "on-loop": H}


async def test_concurrent_probes_of_a_sync_check_take_turns() -> None:
    """A Watch tick and a readiness probe at once both get the real answer."""
    import time as _time

    runs = 0

    def slow() -> bool:
        nonlocal runs
        runs += 1
        _time.sleep(0.2)
        return True

    registry = HealthRegistry()
    registry.add("slow", slow, timeout=2.0)
    results: list[Any] = []

    async def probe() -> None:
        results.append(await registry.check("slow"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        tg.start_soon(probe)
    assert [r.status for r in results] == [H, H]
    assert runs == 2  # one after the other, never two threads at once


async def test_a_check_that_timed_out_before_its_thread_started_recovers() -> None:
    """Worker threads all busy: the timed-out call leaves no stuck state behind."""
    from anyio import to_thread

    limiter = to_thread.current_default_thread_limiter()
    old = limiter.total_tokens
    registry = HealthRegistry()
    registry.add("quick", lambda: True, timeout=0.1)
    try:
        limiter.total_tokens = 1
        async with limiter:  # the only worker token is taken
            first = await registry.check("quick")
    finally:
        limiter.total_tokens = old
    second = await registry.check("quick")
    assert first is not None and second is not None
    assert second.status == H  # whatever the first said, nothing is stuck


async def test_a_check_raising_systemexit_is_unhealthy_not_fatal() -> None:
    def exits() -> None:
        raise SystemExit(3)

    registry = HealthRegistry()
    registry.add("exits", exits)
    result = await registry.check()
    assert result is not None and result.services == {"exits": U}
