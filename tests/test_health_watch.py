"""HealthService/Watch: the status now, then every change, over the streaming framings."""

from __future__ import annotations

import json

import anyio
import pytest

from aduib_asgi.health import HealthRegistry
from tests.test_tasks_support import HS, build_app, client_for, sse_call

pytestmark = pytest.mark.anyio

WATCH = HS + "Watch"


def _health(app: object) -> HealthRegistry:
    reg: HealthRegistry = app.app.app.health  # type: ignore[attr-defined]
    return reg


async def test_watch_streams_the_status_then_each_change() -> None:
    app, _, _ = build_app()
    state = {"db": "healthy"}
    _health(app).add("db", lambda: state["db"], critical=True)
    async with sse_call(app, WATCH, {}) as call:
        assert call.status == 200
        assert call.headers["aduib-stream-framing"] == "message"
        first = await call.next_data()
        assert first["type"] == "data"
        assert first["payload"]["data"] == {"status": "healthy",
                                            "services": {"db": "healthy", "tasks": "healthy"}}
        state["db"] = "unhealthy"
        with anyio.fail_after(5):
            second = await call.next_data()
        assert second["payload"]["data"]["status"] == "unhealthy"
        assert second["sequence"] == first["sequence"] + 1  # unchanged polls send nothing
        state["db"] = "healthy"
        with anyio.fail_after(5):
            third = await call.next_data()
        assert third["payload"]["data"]["status"] == "healthy"
        call.disconnect()
        with anyio.fail_after(5):
            await call.done.wait()


async def test_watch_in_envelope_framing_sends_bare_responses() -> None:
    app, _, _ = build_app()
    async with sse_call(app, WATCH, {"service": "T"},
                        {"Aduib-Stream-Framing": "envelope"}) as call:
        assert call.headers["aduib-stream-framing"] == "envelope"
        block = await call.next_block()
    assert block is not None
    assert block.startswith("data: ") and "\n" not in block
    assert json.loads(block[6:]) == {"status": "healthy", "services": {"T": "healthy"}}


async def test_watch_unknown_service_is_a_plain_404() -> None:
    app, _, _ = build_app()
    async with client_for(app) as c:
        r = await c.post(WATCH, json={"service": "Nope"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 4002
