"""Fault drills against a real demo process (issue 14 item 4, docs/reliability.md).

Redis SIGKILLed and restarted under load; a client that sends its body slowly;
a client that never reads its response; SIGTERM with open streams and calls.
(A sync handler that blocks its thread vs the deadline:
tests/test_qos_deadline.py::test_sync_handler_is_abandoned_on_deadline.)
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.demo_process import DemoProcess, running_demo
from tests.fixtures_redis import RedisServer
from tests.raw_clients import envelope_bytes, open_sse, read_some

RPC = "/aduib_rpc/v2/rpc"
TASKS = "/aduib_rpc/v2/TaskService/"
STATS_ENV = {"ADUIB_DEMO_STATS": "1"}
#: The demo's storage timeouts: rate limit and idempotency 0.5 s, task store 2 s.
STORE_TIMEOUT = {"ratelimit": 0.5, "idempotency": 0.5, "tasks": 2.0}
SLACK = 1.5  # a shared 2-core machine


def rpc(method: str, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "method": method}
    if data is not None:
        body["data"] = data
    return body


def echo_ok(demo: DemoProcess) -> float:
    t0 = time.monotonic()
    r = httpx.post(demo.url + RPC, json=rpc("rpc.v2/Echo/echo", {"x": 1}), timeout=10)
    assert r.status_code == 200
    return time.monotonic() - t0


def stats(demo: DemoProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(demo.url + "/aduib_rpc/debug/stats", timeout=10).json()
    return data


def store_calls(c: httpx.Client, n: int) -> list[tuple[str, int, float]]:
    """One call through each store: (store, status, seconds)."""
    out = []
    for store, send in (
        ("ratelimit", lambda: c.post(RPC, json=rpc("rpc.v2/Limited/ping"),
                                     headers={"x-tenant-id": f"t{n}"})),
        ("idempotency", lambda: c.post(RPC, json=rpc("rpc.v2/Counter/incr"),
                                       headers={"idempotency-key": uuid.uuid4().hex})),
        ("tasks", lambda: c.post(TASKS + "Submit", json={"target_method": "rpc.v2/Echo/echo",
                                                         "params": {"n": n}})),
    ):
        t0 = time.monotonic()
        status = send().status_code
        out.append((store, status, time.monotonic() - t0))
    return out


@pytest.mark.redis
def test_redis_sigkilled_and_restarted_under_load(own_redis: RedisServer) -> None:
    with running_demo("--redis", own_redis.url) as demo, httpx.Client(base_url=demo.url,
                                                                      timeout=30) as c:
        before = store_calls(c, 0)
        assert [s for _, s, _ in before] == [200, 200, 200], before
        own_redis.kill()
        down: list[tuple[str, int, float]] = []
        t_end = time.monotonic() + 3
        n = 1
        while time.monotonic() < t_end:
            down += store_calls(c, n)
            n += 1
        assert echo_ok(demo) < 2.0  # calls that need no store are untouched
        own_redis.start()
        restarted = time.monotonic()
        recovered: float | None = None
        while time.monotonic() - restarted < 15:
            calls = store_calls(c, n)
            n += 1
            if all(s == 200 for _, s, _ in calls):
                recovered = time.monotonic() - restarted
                break
            time.sleep(0.05)
    statuses = {(store, s) for store, s, _ in down}
    assert all(s in (200, 429, 503) for _, s in statuses), statuses  # never a 500
    assert {s for store, s in statuses if store != "ratelimit"} & {503}  # the outage was seen
    for store, _, secs in down:
        assert secs < STORE_TIMEOUT[store] + SLACK, (store, secs)
    assert recovered is not None and recovered < 5.0, recovered


def test_a_client_sending_its_body_slowly_holds_up_no_one() -> None:
    body = envelope_bytes("rpc.v2/Echo/echo", {"pad": "x" * 200})
    with running_demo() as demo:
        host, port = demo.url.removeprefix("http://").split(":")
        socks = []
        for _ in range(20):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall((f"POST {RPC} HTTP/1.1\r\nHost: {host}\r\n"
                       "Content-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode())
            socks.append(s)
        for i in range(10):  # a trickle: 10 bytes per client every 100 ms
            for s in socks:
                s.sendall(body[i * 10:(i + 1) * 10])
            assert echo_ok(demo) < 2.0
            time.sleep(0.1)
        for s in socks:
            s.sendall(body[100:])
        answers = [s.recv(65536) for s in socks]
        for s in socks:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers[:1]


def test_a_client_that_never_reads_its_response_costs_only_its_buffers() -> None:
    with running_demo(env=STATS_ENV) as demo:
        host, port = demo.url.removeprefix("http://").split(":")
        base = stats(demo)
        body = envelope_bytes("rpc.v2/Echo/big", {"size": 8 * 1024 * 1024})
        socks = []
        for _ in range(4):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall((f"POST {RPC} HTTP/1.1\r\nHost: {host}\r\n"
                       "Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            socks.append(s)
        time.sleep(1.0)
        for _ in range(5):
            assert echo_ok(demo) < 2.0
        held = stats(demo)
        # each unread 8 MiB answer is held once (the encoded body), not copied per retry
        assert held["rss_bytes"] - base["rss_bytes"] < 4 * 8 * 2**20 * 3
        for s in socks:
            s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = stats(demo)
            if after["open_fds"] <= base["open_fds"] + 2 and after["asyncio_tasks"] <= \
                    base["asyncio_tasks"] + 2:
                break
            time.sleep(0.1)
        assert after["open_fds"] <= base["open_fds"] + 2, (base, after)
        assert after["asyncio_tasks"] <= base["asyncio_tasks"] + 2, (base, after)


def test_sigterm_with_open_streams_and_calls_drains_within_the_grace_period() -> None:
    with running_demo("--shutdown-grace", "3", env=STATS_ENV) as demo:
        streams = [open_sse(demo.url, envelope_bytes(
            "rpc.v2/Echo/stream", {"count": 100_000, "interval_ms": 50})) for _ in range(5)]
        for s in streams:
            read_some(s, 200)
        results: list[int] = []

        def slow_call() -> None:
            r = httpx.post(demo.url + RPC, json=rpc("rpc.v2/Echo/sleep", {"ms": 1500}),
                           timeout=30)
            results.append(r.status_code)

        callers = [threading.Thread(target=slow_call) for _ in range(3)]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 20
        while stats(demo)["inflight_calls"] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)  # 5 streams + 3 unary calls registered for /rpc/cancel
        assert stats(demo)["inflight_calls"] == 8
        t0 = time.monotonic()
        demo.proc.send_signal(15)
        tails = []
        for s in streams:  # each stream ends in-band after the grace period
            s.settimeout(10)
            buf = b""
            while b"event: end" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            tails.append(buf)
            s.close()
        for t in callers:
            t.join(10)
        rc = demo.stop()
        elapsed = time.monotonic() - t0
    assert results == [200, 200, 200]  # calls in flight finish during the grace period
    for tail in tails:
        assert b'"code":5002' in tail and b"event: end" in tail, tail[-300:]
    assert rc == 0 and elapsed < 3 + 2 + SLACK
