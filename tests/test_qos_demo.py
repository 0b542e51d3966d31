"""The demo's QoS behaviour through the full default stack (DEMO.md)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.middleware import AdmissionMiddleware
from tests.conftest import RPC, client_for, envelope
from tests.qos_helpers import wait_until

pytestmark = pytest.mark.anyio


async def test_slow_work_returns_done(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Slow/work", {"ms": 1, "tag": "a"},
                                                  qos={"retry": {"max_attempts": 2}}))
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"done": "a"}
    assert r.headers["aduib-retry-attempts"] == "1"  # idempotent: the retry policy applied


async def test_slow_work_one_in_flight_queue_by_priority() -> None:
    order: list[str] = []
    app = build_demo_app(DemoConfig())
    layer: Any = app
    while not isinstance(layer, AdmissionMiddleware):
        layer = layer.app

    def state() -> tuple[int, int]:
        b = layer._registered.get("rpc.v2/Slow/work")
        return (0, 0) if b is None else (b.in_flight, b.queued)

    async with client_for(app) as client:

        async def call(tag: str, ms: int, priority: int) -> None:
            r = await client.post(RPC, json=envelope(
                "rpc.v2/Slow/work", {"ms": ms, "tag": tag}, qos={"priority": priority}))
            assert r.status_code == 200, r.text
            order.append(r.json()["result"]["done"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", 1000, 1)
            await wait_until(lambda: state() == (1, 0))  # "first" holds the one slot
            tg.start_soon(call, "low", 0, 0)
            await wait_until(lambda: state() == (1, 1))
            tg.start_soon(call, "critical", 0, 3)
    assert order == ["first", "critical", "low"]


async def test_deadline_visible_and_enforced(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/context", {},
                                                  qos={"timeout_ms": 5000}))
    remaining: Any = r.json()["result"]["deadline_remaining_ms"]
    assert 0 < remaining <= 5000
    t0 = time.monotonic()
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/sleep", {"ms": 2000},
                                                  qos={"timeout_ms": 200}))
    assert r.status_code == 504 and r.json()["error"]["code"] == 5003
    assert time.monotonic() - t0 < 1.0


async def test_draining_demo_answers_5002() -> None:
    config = DemoConfig()
    async with client_for(build_demo_app(config)) as client:
        config.shutdown.start_draining()
        r = await client.post(RPC, json=envelope("rpc.v2/Echo/echo", {"a": 1}))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == 5002
