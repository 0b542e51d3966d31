"""TaskService/Subscribe: TaskEvents over the streaming module's SSE framings."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest

from tests.test_tasks_support import (
    TS,
    build_app,
    client_for,
    lifespan,
    sse_call,
    submit,
    wait_terminal,
)

pytestmark = pytest.mark.anyio

SUB = TS + "Subscribe"


def _later(ms: int) -> int:
    return int(time.time() * 1000) + ms


async def test_event_order_with_retries_backoff_and_end_frame(backend: str) -> None:
    app, _, _ = build_app(backend)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/flaky", {"fail_times": 2}, max_attempts=3,
                           scheduled_at_ms=_later(150))
        async with sse_call(app, SUB, {"task_id": sub["task_id"]}) as call:
            assert call.status == 200
            assert call.headers["content-type"].startswith("text/event-stream")
            assert call.headers["aduib-stream-framing"] == "message"
            frames = await call.rest()
    data = [f for f in frames if f["type"] == "data"]
    events = [f["payload"]["data"] for f in data]
    assert [(e["event"], e["task"]["status"], e["task"]["attempt"]) for e in events] == [
        ("progress", "scheduled", 0),
        ("started", "running", 1),
        ("retrying", "retrying", 1),
        ("started", "running", 2),
        ("retrying", "retrying", 2),
        ("started", "running", 3),
        ("completed", "succeeded", 3),
    ]
    # exponential backoff: 10 ms, then 20 ms (initial 10, multiplier 2)
    assert [e["task"]["next_retry_at_ms"] - e["timestamp_ms"]
            for e in events if e["event"] == "retrying"] == [10, 20]
    assert events[-1]["task"]["result"] == {"calls": 3}
    assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["type"] == "end"
    assert frames[-1]["payload"]["control"] == {"final": True, "total_count": 7}


async def test_envelope_framing_sends_bare_task_events_then_closes() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ok", {"a": 1}, scheduled_at_ms=_later(100))
        async with sse_call(app, SUB, {"task_id": sub["task_id"]},
                            {"Aduib-Stream-Framing": "envelope"}) as call:
            assert call.headers["aduib-stream-framing"] == "envelope"
            blocks = []
            while (b := await call.next_block()) is not None:
                blocks.append(b)
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    events = [json.loads(b[6:]) for b in blocks]
    assert [e["event"] for e in events] == ["progress", "started", "completed"]
    assert events[-1]["task"]["result"] == {"echo": {"a": 1}}
    assert set(events[0]) == {"event", "task", "timestamp_ms"}


async def test_envelope_framing_by_server_default() -> None:
    app, _, _ = build_app(framing="envelope")
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ok", {})
        await wait_terminal(c, sub["task_id"])
        async with sse_call(app, SUB, {"task_id": sub["task_id"]}) as call:
            events = await call.rest()
    assert [e["event"] for e in events] == ["completed"]


async def test_subscribe_to_a_finished_task_sends_its_terminal_event() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/flaky", {"fail_times": 5, "code": 2003})
        await wait_terminal(c, sub["task_id"])
        async with sse_call(app, SUB, {"task_id": sub["task_id"]}) as call:
            frames = await call.rest()
    assert [f["type"] for f in frames] == ["data", "end"]
    assert frames[0]["payload"]["data"]["event"] == "failed"
    assert frames[0]["payload"]["data"]["task"]["error"]["code"] == 2003


async def test_cancel_while_subscribed_ends_with_canceled() -> None:
    app, _, h = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {})
        await h.started.wait()
        async with sse_call(app, SUB, {"task_id": sub["task_id"]}) as call:
            first = await call.next_data()
            assert first["payload"]["data"]["event"] == "started"
            r = await c.post(TS + "Cancel", json={"task_id": sub["task_id"], "reason": "bye"})
            assert r.json()["canceled"] is True
            frames = await call.rest()
    assert [f["type"] for f in frames] == ["data", "end"]
    last = frames[0]["payload"]["data"]
    assert last["event"] == "canceled" and last["task"]["status"] == "canceled"


async def test_progress_events_and_event_filter() -> None:
    app, _, h = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/progress", {})
        tid = sub["task_id"]
        done: list[Any] = []

        async def only_completed() -> None:
            # The first item is pulled before the response starts: this one starts late.
            async with sse_call(app, SUB, {"task_id": tid, "events": ["completed"]}) as call:
                done.extend(await call.rest())

        async with anyio.create_task_group() as tg:
            tg.start_soon(only_completed)
            async with sse_call(app, SUB, {"task_id": tid}) as all_events:
                seen: list[dict[str, Any]] = []
                with anyio.fail_after(10):
                    while True:  # until the first report (live event or the snapshot)
                        f = await all_events.next_data()
                        seen.append(f["payload"]["data"])
                        if seen[-1]["task"]["progress"]:
                            break
                h.gate.set()
                rest = await all_events.rest()
    seen += [f["payload"]["data"] for f in rest if f["type"] == "data"]
    progress = [e["task"]["progress"] for e in seen if e["task"]["progress"]]
    assert progress[0] == {"current": 1, "total": 2, "message": "half", "percentage": 50.0}
    assert [e["event"] for e in seen][-2:] == ["progress", "completed"]
    assert [f["payload"]["data"]["event"] for f in done if f["type"] == "data"] == ["completed"]


async def test_unknown_task_is_a_plain_404_before_the_stream() -> None:
    app, _, _ = build_app()
    async with lifespan(app):
        async with sse_call(app, SUB, {"task_id": "nope"}) as call:
            assert call.status == 404
            assert call.headers["content-type"].startswith("application/json")
        async with client_for(app) as c:
            r = await c.post(SUB, json={"task_id": "nope"})
            assert (r.status_code, r.json()["error"]["code"]) == (404, 4000)
            r = await c.post(SUB, json={"task_id": "nope"},
                             headers={"Aduib-Stream-Framing": "envelope"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/event-stream")
    assert '"code":4000' in r.text.replace(" ", "")


async def test_subscriber_disconnect_releases_the_subscription() -> None:
    app, manager, h = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {})
        await h.started.wait()
        async with sse_call(app, SUB, {"task_id": sub["task_id"]}) as call:
            await call.next_data()
            assert manager._subs  # one live subscription
            call.disconnect()
            with anyio.fail_after(5):
                await call.done.wait()
        assert not manager._subs
        h.gate.set()
        await wait_terminal(c, sub["task_id"])


async def test_demo_subscribe_and_watch_with_the_2_0_1_sse_headers() -> None:
    """Through the full demo stack, as aduib-rpc 2.0.1 sends SSE calls (wire_contract §3)."""
    from aduib_asgi.demo import DemoConfig, build_demo_app

    app = build_demo_app(DemoConfig(env="prod", stream_framing="envelope"))
    sse = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/Echo/sleep", {"ms": 10}, priority=[1])
        r = await c.post(SUB, json={"task_id": sub["task_id"]}, headers=sse)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: ")]
        assert events[-1]["event"] == "completed"
        assert events[-1]["task"]["result"] == {"slept_ms": 10}
        async with sse_call(app, "/aduib_rpc/v2/HealthService/Watch", {}, sse) as call:
            assert call.status == 200
            assert (await call.next_data())["status"] == "healthy"
