"""AdmissionMiddleware: bulkheads, priority-ordered queues, shedding, draining."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.middleware import AdmissionMiddleware, DeadlineMiddleware
from aduib_asgi.qos import ShutdownController
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for, envelope
from tests.qos_helpers import rpc_stack, wait_until

pytestmark = pytest.mark.anyio

LOW, NORMAL, HIGH, CRITICAL = 0, 1, 2, 3


class Gate:
    """A handler that records the order it ran in and blocks the 'hold' call."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.release = anyio.Event()
        self.holding = anyio.Event()

    async def work(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("tag") == "hold":
            self.holding.set()
            await self.release.wait()
        self.order.append(data["tag"])
        return {"done": data["tag"]}


def _setup(**admission: Any) -> tuple[Any, Gate, AdmissionMiddleware]:
    gate = Gate()
    registry = MethodRegistry()
    registry.register("rpc.v2/Slow/work", gate.work, idempotent=True, concurrency=1)
    admission.setdefault("registry", registry)
    app, _ = rpc_stack(registry, Layer.of(DeadlineMiddleware),
                       Layer.of(AdmissionMiddleware, **admission))
    layer = app
    while not isinstance(layer, AdmissionMiddleware):
        layer = layer.app
    return app, gate, layer


def _call(tag: str, priority: int = NORMAL, **qos: Any) -> dict[str, Any]:
    return envelope("rpc.v2/Slow/work", {"tag": tag}, qos={"priority": priority, **qos})


def _queued(layer: AdmissionMiddleware) -> int:
    return sum(b.queued for b in layer._bulkheads())


async def test_priority_order_critical_first_fifo_within_priority() -> None:
    app, gate, layer = _setup()
    results: dict[str, httpx.Response] = {}
    async with client_for(app) as client:

        async def call(tag: str, priority: int) -> None:
            results[tag] = await client.post(RPC, json=_call(tag, priority))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hold", NORMAL)
            await gate.holding.wait()
            # LOW is queued first, CRITICAL last; wait for each to be queued.
            for n, (tag, prio) in enumerate([("low-1", LOW), ("normal", NORMAL),
                                             ("low-2", LOW), ("critical", CRITICAL)], 1):
                tg.start_soon(call, tag, prio)
                await wait_until(lambda n=n: _queued(layer) == n)
            gate.release.set()
    assert gate.order == ["hold", "critical", "normal", "low-1", "low-2"]
    assert all(r.status_code == 200 for r in results.values())


async def test_full_queue_sheds_lowest_priority_first() -> None:
    app, gate, layer = _setup(max_queue=2)
    results: dict[str, httpx.Response] = {}
    async with client_for(app) as client:

        async def call(tag: str, priority: int) -> None:
            results[tag] = await client.post(RPC, json=_call(tag, priority))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hold", NORMAL)
            await gate.holding.wait()
            tg.start_soon(call, "low", LOW)
            await wait_until(lambda: _queued(layer) == 1)
            tg.start_soon(call, "normal", NORMAL)
            await wait_until(lambda: _queued(layer) == 2)
            # Queue full: a HIGH arrival displaces the LOW waiter.
            tg.start_soon(call, "high", HIGH)
            await wait_until(lambda: "low" in results)
            # Another LOW arrival: nothing ranks below it, so it is shed itself.
            await call("low-late", LOW)
            gate.release.set()
    for tag in ("low", "low-late"):
        r = results[tag]
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        body = r.json()
        assert body["error"]["code"] == 5021 and body["status"] == "error"
        assert body["error"]["details"][0]["reason"] == "shed"
    assert gate.order == ["hold", "high", "normal"]


async def test_queue_time_counts_against_the_deadline() -> None:
    app, gate, layer = _setup()
    async with client_for(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(lambda: client.post(RPC, json=_call("hold")))
        await gate.holding.wait()
        t0 = time.monotonic()
        r = await client.post(RPC, json=_call("queued", timeout_ms=150))
        elapsed = time.monotonic() - t0
        assert r.status_code == 504
        assert r.json()["error"]["code"] == 5003
        assert elapsed < 2.0
        assert _queued(layer) == 0  # the waiter left the queue
        gate.release.set()
    assert "queued" not in gate.order


async def test_queue_wait_timeout_is_5021() -> None:
    app, gate, _ = _setup(queue_timeout_s=0.05, retry_after_s=3)
    async with client_for(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(lambda: client.post(RPC, json=_call("hold")))
        await gate.holding.wait()
        r = await client.post(RPC, json=_call("waits"))
        gate.release.set()
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] == 5021
    assert r.json()["error"]["details"][0]["reason"] == "timeout"


async def test_alone_global_limit_and_priority_header_on_a_plain_app() -> None:
    release = anyio.Event()
    order: list[str] = []

    async def endpoint(request: Request) -> JSONResponse:
        tag = request.query_params["tag"]
        if tag == "hold":
            await release.wait()
        order.append(tag)
        return JSONResponse({"tag": tag})

    layer = AdmissionMiddleware(Starlette(routes=[Route("/w", endpoint)]), max_concurrency=1)
    async with client_for(layer) as client:
        bad = await client.get("/w?tag=x", headers={"X-Priority": "urgent"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == 2003
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/w?tag=hold")
            await wait_until(lambda: layer._global is not None and layer._global.in_flight == 1)
            tg.start_soon(lambda: client.get("/w?tag=low", headers={"X-Priority": "low"}))
            await wait_until(lambda: _queued(layer) == 1)
            tg.start_soon(lambda: client.get("/w?tag=crit", headers={"X-Priority": "critical"}))
            await wait_until(lambda: _queued(layer) == 2)
            release.set()
    assert order == ["hold", "crit", "low"]


async def test_path_limit_on_a_plain_app() -> None:
    release = anyio.Event()

    async def endpoint(request: Request) -> JSONResponse:
        await release.wait()
        return JSONResponse({})

    async def other(request: Request) -> JSONResponse:
        return JSONResponse({"other": True})

    layer = AdmissionMiddleware(Starlette(routes=[Route("/w", endpoint), Route("/o", other)]),
                                limits={"/w": 1}, max_queue=0)
    async with client_for(layer) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/w")
        await wait_until(lambda: layer._static["/w"].in_flight == 1)
        r = await client.get("/w")
        assert r.status_code == 429 and r.json()["error"]["code"] == 5021
        assert (await client.get("/o")).json() == {"other": True}  # other paths unaffected
        release.set()


async def test_draining_rejects_new_and_queued_lets_in_flight_finish() -> None:
    shutdown = ShutdownController(grace_s=5)
    app, gate, layer = _setup(shutdown=shutdown)
    results: dict[str, httpx.Response] = {}
    async with client_for(app) as client:

        async def call(tag: str) -> None:
            results[tag] = await client.post(RPC, json=_call(tag))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hold")
            await gate.holding.wait()
            tg.start_soon(call, "queued")
            await wait_until(lambda: _queued(layer) == 1)
            drained = anyio.Event()

            async def drain() -> None:
                assert await shutdown.drain() is True
                drained.set()

            tg.start_soon(drain)
            await wait_until(lambda: "queued" in results)
            await call("new")
            assert not drained.is_set()  # still waiting for the in-flight one
            gate.release.set()
            await drained.wait()
    for tag in ("queued", "new"):
        r = results[tag]
        assert r.status_code == 503
        assert r.json()["error"]["code"] == 5002
        assert r.headers["connection"] == "close"
    assert results["hold"].status_code == 200
    assert gate.order == ["hold"]


async def test_grace_period_over_aborts_in_flight() -> None:
    shutdown = ShutdownController(grace_s=0.05)
    app, gate, _ = _setup(shutdown=shutdown)
    async with client_for(app) as client, anyio.create_task_group() as tg:
        box: dict[str, httpx.Response] = {}

        async def call() -> None:
            box["r"] = await client.post(RPC, json=_call("hold"))

        tg.start_soon(call)
        await gate.holding.wait()
        assert await shutdown.drain() is False
        await wait_until(lambda: "r" in box)
    assert box["r"].status_code == 503
    assert box["r"].json()["error"]["code"] == 5002


async def test_grace_over_ends_a_stream_in_band() -> None:
    shutdown = ShutdownController(grace_s=0.05)
    aborted: list[int] = []

    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        async def abort(exc: Any) -> bool:
            aborted.append(exc.code)
            await send({"type": "http.response.body", "body": b"event: end\n\n",
                        "more_body": False})
            return True

        scope["aduib.stream_abort"] = abort
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event: data\n\n", "more_body": True})
        await anyio.sleep(10)

    app = AdmissionMiddleware(streaming_app, shutdown=shutdown)
    async with client_for(app) as client, anyio.create_task_group() as tg:
        box: dict[str, httpx.Response] = {}

        async def call() -> None:
            box["r"] = await client.get("/s")

        tg.start_soon(call)
        await wait_until(lambda: shutdown.in_flight == 1)
        await shutdown.drain()
        await wait_until(lambda: "r" in box)
    assert box["r"].text == "event: data\n\nevent: end\n\n"
    assert aborted == [5002]


async def test_lifespan_shutdown_starts_draining() -> None:
    sent: list[Message] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(m: Message) -> None:
        sent.append(m)

    layer = AdmissionMiddleware(app)
    await layer({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert layer.shutdown.draining
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


async def test_not_limited_requests_pass_through() -> None:
    registry = MethodRegistry()

    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return data

    registry.register("rpc.v2/E/echo", echo)
    app, _ = rpc_stack(registry, Layer.of(AdmissionMiddleware, registry=registry))
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/E/echo", {"a": 1}))
    assert r.status_code == 200 and r.json()["result"] == {"a": 1}


async def test_tenant_limit_isolates_tenants() -> None:
    release = anyio.Event()

    async def endpoint(request: Request) -> JSONResponse:
        if request.query_params.get("hold"):
            await release.wait()
        return JSONResponse({})

    async def tenant_app(scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette(routes=[Route("/w", endpoint)])(scope, receive, send)

    layer = AdmissionMiddleware(tenant_app, tenant_limit=1, max_queue=0)

    async def with_tenant(scope: Scope, receive: Receive, send: Send) -> None:
        from aduib_asgi.context import run_with_context

        async def h(scope: Scope, receive: Receive, send: Send, ctx: Any) -> None:
            ctx.tenant_id = ctx.header(b"x-tenant-id").decode()
            await layer(scope, receive, send)

        await run_with_context(h, scope, receive, send)

    async with client_for(with_tenant) as client, anyio.create_task_group() as tg:
        tg.start_soon(lambda: client.get("/w?hold=1", headers={"X-Tenant-ID": "a"}))
        await wait_until(lambda: "a" in layer._tenants and layer._tenants["a"].in_flight == 1)
        assert (await client.get("/w", headers={"X-Tenant-ID": "a"})).status_code == 429
        assert (await client.get("/w", headers={"X-Tenant-ID": "b"})).status_code == 200
        release.set()


async def test_without_a_controller_in_flight_requests_are_counted_never_cancelled() -> None:
    app, gate, layer = _setup()  # no ShutdownController given: nothing cancels after grace
    assert layer.shutdown.cancel_after_grace is False
    async with client_for(app) as client, anyio.create_task_group() as tg:
        box: dict[str, httpx.Response] = {}

        async def call() -> None:
            box["r"] = await client.post(RPC, json=_call("hold"))

        tg.start_soon(call)
        await gate.holding.wait()
        assert layer.shutdown.in_flight == 1
        # drain() waits for the grace period, then reports what is still running.
        assert await layer.shutdown.drain(grace_s=0.05) is False
        rejected = await client.post(RPC, json=_call("new"))
        gate.release.set()
        await wait_until(lambda: "r" in box)
    assert box["r"].status_code == 200  # not cancelled
    assert rejected.status_code == 503 and rejected.json()["error"]["code"] == 5002
    assert layer.shutdown.in_flight == 0


async def test_a_path_limit_holds_for_a_method_first_seen_on_another_path() -> None:
    """Plans are per method and path: a limit on /v1/rpc is not skipped after a /v2 call."""
    gate = Gate()
    registry = MethodRegistry()
    registry.register("rpc.v2/Slow/work", gate.work)
    app, _ = rpc_stack(registry, Layer.of(AdmissionMiddleware, registry=registry, max_queue=0,
                                          limits={"/aduib_rpc/v1/rpc": 1}))
    v1 = {"aduib_rpc": "1.0", "id": 1, "method": "rpc.v1/Slow/work", "data": {"tag": "hold"}}
    async with client_for(app) as c:
        warm = await c.post(RPC, json=envelope("rpc.v2/Slow/work", {"tag": "warm"}))
        assert warm.status_code == 200
        results: list[int] = []

        async def call() -> None:
            results.append((await c.post("/aduib_rpc/v1/rpc", json=v1)).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await gate.holding.wait()
            tg.start_soon(call)
            tg.start_soon(call)
            await wait_until(lambda: len(results) == 2)
            gate.release.set()
    assert sorted(results) == [200, 429, 429]
