"""The demo's rpc.v2/Echo/stream (DEMO.md) and the demo's streaming flags."""

from __future__ import annotations

import json

import anyio
import httpx
import msgpack
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from tests.conftest import client_for, envelope
from tests.stream_harness import STREAM, frames_of, parse_sse

pytestmark = pytest.mark.anyio


async def test_echo_stream_count(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(STREAM, json=envelope("rpc.v2/Echo/stream",
                                                     {"count": 3, "interval_ms": 5}))
    assert r.status_code == 200
    frames = frames_of(r.content)
    assert [f["payload"].get("data") for f in frames[:3]] == [{"index": i} for i in range(3)]
    assert frames[-1]["type"] == "end"
    assert frames[-1]["payload"]["control"]["total_count"] == 3


async def test_echo_stream_fail_at_with_code(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(STREAM, json=envelope(
        "rpc.v2/Echo/stream", {"count": 5, "fail_at": 2, "fail_code": 4001}))
    frames = frames_of(r.content)
    assert [f["type"] for f in frames] == ["data", "data", "error", "end"]
    assert frames[2]["payload"]["error"]["code"] == 4001


async def test_echo_stream_fail_at_zero_is_a_plain_http_error(
        demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(STREAM, json=envelope("rpc.v2/Echo/stream",
                                                     {"count": 5, "fail_at": 0}))
    assert r.status_code == 500
    assert r.json()["error"]["code"] == 5000


async def test_echo_stream_bad_count_is_2003(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(STREAM, json=envelope("rpc.v2/Echo/stream", {"count": "x"}))
    assert r.status_code == 400 and r.json()["error"]["code"] == 2003


@pytest.mark.parametrize(("method", "data"), [
    ("rpc.v2/Echo/stream", {"count": float("inf")}),
    ("rpc.v2/Echo/stream", {"count": float("nan")}),
    ("rpc.v2/Echo/stream", {"count": 2, "interval_ms": float("inf")}),
    ("rpc.v2/Echo/sleep", {"ms": float("inf")}),
])
async def test_non_finite_numbers_are_refused(demo_client: httpx.AsyncClient, method: str,
                                              data: dict[str, float]) -> None:
    # msgpack carries inf/nan natively: they used to be 500s (int(inf)) or endless sleeps.
    # Now the msgpack codec refuses them like the JSON one (1003); the demo services
    # still check their own inputs (2003) for codecs that let them through.
    body = msgpack.packb(envelope(method, data))
    path = STREAM if method.endswith("stream") else "/aduib_rpc/v2/rpc"
    with anyio.fail_after(10):
        r = await demo_client.post(path, content=body, headers={
            "content-type": "application/msgpack", "accept": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == 1003


async def test_demo_stream_framing_flag() -> None:
    app = build_demo_app(DemoConfig(stream_framing="envelope", heartbeat=1.0))
    async with client_for(app) as c:
        r = await c.post(STREAM, json=envelope("rpc.v2/Echo/stream", {"count": 2}, id="d"))
    assert r.headers["aduib-stream-framing"] == "envelope"
    envs = [json.loads(e["data"]) for e in parse_sse(r.content)]
    assert [e["result"] for e in envs] == [{"index": 0}, {"index": 1}]
    assert all(e["id"] == "d" for e in envs)


async def test_demo_websocket_through_the_full_stack() -> None:
    from tests.stream_harness import ws_client

    app = build_demo_app(DemoConfig(heartbeat=0))
    with anyio.fail_after(10):
        async with ws_client(app) as ws:
            await ws.send_json(envelope("rpc.v2/Echo/stream", {"count": 3}, id="ws-demo"))
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["data", "data", "data", "end"]
    assert frames[0]["payload"]["data"] == {"index": 0}
    assert ws.close_code == 1000
