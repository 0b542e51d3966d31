"""WebSocket /v2/rpc/ws: frames, msgpack, ack window, cancel, invalid frames, client streams."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from tests.conftest import envelope
from tests.stream_harness import ws_client

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    v: int


def make_app(window: int = 4, heartbeat: float = 0.0) -> tuple[Any, RpcDispatcher, dict[str, Any]]:
    reg = MethodRegistry()
    seen: dict[str, Any] = {"cleaned": anyio.Event()}

    async def count(data: dict[str, Any]) -> AsyncIterator[dict[str, int]]:
        for i in range(data.get("n", 3)):
            yield {"i": i}

    async def forever(data: dict[str, Any]) -> AsyncIterator[int]:
        try:
            yield 0
            await anyio.sleep(math.inf)
            yield 1  # pragma: no cover
        finally:
            seen["cleaned"].set()

    async def total(requests: AsyncIterator[Item]) -> dict[str, int]:
        return {"sum": sum([item.v async for item in requests])}

    async def doubler(requests: AsyncIterator[Item], ctx: RequestContext) -> AsyncIterator[int]:
        async for item in requests:
            yield item.v * 2

    reg.register("rpc.v2/W/count", count)
    reg.register("rpc.v2/W/forever", forever)
    reg.register("rpc.v2/W/total", total, input_model=Item, streaming=True, stream_mode="client")
    reg.register("rpc.v2/W/doubler", doubler, input_model=Item, stream_mode="bidi")
    dispatcher = RpcDispatcher(reg)
    dispatcher.streaming.configure(window=window, heartbeat_interval=heartbeat)
    return ErrorMappingMiddleware(dispatcher), dispatcher, seen


def ack(seq: int) -> dict[str, Any]:
    return {"type": "ack", "sequence": 1, "timestamp_ms": 0,
            "payload": {"control": {"ack_sequence": seq}}}


async def test_server_stream_over_websocket_json() -> None:
    app, dispatcher, _ = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/count", {"n": 3}, id="w1"))
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["data", "data", "data", "end"]
    assert [f["sequence"] for f in frames] == [1, 2, 3, 4]
    assert frames[-1]["payload"]["control"] == {"final": True, "total_count": 3}
    assert ws.close_code == 1000
    assert len(dispatcher.streaming.inflight) == 0


async def test_msgpack_binary_frames_when_the_client_speaks_msgpack() -> None:
    app, _, _ = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_msgpack(envelope("rpc.v2/W/count", {"n": 2}))
            msg = await ws.incoming.receive()
            assert msg["type"] == "websocket.send" and msg.get("bytes") is not None
            rest = await ws.rest()
    assert [f["type"] for f in rest] == ["data", "end"]


async def test_subprotocol_selects_msgpack() -> None:
    app, _, _ = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app, subprotocols=["aduib-rpc.msgpack"]) as ws:
            assert ws.accepted is not None
            assert ws.accepted["subprotocol"] == "aduib-rpc.msgpack"
            await ws.send_json(envelope("rpc.v2/W/count", {"n": 1}))
            msg = await ws.incoming.receive()
            assert msg.get("bytes") is not None


async def test_ack_window_bounds_unacknowledged_data_frames() -> None:
    window = 4
    app, _, _ = make_app(window=window)
    n = 25
    received = 0
    acked = 0
    max_outstanding = 0
    with anyio.fail_after(20):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/count", {"n": n}))
            # A slow consumer: it reads everything it can, acks only when the server stalls.
            last_seq = 0
            while True:
                with anyio.move_on_after(0.2) as idle:
                    f = await ws.frame()
                if idle.cancelled_caught:
                    assert received - acked == window  # stalled exactly at the window
                    await ws.send_json(ack(last_seq))
                    acked = received
                    continue
                if f is None:
                    break
                last_seq = f["sequence"]
                if f["type"] == "data":
                    received += 1
                    max_outstanding = max(max_outstanding, received - acked)
                if f["type"] == "end":
                    assert f["payload"]["control"]["total_count"] == n
    assert received == n
    assert max_outstanding == window


async def test_client_cancel_frame_ends_with_cancel_then_end() -> None:
    app, _, seen = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/forever"))
            assert (await ws.frame() or {})["type"] == "data"
            await ws.send_json({"type": "cancel", "payload": {"control": {"reason": "bye"}}})
            frames = await ws.rest()
            await seen["cleaned"].wait()
    assert [f["type"] for f in frames] == ["cancel", "end"]
    assert frames[0]["payload"]["control"]["reason"] == "bye"
    assert ws.close_code == 1000


async def test_websocket_disconnect_runs_handler_cleanup() -> None:
    app, dispatcher, seen = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/forever", id="wd"))
            await ws.frame()
            await ws.disconnect()
            await seen["cleaned"].wait()
    assert len(dispatcher.streaming.inflight) == 0


@pytest.mark.parametrize(
    ("send", "close_code"),
    [
        ({"type": "bogus"}, 1008),
        ([1, 2], 1008),
        ({"type": "ack", "payload": {"control": {"ack_sequence": "x"}}}, 1008),
        ({"type": "ack", "payload": {"control": {"ack_sequence": 999}}}, 1008),
        ({"type": "data", "payload": {"data": {}}}, 1008),  # server-streaming takes no data
        ("{not json", 1007),
    ],
)
async def test_invalid_client_frame_is_error_1002_then_close(send: Any, close_code: int) -> None:
    app, _, seen = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/forever"))
            await ws.frame()
            if isinstance(send, str):
                await ws.send_text(send)
            else:
                await ws.send_json(send)
            frames = await ws.rest()
            await seen["cleaned"].wait()
    assert [f["type"] for f in frames] == ["error", "end"]
    expected = 1003 if close_code == 1007 else 1002
    assert frames[0]["payload"]["error"]["code"] == expected
    assert ws.close_code == close_code


@pytest.mark.parametrize(
    ("first", "code", "close_code"),
    [
        (envelope("rpc.v2/W/nope"), 4001, 1008),
        ({"aduib_rpc": "2.0"}, 1002, 1008),
    ],
)
async def test_bad_request_envelope_is_error_end_close(first: Any, code: int,
                                                       close_code: int) -> None:
    app, _, _ = make_app()
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(first)
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["error", "end"]
    assert frames[0]["payload"]["error"]["code"] == code
    assert ws.close_code == close_code


def data_frame(value: Any) -> dict[str, Any]:
    return {"type": "data", "payload": {"data": value}}


async def test_client_streaming_handler() -> None:
    app, _, _ = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/total"))
            for v in (1, 2, 3):
                await ws.send_json(data_frame({"v": v}))
            await ws.send_json({"type": "end"})
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["data", "end"]
    assert frames[0]["payload"]["data"] == {"sum": 6}


async def test_bidirectional_handler_with_acks() -> None:
    app, _, _ = make_app(window=2)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/doubler", {"v": 1}))  # data = first item
            out = []
            f = await ws.frame()
            assert f is not None
            out.append(f["payload"]["data"])
            await ws.send_json(ack(f["sequence"]))
            for v in (5, 7):
                await ws.send_json(data_frame({"v": v}))
                f = await ws.frame()
                assert f is not None
                out.append(f["payload"]["data"])
                await ws.send_json(ack(f["sequence"]))
            await ws.send_json({"type": "end"})
            frames = await ws.rest()
    assert out == [2, 10, 14]
    assert [f["type"] for f in frames] == ["end"]
    assert frames[0]["payload"]["control"]["total_count"] == 3


async def test_bad_client_item_is_2001_in_band() -> None:
    app, _, _ = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/total"))
            await ws.send_json(data_frame({"v": "not a number"}))
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["error", "end"]
    assert frames[0]["payload"]["error"]["code"] == 2001


async def test_client_streaming_method_on_sse_is_refused() -> None:
    from tests.conftest import client_for
    from tests.stream_harness import STREAM

    app, _, _ = make_app()
    async with client_for(app) as c:
        r = await c.post(STREAM, json=envelope("rpc.v2/W/total"))
    assert r.status_code == 400 and r.json()["error"]["code"] == 2000


async def test_websocket_deadline_is_5003_in_band() -> None:
    app, _, _ = make_app(window=0)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/forever", qos={"timeout_ms": 100}))
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["data", "error", "end"]
    assert frames[1]["payload"]["error"]["code"] == 5003


async def test_websocket_heartbeats() -> None:
    app, _, _ = make_app(window=0, heartbeat=0.05)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/forever"))
            assert (await ws.frame() or {})["type"] == "data"
            beat = await ws.frame()
    assert beat is not None and beat["type"] == "heartbeat"
    assert beat["payload"]["control"]["ping_id"] == "1"


async def test_a_client_that_sends_no_request_is_closed() -> None:
    # It used to hold the connection (and a server task) forever.
    app, dispatcher, _ = make_app(window=0)
    dispatcher.streaming.configure(ws_request_timeout=0.2)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["error", "end"]
    assert frames[0]["payload"]["error"]["code"] == 5003
    assert ws.close_code == 1013


async def test_a_client_that_never_acks_gets_5003_then_end() -> None:
    # A connected client that never acks used to stall the handler forever.
    app, dispatcher, _ = make_app(window=2)
    dispatcher.streaming.configure(ack_timeout=0.3)
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/W/count", {"n": 10}))
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["data", "data", "error", "end"]
    assert [f["sequence"] for f in frames] == [1, 2, 3, 4]
    assert frames[2]["payload"]["error"]["code"] == 5003
    assert frames[-1]["payload"]["control"]["total_count"] == 2
    assert ws.close_code == 1013
    assert len(dispatcher.streaming.inflight) == 0
