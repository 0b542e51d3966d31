"""One gate for every entry path, against a real `aduib-asgi demo` process.

The same quota refuses HTTP unary, SSE, each WebSocket message, the v1 endpoint
and TaskService/Submit of the limited method; ``Slow/work`` (concurrency 1)
holds over WebSocket and as tasks; cancel is scoped by caller (principal, and
client address for anonymous callers).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.demo_process import DemoProcess, running_demo

BASE = "/aduib_rpc"
RPC = BASE + "/v2/rpc"
STREAM = BASE + "/v2/rpc/stream"
CANCEL = BASE + "/v2/rpc/cancel"
V1 = BASE + "/v1/rpc"
TS = BASE + "/v2/TaskService/"
TIMEOUT = 20.0


def env(method: str, data: Any = None, rid: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "id": rid or f"r-{time.monotonic_ns()}",
                            "method": method, "data": data if data is not None else {}}
    body.update(extra)
    return body


def ws_url(demo: DemoProcess) -> str:
    return demo.url.replace("http://", "ws://") + BASE + "/v2/rpc/ws"


def ws_call(demo: DemoProcess, body: dict[str, Any], headers: dict[str, str] | None = None,
            ) -> list[dict[str, Any]]:
    """One WebSocket call: every frame until ``end``."""
    frames: list[dict[str, Any]] = []
    with ws_connect(ws_url(demo), additional_headers=headers or {},
                    open_timeout=TIMEOUT) as ws:
        ws.send(json.dumps(body))
        while True:
            frame = json.loads(ws.recv(timeout=TIMEOUT))
            frames.append(frame)
            if frame["type"] == "end":
                return frames


def task_status(c: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        task: dict[str, Any] = c.post(TS + "Query", json={"task_id": task_id}).json()["task"]
        if task["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


@pytest.fixture(scope="module")
def demo() -> Any:
    with running_demo() as d:
        yield d


def test_every_entry_path_is_refused_by_the_same_quota(demo: DemoProcess) -> None:
    tenant = {"x-tenant-id": "quota-all-paths"}
    ping = "rpc.v2/Limited/ping"
    with httpx.Client(base_url=demo.url, timeout=TIMEOUT, headers=tenant) as c:
        used = [c.post(RPC, json=env(ping)).status_code for _ in range(3)]
        assert used == [200, 200, 200]
        unary = c.post(RPC, json=env(ping))
        sse = c.post(STREAM, json=env(ping))
        v1 = c.post(V1, json={"aduib_rpc": "1.0", "id": "v1", "method": ping, "data": {}})
        submit = c.post(TS + "Submit", json={"target_method": ping, "params": {}})
    frames = ws_call(demo, env(ping, metadata={"tenant_id": "quota-all-paths"}))
    assert unary.status_code == 429 and unary.json()["error"]["code"] == 5020
    assert int(unary.headers["retry-after"]) >= 1
    assert sse.status_code == 429 and sse.json()["error"]["code"] == 5020
    assert v1.status_code == 429 and v1.json()["error"]["code"] == 5020
    assert submit.status_code == 429 and submit.json()["error"]["code"] == 5020
    assert "retry-after" in submit.headers
    assert [f["type"] for f in frames] == ["error", "end"]
    error = frames[0]["payload"]["error"]
    assert error["code"] == 5020
    assert any(d.get("type") == "rate_limit" for d in error.get("details", []))


def test_websocket_messages_use_the_quota_too(demo: DemoProcess) -> None:
    """20 WebSocket calls of Limited/ping: 3 admitted, the rest 5020."""
    tenant = "quota-ws"
    codes = []
    for _ in range(6):
        frames = ws_call(demo, env("rpc.v2/Limited/ping"), {"x-tenant-id": tenant})
        codes.append(frames[0]["payload"]["error"]["code"] if frames[0]["type"] == "error"
                     else 0)
    assert codes == [0, 0, 0, 5020, 5020, 5020]


def test_submitted_tasks_use_the_quota_too(demo: DemoProcess) -> None:
    with httpx.Client(base_url=demo.url, timeout=TIMEOUT,
                      headers={"x-tenant-id": "quota-tasks"}) as c:
        codes = [c.post(TS + "Submit", json={"target_method": "rpc.v2/Limited/ping"}).status_code
                 for _ in range(6)]
    assert codes == [200, 200, 200, 429, 429, 429]


def test_slow_work_concurrency_holds_over_websocket(demo: DemoProcess) -> None:
    """Concurrency 1: five 300 ms calls over five WebSockets take >= 1.5 s, not 0.3 s."""
    results: list[list[dict[str, Any]]] = []

    def one() -> None:
        results.append(ws_call(demo, env("rpc.v2/Slow/work", {"ms": 300})))

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    elapsed = time.monotonic() - started
    assert len(results) == 5
    assert all(r[0]["type"] == "data" for r in results), results
    assert elapsed >= 1.4  # serialised: 5 x 300 ms (a lower bound: no timing flake)


def test_slow_work_concurrency_holds_for_tasks(demo: DemoProcess) -> None:
    """Tasks run through the method's bulkhead: never two Slow/work at once."""
    with httpx.Client(base_url=demo.url, timeout=TIMEOUT,
                      headers={"x-tenant-id": "slow-tasks"}) as c:
        ids = [c.post(TS + "Submit", json={"target_method": "rpc.v2/Slow/work",
                                           "params": {"ms": 300}}).json()["task_id"]
               for _ in range(4)]
        tasks = [task_status(c, t) for t in ids]
    assert all(t["status"] == "succeeded" for t in tasks), tasks
    # one at a time: each finishes a whole handler run (300 ms) after the previous one
    ends = sorted(t["completed_at_ms"] for t in tasks)
    assert all(b - a >= 250 for a, b in itertools.pairwise(ends)), ends


