"""Errors raised by any layer in front of a stream follow the request's SSE framing (§5.1)."""

from __future__ import annotations

import json

import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

STREAM = envelope("rpc.v2/Echo/stream", {"count": 1})
CASES = [
    ({"Authorization": "Bearer bogus"}, 401, 3001),   # auth layer
    ({"X-Tenant-ID": "bad tenant"}, 400, 2003),       # tenant layer
    ({"Content-Type": "text/plain"}, 415, 1003),      # content layer
]


@pytest.mark.parametrize(("headers", "status", "code"), CASES)
@pytest.mark.parametrize("how", ["app default", "request header"])
async def test_envelope_framing_errors_are_one_sse_event(
    headers: dict[str, str], status: int, code: int, how: str
) -> None:
    config = DemoConfig(env="prod", stream_framing="envelope" if how == "app default"
                        else "message")
    extra = {"Aduib-Stream-Framing": "envelope"} if how == "request header" else {}
    async with client_for(build_demo_app(config)) as c:
        r = await c.post(RPC + "/stream", content=json.dumps(STREAM),
                         headers={"content-type": "application/json", "accept":
                                  "text/event-stream", **extra, **headers})
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["aduib-stream-framing"] == "envelope"
    events = [line for line in r.text.split("\n\n") if line]
    assert len(events) == 1 and events[0].startswith("data: ")
    body = json.loads(events[0][len("data: "):])
    assert body["status"] == "error" and body["error"]["code"] == code


@pytest.mark.parametrize(("headers", "status", "code"), CASES)
async def test_message_framing_errors_stay_plain_envelopes(
    headers: dict[str, str], status: int, code: int
) -> None:
    async with client_for(build_demo_app(DemoConfig(env="prod"))) as c:
        r = await c.post(RPC + "/stream", content=json.dumps(STREAM),
                         headers={"content-type": "application/json", **headers})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == code
