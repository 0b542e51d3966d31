"""Cancellation: client disconnect, POST /v2/rpc/cancel (streams and unary calls), no leaks."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from tests.conftest import RPC, client_for, envelope
from tests.stream_harness import CANCEL, STREAM, http_stream

pytestmark = pytest.mark.anyio


class Probe:
    """Events a handler signals, so tests wait on events rather than sleeps."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cleaned = anyio.Event()
        self.cleaned_at: float | None = None
        self.saw_cancelled: bool | None = None
        self.thread_cleaned = threading.Event()


class TenantStub:
    """Stand-in for the tenant/auth layers: tenant and principal from headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def handle(scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
            t = ctx.header(b"x-tenant")
            p = ctx.header(b"x-principal")
            ctx.tenant_id = t.decode() if t else None
            ctx.principal = p.decode() if p else None
            await self.app(scope, receive, send)

        await run_with_context(handle, scope, receive, send)


def make_app(probe: Probe) -> tuple[ASGIApp, RpcDispatcher]:
    reg = MethodRegistry()

    async def forever(data: dict[str, Any], ctx: RequestContext) -> AsyncIterator[int]:
        try:
            yield 0
            probe.started.set()
            await anyio.sleep(math.inf)
            yield 1  # pragma: no cover
        finally:
            probe.saw_cancelled = ctx.cancelled
            probe.cleaned_at = time.monotonic()
            probe.cleaned.set()

    def sync_forever(data: dict[str, Any], ctx: RequestContext) -> Iterator[int]:
        try:
            yield 0
            while not ctx.cancelled:  # a blocking handler polls the flag
                time.sleep(0.01)
            yield 1
        finally:
            probe.thread_cleaned.set()

    async def sleep(data: dict[str, Any]) -> dict[str, Any]:
        probe.started.set()
        try:
            await anyio.sleep(data["s"])
        finally:
            probe.cleaned.set()
        return {"slept": data["s"]}

    async def count(data: dict[str, Any]) -> AsyncIterator[int]:
        for i in range(data.get("n", 2)):
            yield i

    async def fail(data: dict[str, Any]) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("x")

    reg.register("rpc.v2/C/forever", forever)
    reg.register("rpc.v2/C/sync_forever", sync_forever)
    reg.register("rpc.v2/C/sleep", sleep)
    reg.register("rpc.v2/C/count", count)
    reg.register("rpc.v2/C/fail", fail)
    dispatcher = RpcDispatcher(reg)
    dispatcher.streaming.configure(heartbeat_interval=0)
    return ErrorMappingMiddleware(TenantStub(dispatcher)), dispatcher


async def test_disconnect_cancels_handler_and_runs_cleanup_within_one_second() -> None:
    probe = Probe()
    app, dispatcher = make_app(probe)
    with anyio.fail_after(10):
        async with http_stream(app, envelope("rpc.v2/C/forever", id="d1")) as s:
            assert await s.start() == 200
            assert (await s.frame() or {})["type"] == "data"
            await probe.started.wait()
            gone_at = time.monotonic()
            s.disconnect()
            await probe.cleaned.wait()
            assert probe.cleaned_at is not None and probe.cleaned_at - gone_at < 1.0
            assert probe.saw_cancelled is True
            assert await s.rest() == s.chunks[0]  # nothing sent after the disconnect
    assert len(dispatcher.streaming.inflight) == 0


async def test_disconnect_stops_a_sync_generator_polling_ctx_cancelled() -> None:
    probe = Probe()
    app, _ = make_app(probe)
    with anyio.fail_after(10):
        async with http_stream(app, envelope("rpc.v2/C/sync_forever")) as s:
            await s.start()
            await s.frame()
            s.disconnect()
            await anyio.to_thread.run_sync(probe.thread_cleaned.wait, 5)
    assert probe.thread_cleaned.is_set()


async def test_cancel_endpoint_ends_stream_with_cancel_then_end() -> None:
    probe = Probe()
    app, dispatcher = make_app(probe)
    with anyio.fail_after(10):
        async with http_stream(app, envelope("rpc.v2/C/forever", id="s-1"),
                               headers=[(b"x-tenant", b"t1")]) as s:
            await s.start()
            await s.frame()
            await probe.started.wait()
            assert "s-1" in dispatcher.streaming.inflight
            async with client_for(app) as c:
                r = await c.post(CANCEL, json={"id": "s-1", "reason": "user clicked stop"},
                                 headers={"x-tenant": "t1"})
            assert r.status_code == 200
            assert r.json()["status"] == "success"
            assert r.json()["result"] == {"id": "s-1", "canceled": True}
            cancel = await s.frame()
            end = await s.frame()
            assert await s.frame() is None
    assert probe.cleaned.is_set() and probe.saw_cancelled is True
    assert cancel is not None and cancel["type"] == "cancel"
    assert cancel["payload"]["control"]["reason"] == "user clicked stop"
    assert end is not None and end["type"] == "end"
    assert end["payload"]["control"] == {"final": True, "total_count": 1}
    assert [cancel["sequence"], end["sequence"]] == [2, 3]
    assert len(dispatcher.streaming.inflight) == 0


async def test_envelope_framing_cancel_just_closes_the_body() -> None:
    probe = Probe()
    app, _ = make_app(probe)
    with anyio.fail_after(10):
        async with http_stream(app, envelope("rpc.v2/C/forever", id="s-2"),
                               headers=[(b"aduib-stream-framing", b"envelope")]) as s:
            await s.start()
            await s.chunk()
            await probe.started.wait()
            async with client_for(app) as c:
                r = await c.post(CANCEL, json={"id": "s-2"})
            assert r.status_code == 200
            assert await s.chunk() is None


@pytest.mark.parametrize(
    ("headers", "who"),
    [({"x-tenant": "t2"}, "another tenant"), ({"x-principal": "mallory"}, "another principal")],
)
async def test_nobody_cancels_another_tenants_or_principals_call(
    headers: dict[str, str], who: str
) -> None:
    probe = Probe()
    app, _ = make_app(probe)
    with anyio.fail_after(10):
        async with http_stream(app, envelope("rpc.v2/C/forever", id="mine"),
                               headers=[(b"x-tenant", b"t1")]) as s:
            await s.start()
            await s.frame()
            async with client_for(app) as c:
                h = {"x-tenant": "t1", **headers}
                r = await c.post(CANCEL, json={"id": "mine"}, headers=h)
                assert r.status_code == 404, who
                assert r.json()["error"]["code"] == 4000
                assert not probe.cleaned.is_set()
                r = await c.post(CANCEL, json={"id": "mine"}, headers={"x-tenant": "t1"})
                assert r.status_code == 200
            assert (await s.frame() or {})["type"] == "cancel"


async def test_cancel_unknown_id_is_404_4000_and_bad_body_is_400() -> None:
    app, _ = make_app(Probe())
    async with client_for(app) as c:
        r = await c.post(CANCEL, json={"id": "nope"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == 4000 and r.json()["status"] == "error"
        r = await c.post(CANCEL, json={"reason": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == 2002
        r = await c.post(CANCEL, json={"id": 5})
        assert r.status_code == 400 and r.json()["error"]["code"] == 2003


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-task", "cancel-scope"])
async def test_cancel_a_running_unary_call(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:  # the path taken on event loops other than asyncio (trio)
        from aduib_asgi.streaming import endpoints

        monkeypatch.setattr(endpoints, "_asyncio_task", lambda: None)
    probe = Probe()
    app, dispatcher = make_app(probe)
    result: dict[str, Any] = {}

    async def call() -> None:
        async with client_for(app) as c:
            r = await c.post(RPC, json=envelope("rpc.v2/C/sleep", {"s": 30}, id="u-1"))
            result["status"] = r.status_code
            result["body"] = r.json()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await probe.started.wait()
            async with client_for(app) as c:
                r = await c.post(CANCEL, json={"id": "u-1", "reason": "changed my mind"})
            assert r.status_code == 200
    assert probe.cleaned.is_set()
    assert result["status"] == 409
    assert result["body"]["error"]["code"] == 4011
    assert "changed my mind" in result["body"]["error"]["message"]
    assert len(dispatcher.streaming.inflight) == 0


async def _asgi_call(app: ASGIApp, path: str, body: bytes) -> list[Message]:
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep(math.inf)
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [
        (b"content-type", b"application/json")], "query_string": b""}
    await app(scope, receive, send)
    return sent


async def test_ten_thousand_calls_leave_the_inflight_registry_empty() -> None:
    probe = Probe()
    app, dispatcher = make_app(probe)
    inflight = dispatcher.streaming.inflight
    unary = json.dumps(envelope("rpc.v2/C/sleep", {"s": 0})).encode()
    bodies = [
        (RPC, unary),
        (STREAM, json.dumps(envelope("rpc.v2/C/count", {"n": 2})).encode()),
        (STREAM, json.dumps(envelope("rpc.v2/C/fail")).encode()),
        (STREAM, json.dumps(envelope("rpc.v2/C/nope")).encode()),
    ]
    with anyio.fail_after(120):
        for i in range(10_000):
            path, body = bodies[i % len(bodies)]
            sent = await _asgi_call(app, path, body)
            assert sent[0]["status"] in (200, 404)
    assert len(inflight) == 0


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-task", "cancel-scope"])
async def test_a_unary_call_cancelled_while_its_response_is_sent_sends_no_second_response(
        native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once ``http.response.start`` went out, a cancel ends the call without a 4011
    (a second response start would break the connection); the canceller still gets 200."""
    if not native:
        from aduib_asgi.streaming import endpoints

        monkeypatch.setattr(endpoints, "_asyncio_task", lambda: None)
    reg = MethodRegistry()

    async def quick(data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    reg.register("rpc.v2/C/quick", quick)
    dispatcher = RpcDispatcher(reg)
    sent: list[Message] = []
    started = anyio.Event()
    body = json.dumps(envelope("rpc.v2/C/quick", {}, id="late-1")).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:  # a slow client: the start waits on the socket
        sent.append(message)
        if message["type"] == "http.response.start":
            started.set()
            await anyio.sleep(math.inf)

    scope = {"type": "http", "method": "POST", "path": RPC, "query_string": b"",
             "client": ("127.0.0.1", 123),  # httpx's ASGI transport's: the same caller
             "headers": [(b"content-type", b"application/json")]}
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher, scope, receive, send)
            await started.wait()
            assert "late-1" in dispatcher.streaming.inflight
            async with client_for(dispatcher) as c:
                r = await c.post(CANCEL, json={"id": "late-1"})
            assert r.status_code == 200 and r.json()["result"] == {"id": "late-1",
                                                                   "canceled": True}
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert sent[0]["status"] == 200
    assert len(dispatcher.streaming.inflight) == 0


async def test_unary_cancel_before_and_after_the_handler_on_one_registry() -> None:
    """A finished unary call is no longer cancellable (404), a running one is (200, then
    409 4011 for the call); the registry's per-tenant counts return to zero."""
    probe = Probe()
    app, dispatcher = make_app(probe)
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/C/sleep", {"s": 0}, id="done-1"),
                         headers={"x-tenant": "t1"})
        assert r.status_code == 200 and r.json()["result"] == {"slept": 0}
        r = await c.post(CANCEL, json={"id": "done-1"}, headers={"x-tenant": "t1"})
        assert r.status_code == 404 and r.json()["error"]["code"] == 4000
    inflight = dispatcher.streaming.inflight
    assert len(inflight) == 0 and not inflight._tenants and inflight._calls == {}
