"""Liveness/readiness probes (OPERATIONS.md section 1) and GET on HealthService."""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.health import HealthRegistry, ProbeMiddleware, ReadinessMonitor
from aduib_asgi.qos import ShutdownController
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

HEALTHZ = "/aduib_rpc/healthz"
READYZ = "/aduib_rpc/readyz"


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a probe reached the app")


def _probes(registry: HealthRegistry, **kw: Any) -> tuple[ProbeMiddleware, ReadinessMonitor]:
    monitor = ReadinessMonitor(registry, **kw)
    return ProbeMiddleware(_never_called, monitor=monitor), monitor


async def test_readyz_follows_the_last_check_result() -> None:
    state = {"db": "healthy"}
    registry = HealthRegistry()
    registry.add("db", lambda: state["db"], critical=True, in_thread=False)
    registry.add("cache", lambda: True, in_thread=False)
    app, monitor = _probes(registry)
    async with client_for(app) as c:
        before = await c.get(READYZ)
        assert (before.status_code, before.json()) == (503, {"status": "unknown"})
        await monitor.check_once()
        ok = await c.get(READYZ)
        assert ok.status_code == 200
        assert ok.json() == {"status": "healthy", "services": {"cache": "healthy",
                                                               "db": "healthy"}}
        state["db"] = "degraded"
        await monitor.check_once()
        assert (await c.get(READYZ)).status_code == 200  # degraded still takes traffic
        state["db"] = "unhealthy"
        await monitor.check_once()
        bad = await c.get(READYZ)
        assert bad.status_code == 503 and bad.json()["status"] == "unhealthy"
        state["db"] = "healthy"
        await monitor.check_once()
        assert (await c.get(READYZ)).status_code == 200
        monitor.stop_ready()
        draining = await c.get(READYZ)
        assert draining.status_code == 503 and draining.json()["shutting_down"] is True
        assert (await c.get(HEALTHZ)).status_code == 200


async def test_readyz_is_503_once_the_shutdown_controller_drains() -> None:
    registry = HealthRegistry()
    shutdown = ShutdownController()
    app, monitor = _probes(registry, shutdown=shutdown)
    await monitor.check_once()
    async with client_for(app) as c:
        assert (await c.get(READYZ)).status_code == 200
        shutdown.start_draining()
        assert (await c.get(READYZ)).status_code == 503


async def test_healthz_runs_no_check_and_never_waits() -> None:
    registry = HealthRegistry()
    calls = []

    async def hanging() -> None:
        calls.append(1)
        await anyio.sleep(60)

    registry.add("redis", hanging, critical=True)
    app, _ = _probes(registry)
    async with client_for(app) as c:
        with anyio.fail_after(5):
            r = await c.get(HEALTHZ)
            ready = await c.get(READYZ)  # readyz reads the last result: it never waits either
    assert (r.status_code, r.json()) == (200, {"status": "healthy"})
    assert r.headers["cache-control"] == "no-store"
    assert ready.status_code == 503 and calls == []


async def test_probe_methods() -> None:
    app, monitor = _probes(HealthRegistry())
    await monitor.check_once()
    async with client_for(app) as c:
        head = await c.head(READYZ)
        assert head.status_code == 200 and head.content == b""
        post = await c.post(HEALTHZ)
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_the_monitor_runs_in_the_lifespan() -> None:
    registry = HealthRegistry()
    monitor = ReadinessMonitor(registry, interval=0.05)
    async with monitor.running():
        with anyio.fail_after(5):
            while monitor.last is None:
                await anyio.sleep(0.01)
    assert monitor.last.status.value == "healthy"


async def test_demo_probes_bypass_auth_limits_and_admission() -> None:
    shutdown = ShutdownController()
    app = build_demo_app(DemoConfig(config_sources=[_require_auth()], shutdown=shutdown))
    await app.monitor.check_once()
    async with client_for(app) as c:
        assert (await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}))).status_code == 401
        for _ in range(10):  # far beyond any quota
            assert (await c.get(HEALTHZ)).status_code == 200
            assert (await c.get(READYZ)).status_code == 200
        shutdown.start_draining()
        refused = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}),
                               headers={"Authorization": "Bearer demo-user-token"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, 5002)
        assert (await c.get(HEALTHZ)).status_code == 200
        assert (await c.get(READYZ)).status_code == 503


def _require_auth() -> Any:
    from aduib_asgi.config import MemorySource

    return MemorySource({"auth": {"require_auth": True,
                                  "anonymous_methods": ["/aduib_rpc/metrics"]}})


def _requests_total(text: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(
        r"^rpc_server_requests\S*\{[^}]*\} (\S+)$", text, flags=re.M))


async def test_probes_are_not_counted_as_rpc_calls() -> None:
    app = build_demo_app(DemoConfig(config_sources=[_require_auth()]))
    async with client_for(app) as c:
        await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}),
                     headers={"Authorization": "Bearer demo-user-token"})
        a = _requests_total((await c.get("/aduib_rpc/metrics")).text)
        for _ in range(5):
            await c.get(HEALTHZ)
            await c.get(READYZ)
        b = _requests_total((await c.get("/aduib_rpc/metrics")).text)
        c_ = _requests_total((await c.get("/aduib_rpc/metrics")).text)
    assert a > 0
    assert b - a == c_ - b  # only the /metrics scrape itself was counted in between
    assert "healthz" not in (await _metrics_text(app)) and "readyz" not in (
        await _metrics_text(app))


async def _metrics_text(app: Any) -> str:
    async with client_for(app) as c:
        return (await c.get("/aduib_rpc/metrics")).text


async def test_check_and_watch_answer_get(prod_client: Any) -> None:
    base = "/aduib_rpc/v2/HealthService/"
    r = await prod_client.get(base + "Check")
    assert r.status_code == 200 and r.json()["status"] == "healthy"
    one = await prod_client.get(base + "Check", params={"service": "Echo"})
    assert one.json() == {"status": "healthy", "services": {"Echo": "healthy"}}
    missing = await prod_client.get(base + "Check", params={"service": "Nope"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, 4002)
    await _first_watch_event_over_get()


async def _first_watch_event_over_get() -> None:
    """GET Watch over raw ASGI (httpx's ASGI transport waits for the whole body)."""
    app = build_demo_app(DemoConfig())
    gone = anyio.Event()
    first: list[bytes] = []
    started: list[int] = []

    async def receive() -> dict[str, Any]:
        if not first and not started:
            started.append(0)
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])
        elif message["type"] == "http.response.body" and b"data:" in message.get("body", b""):
            first.append(message["body"])
            gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/aduib_rpc/v2/HealthService/Watch",
             "raw_path": b"/aduib_rpc/v2/HealthService/Watch", "query_string": b"",
             "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}
    with anyio.fail_after(10):
        await app(scope, receive, send)
    assert 200 in started
    line = next(x for x in first[0].decode().splitlines() if x.startswith("data:"))
    payload = json.loads(line[5:])
    assert "healthy" in json.dumps(payload)