def test_websocket_message_tenant_is_applied(demo: DemoProcess) -> None:
    """No tenant header: the message's metadata.tenant_id is the call's tenant."""
    frames = ws_call(demo, env("rpc.v2/Echo/context", metadata={"tenant_id": "acme"}))
    assert frames[0]["type"] == "data", frames
    assert frames[0]["payload"]["data"]["tenant_id"] == "acme"
    mixed = ws_call(demo, env("rpc.v2/Echo/context", metadata={"tenant_id": "acme"}),
                    {"x-tenant-id": "globex"})
    assert mixed[0]["type"] == "error" and mixed[0]["payload"]["error"]["code"] == 2003


# -- cancel scoping ------------------------------------------------------------------------


class Stream:
    """An SSE call of Echo/stream read in a thread until its end."""

    def __init__(self, demo: DemoProcess, rid: str, *, local: str = "127.0.0.1",
                 headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(base_url=demo.url, timeout=TIMEOUT, headers=headers or {},
                                   transport=httpx.HTTPTransport(local_address=local))
        self.rid = rid
        self.events: list[str] = []
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.started.wait(TIMEOUT)

    def _read(self) -> None:
        body = env("rpc.v2/Echo/stream", {"count": 100, "interval_ms": 100}, rid=self.rid)
        with self.client.stream("POST", STREAM, json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    self.events.append(line)
                    self.started.set()
        self.started.set()

    def finish(self) -> str:
        self.thread.join(TIMEOUT)
        self.client.close()
        return "\n".join(self.events)


def cancel(demo: DemoProcess, rid: str, *, local: str = "127.0.0.1",
           headers: dict[str, str] | None = None, reason: str = "stop") -> httpx.Response:
    with httpx.Client(base_url=demo.url, timeout=TIMEOUT, headers=headers or {},
                      transport=httpx.HTTPTransport(local_address=local)) as c:
        return c.post(CANCEL, json={"id": rid, "reason": reason})


def test_anonymous_cancel_is_scoped_by_client_address(demo: DemoProcess) -> None:
    rid = f"anon-{time.monotonic_ns()}"
    stream = Stream(demo, rid, local="127.0.0.1")
    other = cancel(demo, rid, local="127.0.0.2", reason="INJECTED")
    own = cancel(demo, rid, local="127.0.0.1", reason="mine")
    text = stream.finish()
    assert other.status_code == 404 and other.json()["error"]["code"] == 4000
    assert own.status_code == 200 and own.json()["result"] == {"id": rid, "canceled": True}
    assert "INJECTED" not in text and '"reason":"mine"' in text.replace(" ", "")


def test_cancel_by_another_principal_is_refused(demo: DemoProcess) -> None:
    alice = {"authorization": "Bearer demo-user-token"}
    rid = f"alice-{time.monotonic_ns()}"
    stream = Stream(demo, rid, headers=alice)
    by_admin = cancel(demo, rid, headers={"authorization": "Bearer demo-admin-token"})
    by_anonymous = cancel(demo, rid)
    by_alice = cancel(demo, rid, headers=alice)
    stream.finish()
    assert by_admin.status_code == 404 and by_anonymous.status_code == 404
    assert by_alice.status_code == 200


def test_a_running_task_and_an_http_call_share_the_concurrency_limit(demo: DemoProcess) -> None:
    """One bulkhead for Slow/work: an HTTP call waits while a task holds the slot."""
    with httpx.Client(base_url=demo.url, timeout=TIMEOUT,
                      headers={"x-tenant-id": "slow-mixed"}) as c:
        tid = c.post(TS + "Submit", json={"target_method": "rpc.v2/Slow/work",
                                          "params": {"ms": 1500}}).json()["task_id"]
        deadline = time.monotonic() + TIMEOUT
        while c.post(TS + "Query", json={"task_id": tid}).json()["task"]["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)  # the task is (very likely) in its handler, holding the slot
        r = c.post(RPC, json=env("rpc.v2/Slow/work", {"ms": 0}))
        returned_ms = time.time() * 1000
        task = task_status(c, tid)
    assert r.status_code == 200 and task["status"] == "succeeded"
    # the task's handler ran [completed - 1500 ms, completed]; the HTTP call's handler
    # may not run inside it: it returned either after it or before it began
    end = task["completed_at_ms"]
    assert returned_ms >= end - 50 or returned_ms <= end - 1500 + 50, (returned_ms, end)
