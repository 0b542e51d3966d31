"""`aduib-asgi demo --workers N` (issue 17 item 3): N uvicorn worker processes on one socket
sharing the Redis stores; refused with the memory stores. Real processes, real Redis."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.demo_process import running_demo
from tests.fixtures_redis import RedisServer

RPC = "/aduib_rpc/v2/rpc"
TS = "/aduib_rpc/v2/TaskService/"


def _workers(pid: int) -> list[int]:
    """The worker processes among ``pid``'s children (uvicorn spawns them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


def _post(url: str, body: dict[str, object], **headers: str) -> httpx.Response:
    # a new connection per call, so the calls spread over the workers
    return httpx.post(url, json=body, headers=headers, timeout=20)


def test_more_than_one_worker_needs_redis() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--port", "0", "--workers", "2"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--workers N > 1 needs --redis" in proc.stderr
    assert "quota" in proc.stderr  # says why


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_two_workers_share_quotas_idempotency_and_tasks(redis_url: str,
                                                        redis_server: RedisServer) -> None:
    with running_demo("--workers", "2", "--redis", redis_url) as demo:
        url = demo.url
        ping = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Limited/ping", "data": {}}
        # the first call waits in the socket's backlog until a worker accepts it
        assert _post(url + RPC, ping, **{"x-tenant-id": "warm"}).status_code == 200
        assert len(_workers(demo.proc.pid)) == 2

        # one quota across the workers: 3 per 10 s per tenant
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(lambda _: _post(url + RPC, ping,
                                                    **{"x-tenant-id": "q"}).status_code,
                                    range(10)))
        assert codes == [200] * 3 + [429] * 7

        # one execution per idempotency key across the workers
        incr = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Counter/incr",
                "data": {"by": 1}}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: _post(url + RPC, incr, **{"idempotency-key": "once",
                                                    "x-tenant-id": "i"}), range(16)))
        done = [a for a in answers if a.status_code == 200]
        assert all(a.status_code in (200, 409) for a in answers)
        assert done and len({a.json()["result"]["value"] for a in done}) == 1
        assert sum(a.headers.get("idempotent-replayed") != "true" for a in done) <= 1

        # a task submitted through one worker is seen through any
        sub = _post(url + TS + "Submit", {"target_method": "rpc.v2/Echo/echo",
                                          "params": {"x": 1}})
        assert sub.status_code == 200, sub.text
        task_id = sub.json()["task_id"]
        for _ in range(8):
            q = _post(url + TS + "Query", {"task_id": task_id})
            assert q.status_code == 200 and q.json()["task"]["task_id"] == task_id
        workers = _workers(demo.proc.pid)
        assert demo.stop(signal.SIGTERM) == 0
    for pid in workers:  # the workers ended with the parent
        assert not Path(f"/proc/{pid}").exists() or \
            "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_workers_exit_gracefully_on_sigterm(redis_url: str, redis_server: RedisServer) -> None:
    """SIGTERM to the parent reaches each worker's graceful exit (readiness 503, drain),
    not only uvicorn's plain one."""
    with running_demo("--workers", "2", "--redis", redis_url, "--log-level", "info") as demo:
        ping = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/echo", "data": {}}
        assert _post(demo.url + RPC, ping).status_code == 200
        assert len(_workers(demo.proc.pid)) == 2
        # a worker still starting when SIGTERM comes has nothing to drain: wait for both
        deadline = time.monotonic() + 60
        while demo.output.count("Application startup complete.") < 2:
            assert time.monotonic() < deadline, demo.output
            time.sleep(0.05)
        assert demo.stop(signal.SIGTERM) == 0
    output = demo.output
    assert output.count("shutting down: readiness probe answers 503") == 2, output
    assert output.count("draining: no new requests admitted") == 2, output


def test_worker_app_wraps_the_installed_handlers_not_uvicorn_server() -> None:
    """Building a worker's app leaves ``uvicorn.Server`` (a global) as it was; the
    server's installed signal handler still runs, after the graceful exit plan."""
    import argparse
    import asyncio
    import json
    import logging
    import os

    import uvicorn

    from aduib_asgi.cli import DEMO_SETTINGS_ENV, _demo_parser, _demo_settings, demo_worker_app

    parser = argparse.ArgumentParser()
    _demo_parser(parser.add_subparsers())
    settings = {**_demo_settings(parser.parse_args(["demo"]), None), "shutdown_grace": 1,
                "drain_delay": 0, "access_log": False}
    original = uvicorn.Server.handle_exit
    root, uv_error = logging.getLogger(), logging.getLogger("uvicorn.error")
    access = logging.getLogger("aduib_asgi.access")
    saved = (list(root.handlers), root.level, list(uv_error.filters), access.level)
    server_calls: list[int] = []

    async def build() -> object:
        previous = {s: signal.signal(s, lambda n, f: server_calls.append(n))  # "uvicorn's"
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            app = demo_worker_app()
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
            for _ in range(100):
                if server_calls:
                    break
                await asyncio.sleep(0.01)
            return app
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    os.environ[DEMO_SETTINGS_ENV] = json.dumps(settings)
    try:
        app = asyncio.run(build())
    finally:
        del os.environ[DEMO_SETTINGS_ENV]
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()  # the demo's log handler (and its writer thread)
        root.handlers[:], uv_error.filters[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        access.setLevel(saved[3])
    assert uvicorn.Server.handle_exit is original
    assert server_calls == [signal.SIGTERM]
    assert app.monitor.stopping is True  # type: ignore[attr-defined]  # the plan ran first


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_the_parent_process_logs_through_the_demo_handler(redis_url: str) -> None:
    """The supervisor's own records (workers started, died, restarted) are written like
    every other line - here as JSON - not lost or printed raw."""
    with running_demo("--workers", "2", "--redis", redis_url, "--log-level", "info",
                      "--log-format", "json") as demo:
        ping = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/echo", "data": {}}
        assert _post(demo.url + RPC, ping).status_code == 200
        assert len(_workers(demo.proc.pid)) == 2
        assert demo.stop(signal.SIGTERM) == 0
    records = []
    for line in demo.output.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    messages = [r.get("message", "") for r in records if isinstance(r, dict)]
    assert any(m.startswith("Started parent process") for m in messages), demo.output
    assert any(m.startswith("Stopping parent process") for m in messages), demo.output
    assert "\x1b[" not in demo.output and "\\u001b" not in demo.output  # no colour codes
