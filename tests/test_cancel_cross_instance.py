"""Cross-instance cancel: two real demo processes on one real Redis.

A stream and a unary call started on one instance are cancelled through the
other within 1.5 s, scoped by caller as a local cancel is (another anonymous
client address, another principal: 404).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.demo_process import DemoProcess, running_demo
from tests.fixtures_redis import RedisServer
from tests.test_gate_demo import CANCEL, RPC, TIMEOUT, Stream, cancel, env

LIMIT = 1.5


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[DemoProcess, DemoProcess, RedisServer]]:
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found on PATH")
    redis = RedisServer(binary)
    redis.start()
    try:
        with running_demo("--redis", redis.url) as a, running_demo("--redis", redis.url) as b:
            yield a, b, redis
    finally:
        redis.stop()


def test_a_stream_started_on_one_instance_is_cancelled_through_the_other(
        pair: tuple[DemoProcess, DemoProcess, RedisServer]) -> None:
    a, b, _ = pair
    rid = f"x-stream-{time.monotonic_ns()}"
    stream = Stream(a, rid)
    other_client = cancel(b, rid, local="127.0.0.2", reason="INJECTED")
    started = time.monotonic()
    r = cancel(b, rid, reason="from-b")
    answered = time.monotonic() - started
    text = stream.finish()
    ended = time.monotonic() - started
    assert other_client.status_code == 404 and other_client.json()["error"]["code"] == 4000
    assert r.status_code == 200 and r.json()["result"] == {"id": rid, "canceled": True}
    assert answered < LIMIT and ended < LIMIT + 1.0, (answered, ended)
    assert '"reason":"from-b"' in text.replace(" ", "") and "INJECTED" not in text


def test_a_unary_call_started_on_one_instance_is_cancelled_through_the_other(
        pair: tuple[DemoProcess, DemoProcess, RedisServer]) -> None:
    a, b, _ = pair
    rid = f"x-unary-{time.monotonic_ns()}"
    alice = {"authorization": "Bearer demo-user-token"}
    result: dict[str, Any] = {}

    def call() -> None:
        with httpx.Client(base_url=a.url, timeout=TIMEOUT, headers=alice) as c:
            t0 = time.monotonic()
            result["response"] = c.post(RPC, json=env("rpc.v2/Echo/sleep", {"ms": 10_000},
                                                      rid=rid))
            result["done"] = time.monotonic() - t0

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    time.sleep(0.5)  # the call is running on A
    by_admin = cancel(b, rid, headers={"authorization": "Bearer demo-admin-token"})
    deadline = time.monotonic() + TIMEOUT
    while True:  # on a loaded machine the call may take a moment to start on A
        started = time.monotonic()
        by_alice = cancel(b, rid, headers=alice, reason="enough")
        if by_alice.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    thread.join(TIMEOUT)
    cancelled_after = time.monotonic() - started
    assert by_admin.status_code == 404
    assert by_alice.status_code == 200 and by_alice.json()["result"]["canceled"] is True
    response = result["response"]
    assert response.status_code == 409 and response.json()["error"]["code"] == 4011
    assert "enough" in response.json()["error"]["message"]
    assert cancelled_after < LIMIT, cancelled_after


def test_an_unknown_id_is_404_quickly_on_every_instance(
        pair: tuple[DemoProcess, DemoProcess, RedisServer]) -> None:
    _, b, _ = pair
    with httpx.Client(base_url=b.url, timeout=TIMEOUT) as c:
        t0 = time.monotonic()
        r = c.post(CANCEL, json={"id": "nobody-runs-this"})
        elapsed = time.monotonic() - t0
    assert r.status_code == 404 and r.json()["error"]["code"] == 4000
    assert elapsed < LIMIT  # every other instance answered "not here"


def test_a_websocket_call_on_one_instance_is_cancelled_through_the_other(
        pair: tuple[DemoProcess, DemoProcess, RedisServer]) -> None:
    import json

    from websockets.sync.client import connect as ws_connect

    from tests.test_gate_demo import ws_url

    a, b, _ = pair
    rid = f"x-ws-{time.monotonic_ns()}"
    with ws_connect(ws_url(a), open_timeout=TIMEOUT) as ws:
        ws.send(json.dumps(env("rpc.v2/Echo/stream", {"count": 100, "interval_ms": 100},
                               rid=rid)))
        first = json.loads(ws.recv(timeout=TIMEOUT))
        assert first["type"] == "data"
        started = time.monotonic()
        r = cancel(b, rid, reason="ws-from-b")
        frames = []
        while True:
            frame = json.loads(ws.recv(timeout=TIMEOUT))
            frames.append(frame)
            if frame["type"] == "end":
                break
        ended = time.monotonic() - started
    assert r.status_code == 200 and r.json()["result"]["canceled"] is True
    cancels = [f for f in frames if f["type"] == "cancel"]
    assert cancels and cancels[0]["payload"]["control"]["reason"] == "ws-from-b"
    assert ended < LIMIT, ended


# last in the module: it takes Redis away for a moment
def test_redis_down_is_503_not_500_and_local_cancels_still_work(
        pair: tuple[DemoProcess, DemoProcess, RedisServer]) -> None:
    a, b, redis = pair
    rid = f"x-local-{time.monotonic_ns()}"
    stream = Stream(a, rid)
    redis.pause()  # connections hang: every Redis call runs into its timeout
    try:
        remote = cancel(b, "not-here")
        local = cancel(a, rid)
    finally:
        redis.resume()
    stream.finish()
    assert remote.status_code == 503 and remote.json()["error"]["code"] == 5002
    assert "retry-after" in remote.headers
    assert local.status_code == 200  # the local fast path needs no Redis
