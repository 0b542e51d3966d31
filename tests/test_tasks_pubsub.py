"""Several task managers on one real Redis: events and cancels cross instances at once.

Each manager listens to the store's change notifications (Redis pub/sub), so a
subscriber on one instance sees a task that runs on another without waiting for
its poll, and a cancel through one instance stops the task where it runs without
waiting for the lease maintenance. The polls are set far out (30 s and 20 s) so
that only the notifications can explain the timings asserted here.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.models import TaskStatus, TaskSubmitRequest
from aduib_asgi.tasks import TaskManager

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class Targets:
    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.registry = MethodRegistry()

        async def block(data: dict[str, Any]) -> dict[str, Any]:
            self.started.set()
            try:
                await self.release.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled.set()
                raise
            return {"released": True}

        self.registry.register("rpc.v2/T/block", block)


def manager(url: str, targets: Targets) -> TaskManager:
    return TaskManager(targets.registry, url, workers=1, poll_interval=30.0, lease_ttl=60.0)


async def test_a_subscriber_on_another_instance_gets_events_at_once(redis_url: str) -> None:
    runs, watches = Targets(), Targets()
    a, b = manager(redis_url, runs), manager(redis_url, watches)
    async with a.running(), b.running():
        entry = await a.submit(TaskSubmitRequest(target_method="rpc.v2/T/block"), None)
        await runs.started.wait()
        seen: list[tuple[str, float]] = []

        async def watch() -> None:
            async for event in b.events(await b.get(entry.task_id, None)):
                seen.append((event.task.status.value, time.monotonic()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.3)
            released = time.monotonic()
            runs.release.set()
            with anyio.fail_after(5):
                while not seen or seen[-1][0] != "succeeded":
                    await anyio.sleep(0.01)
    assert seen[0][0] == "running"
    assert seen[-1][0] == "succeeded"
    assert seen[-1][1] - released < 2.0  # the poll is 30 s away


async def test_a_cancel_through_another_instance_stops_the_task_at_once(redis_url: str) -> None:
    runs, other = Targets(), Targets()
    a, b = manager(redis_url, runs), manager(redis_url, other)
    async with a.running(), b.running():
        entry = await a.submit(TaskSubmitRequest(target_method="rpc.v2/T/block"), None)
        await runs.started.wait()
        started = time.monotonic()
        stored, canceled = await b.cancel(entry.task_id, None, reason="stop")
        assert canceled and stored.record.status is TaskStatus.CANCELED
        with anyio.fail_after(5):
            await runs.cancelled.wait()  # the handler on A was cancelled
        elapsed = time.monotonic() - started
        with anyio.fail_after(5):
            while True:
                final = await a.store.get(entry.task_id)
                assert final is not None
                if not a._running:
                    break
                await anyio.sleep(0.01)
    assert elapsed < 2.0  # lease maintenance is 20 s away
    assert final.record.status is TaskStatus.CANCELED


async def test_managers_keep_working_when_the_notifications_stop(redis_url: str) -> None:
    """The polls remain the fallback: a manager that hears no notifications still converges."""
    runs, watches = Targets(), Targets()
    a = manager(redis_url, runs)
    b = TaskManager(watches.registry, redis_url, workers=1, poll_interval=0.2, lease_ttl=60.0,
                    listen_for_changes=False)  # as if its pub/sub connection were down
    async with a.running(), b.running():
        entry = await a.submit(TaskSubmitRequest(target_method="rpc.v2/T/block"), None)
        await runs.started.wait()
        runs.release.set()
        statuses = [e.task.status.value async for e in b.events(
            await b.get(entry.task_id, None))]
    assert statuses[-1] == "succeeded"


async def test_own_saves_heard_back_do_not_change_the_local_events(redis_url: str) -> None:
    """A manager hears its own publishes: local subscribers still get the true event types."""
    from aduib_asgi.tasks import report_progress

    registry = MethodRegistry()
    go = anyio.Event()

    async def steps(data: dict[str, Any]) -> dict[str, Any]:
        await go.wait()
        for i in range(5):
            await report_progress(i + 1, 5, f"step {i + 1}")
        return {"done": True}

    registry.register("rpc.v2/T/steps", steps)
    a = TaskManager(registry, redis_url, workers=1, poll_interval=30.0, lease_ttl=60.0)
    async with a.running():
        entry = await a.submit(TaskSubmitRequest(target_method="rpc.v2/T/steps"), None)
        events: list[str] = []

        async def watch() -> None:
            async for event in a.events(await a.get(entry.task_id, None)):
                events.append(event.event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.2)
            go.set()
    assert events.count("progress") == 5, events
    assert events[0] == "started" and events[-1] == "completed", events


async def test_a_cancel_overwritten_by_the_owners_progress_save_still_stops_the_task(
        redis_url: str) -> None:
    """B cancels while A saves progress with the same revision: A still stops the task."""
    from aduib_asgi.tasks import report_progress

    registry = MethodRegistry()
    cancelled = anyio.Event()
    reporting = anyio.Event()

    async def chatty(data: dict[str, Any]) -> None:
        try:
            while True:
                await report_progress(1, 2, "working")  # a save every few ms
                reporting.set()
                await anyio.sleep(0.002)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    registry.register("rpc.v2/T/chatty", chatty)
    a = TaskManager(registry, redis_url, workers=1, poll_interval=30.0, lease_ttl=60.0)
    b = TaskManager(registry, redis_url, workers=1, poll_interval=30.0, lease_ttl=60.0)
    async with a.running(), b.running():
        entry = await a.submit(TaskSubmitRequest(target_method="rpc.v2/T/chatty"), None)
        await reporting.wait()
        await b.cancel(entry.task_id, None, reason="stop")  # once, amid A's saves
        with anyio.fail_after(3):
            await cancelled.wait()
        with anyio.fail_after(5):
            while a._running:
                await anyio.sleep(0.01)
        final = await a.store.get(entry.task_id)
    assert final is not None and final.record.status is TaskStatus.CANCELED


async def test_the_cancel_reason_given_on_another_instance_is_kept(redis_url: str) -> None:
    runs, other = Targets(), Targets()
    a, b = manager(redis_url, runs), manager(redis_url, other)
    async with a.running(), b.running():
        entry = await a.submit(TaskSubmitRequest(target_method="rpc.v2/T/block"), None)
        await runs.started.wait()
        await b.cancel(entry.task_id, None, reason="operator said stop")
        with anyio.fail_after(5):
            await runs.cancelled.wait()
            while a._running:
                await anyio.sleep(0.01)
        final = await a.store.get(entry.task_id)
    assert final is not None and final.record.status is TaskStatus.CANCELED
    assert final.record.error is not None
    assert final.record.error["message"] == "operator said stop"
