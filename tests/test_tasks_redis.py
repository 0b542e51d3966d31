"""Redis task store against a real redis-server: restart recovery (graceful and
after a worker process is SIGKILLed), health of the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from tests.fixtures_redis import RedisServer
from tests.test_tasks_support import HS, build_app, client_for, lifespan, submit, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys, anyio
    from aduib_asgi.dispatcher import MethodRegistry
    from aduib_asgi.models import TaskSubmitRequest
    from aduib_asgi.tasks import TaskManager

    async def main(url):
        reg = MethodRegistry()
        async def block(data):
            print("RUNNING", flush=True)
            await anyio.sleep(3600)
        async def order(data):
            return {"tag": data["tag"]}
        reg.register("rpc.v2/T/block", block)
        reg.register("rpc.v2/T/order", order)
        m = TaskManager(reg, url, workers=1, lease_ttl=1.0)
        async with m.running():
            a = await m.submit(TaskSubmitRequest(target_method="rpc.v2/T/block"), None)
            b = await m.submit(TaskSubmitRequest(target_method="rpc.v2/T/order",
                                                 params={"tag": "queued"}), None)
            print("TASKS", a.task_id, b.task_id, flush=True)
            await anyio.sleep(3600)

    anyio.run(main, sys.argv[1])
""")


async def test_tasks_of_a_killed_worker_run_again_on_a_new_manager(redis_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, redis_url], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        with anyio.fail_after(30):
            while not (any(x.startswith("TASKS") for x in lines) and "RUNNING\n" in lines):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
                assert line, f"worker exited early: {lines}"
                lines.append(line)
        running_id, queued_id = next(x for x in lines if x.startswith("TASKS")).split()[1:]
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: nothing handed back
        proc.wait(timeout=10)

    app, _, h = build_app(redis_url, lease_ttl=0.6)
    h.gate.set()
    async with lifespan(app), client_for(app) as c:
        running = await wait_terminal(c, running_id, timeout=20)
        queued = await wait_terminal(c, queued_id, timeout=20)
    assert running["status"] == "succeeded" and running["result"] == {"released": True}
    assert running["attempt"] == 1
    assert queued["status"] == "succeeded" and queued["result"] == {"tag": "queued"}


async def test_graceful_restart_on_the_same_redis_reruns_the_running_task(redis_url: str) -> None:
    app, _, h = build_app(redis_url)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {"tag": "first"})
        await h.started.wait()
    assert h.cleaned == ["first"]
    app2, _, h2 = build_app(redis_url)  # a new manager, a new client, the same Redis
    h2.gate.set()
    async with lifespan(app2), client_for(app2) as c:
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"


async def test_health_reports_the_redis_store(own_redis: RedisServer) -> None:
    app, _, _ = build_app(own_redis.url)
    async with lifespan(app), client_for(app) as c:
        r = await c.post(HS + "Check", json={})
        assert r.json() == {"status": "healthy", "services": {"tasks": "healthy"}}
        own_redis.kill()
        r = await c.post(HS + "Check", json={})
        assert r.status_code == 200
        assert r.json() == {"status": "degraded", "services": {"tasks": "unhealthy"}}
        r = await c.post(HS + "Check", json={"service": "tasks"})
        assert r.json() == {"status": "unhealthy", "services": {"tasks": "unhealthy"}}
        own_redis.start()
        r = await c.post(HS + "Check", json={})
        assert r.json()["status"] == "healthy"


async def test_demo_with_redis_url_keeps_tasks_in_redis(redis_url: str) -> None:
    from redis.asyncio import Redis

    from aduib_asgi.demo import DemoConfig, build_demo_app

    app = build_demo_app(DemoConfig(env="prod", redis_url=redis_url))
    async with lifespan(app), client_for(app) as c:
        r = await c.post("/aduib_rpc/v2/TaskService/Submit",
                         json={"target_method": "rpc.v2/Echo/echo", "params": {"a": 1},
                               "priority": [1]})
        assert r.status_code == 200, r.text
        tid = r.json()["task_id"]
        task = await wait_terminal(c, tid)
        health = (await c.post(HS + "Check", json={})).json()
    assert task["result"] == {"a": 1}
    assert health["services"]["tasks"] == "healthy"
    client = Redis.from_url(redis_url)
    try:
        assert await client.exists(f"{{aduib:tasks}}:task:{tid}") == 1  # hash-tagged
    finally:
        await client.aclose()
