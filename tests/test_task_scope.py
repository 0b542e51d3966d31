"""TaskCancelScope behaves like the anyio CancelScope it replaces on the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util

import anyio
import pytest

from aduib_asgi.qos.task_scope import TaskCancelScope


def test_cancel_from_another_task_ends_the_body_and_is_caught() -> None:
    async def main() -> tuple[bool, list[str]]:
        steps: list[str] = []
        cs = TaskCancelScope()

        async def body() -> None:
            with cs:
                steps.append("in")
                await asyncio.sleep(30)
                steps.append("never")
            steps.append("after")
            await asyncio.sleep(0)  # not cancelled again: the cancellation was taken back
            steps.append("still running")

        task = asyncio.ensure_future(body())
        await asyncio.sleep(0.01)
        cs.cancel()
        cs.cancel()  # idempotent
        await asyncio.wait_for(task, 5)
        assert not task.cancelled() and task.cancelling() == 0
        return cs.cancelled_caught, steps

    caught, steps = asyncio.run(main())
    assert caught
    assert steps == ["in", "after", "still running"]


def test_someone_elses_cancellation_passes_through() -> None:
    async def main() -> None:
        cs = TaskCancelScope()
        entered = asyncio.Event()

        async def body() -> None:
            with cs:
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.ensure_future(body())
        await entered.wait()
        task.cancel()  # the server's, not the scope's
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not cs.cancelled_caught

    asyncio.run(main())


def test_both_cancel_the_outer_one_wins() -> None:
    async def main() -> None:
        cs = TaskCancelScope()
        entered = asyncio.Event()

        async def body() -> None:
            with cs:
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.ensure_future(body())
        await entered.wait()
        cs.cancel()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not cs.cancelled_caught

    asyncio.run(main())


def test_uncancelled_body_and_late_cancel_leave_no_trace() -> None:
    async def main() -> None:
        cs = TaskCancelScope()
        with cs:
            await asyncio.sleep(0)
        assert not cs.cancelled_caught
        cs2 = TaskCancelScope()
        with cs2:
            cs2.cancel()  # cancelled, but the body swallows it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)
        assert not cs2.cancelled_caught
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0)  # and nothing is pending for the code after

    asyncio.run(main())


def test_cancelled_before_entering() -> None:
    async def main() -> bool:
        cs = TaskCancelScope()
        cs.cancel()
        with cs:
            await asyncio.sleep(5)
        return cs.cancelled_caught

    assert asyncio.run(main())


@pytest.mark.skipif(importlib.util.find_spec("trio") is None, reason="trio not installed")
def test_on_trio_it_is_an_anyio_scope() -> None:
    async def main() -> bool:
        cs = TaskCancelScope()
        async with anyio.create_task_group() as tg:
            async def body() -> None:
                with cs:
                    await anyio.sleep(30)

            tg.start_soon(body)
            await anyio.sleep(0.01)
            cs.cancel()
        return cs.cancelled_caught

    assert anyio.run(main, backend="trio")


def test_a_shielded_anyio_scope_inside_finishes_first() -> None:
    async def main() -> tuple[list[str], bool]:
        log: list[str] = []
        cs = TaskCancelScope()
        shielded = asyncio.Event()

        async def body() -> None:
            with cs:
                with anyio.CancelScope(shield=True):
                    shielded.set()
                    await anyio.sleep(0.05)
                    log.append("shielded work done")
                log.append("after the shield")  # no await: runs before the delivery
                await asyncio.sleep(5)
                log.append("never")

        task = asyncio.ensure_future(body())
        await shielded.wait()
        cs.cancel()
        await asyncio.wait_for(task, 5)
        return log, cs.cancelled_caught

    log, caught = asyncio.run(main())
    assert log == ["shielded work done", "after the shield"]
    assert caught


def test_a_cancel_waiting_for_a_shield_is_dropped_when_the_body_ends() -> None:
    async def main() -> None:
        cs = TaskCancelScope()
        with cs:
            with anyio.CancelScope(shield=True):
                cs.cancel()  # waits for the shield...
                await anyio.sleep(0.02)
        # ...which ended with the body: nothing is delivered afterwards
        await asyncio.sleep(0.05)
        assert not cs.cancelled_caught
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    asyncio.run(main())
