"""DeadlineTimer: one loop timer expires many request deadlines, in order."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from starlette.types import Receive, Scope, Send

from aduib_asgi.middleware import DeadlineMiddleware
from aduib_asgi.middleware.deadline import DEADLINE_SCOPE_KEY
from aduib_asgi.qos.timer import DeadlineTimer, Timed
from tests.conftest import client_for

pytestmark = pytest.mark.anyio


class Entry(Timed):
    __slots__ = ("log", "name", "then")

    def __init__(self, name: str, log: list[str], then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.then = then

    def expire(self) -> None:
        self.log.append(self.name)
        if self.then is not None:
            self.then()


async def test_entries_expire_in_deadline_order_and_removed_ones_never() -> None:
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    log: list[str] = []
    done = anyio.Event()
    now = loop.time()
    late, early, gone = Entry("late", log), Entry("early", log), Entry("gone", log)
    timer.add(late, now + 0.06)
    timer.add(gone, now + 0.01)
    timer.add(early, now + 0.02)  # earlier than the armed 'late' was: re-armed
    timer.remove(gone)
    last = Entry("last", log, done.set)
    timer.add(last, now + 0.08)
    with anyio.fail_after(5):
        await done.wait()
    assert log == ["early", "late", "last"]
    assert len(timer) == 0


async def test_moving_a_deadline_replaces_it() -> None:
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    log: list[str] = []
    a, b = Entry("a", log), Entry("b", log)
    timer.add(a, loop.time() + 0.01)
    timer.add(b, loop.time() + 0.03)
    timer.add(a, math.inf)  # no deadline any more
    timer.add(b, loop.time() + 0.001)  # sooner
    await anyio.sleep(0.1)
    assert log == ["b"]


async def test_dead_entries_are_compacted() -> None:
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    log: list[str] = []
    keep = Entry("keep", log)
    timer.add(keep, loop.time() + 60)
    entries = [Entry(str(i), log) for i in range(1000)]
    for i, e in enumerate(entries):
        timer.add(e, loop.time() + 30 + i / 1000)
    for e in entries[:-1]:  # all but the newest, oldest first: not LIFO
        timer.remove(e)
    assert len(timer) == 2
    assert len(timer._heap) < 200  # dead items do not pile up
    timer.remove(entries[-1])
    timer.remove(keep)
    assert len(timer) == 0


async def test_a_stream_can_lift_the_deadline() -> None:
    """Setting the published scope's deadline to inf stops the layer's enforcement."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        dscope: Any = scope["aduib.context"].extras[DEADLINE_SCOPE_KEY]
        dscope.deadline = math.inf
        await anyio.sleep(0.3)  # well past the 50 ms budget
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late but fine"})

    async with client_for(DeadlineMiddleware(app)) as client:
        r = await client.get("/", headers={"X-Timeout-Ms": "50"})
    assert r.status_code == 200
    assert r.text == "late but fine"


async def test_a_deadline_can_be_brought_forward() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        dscope: Any = scope["aduib.context"].extras[DEADLINE_SCOPE_KEY]
        dscope.deadline = anyio.current_time() + 0.02
        await anyio.sleep(5)

    async with client_for(DeadlineMiddleware(app)) as client:
        with anyio.fail_after(3):
            r = await client.get("/", headers={"X-Timeout-Ms": "60000"})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == 5003
