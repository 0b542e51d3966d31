"""DeadlineMiddleware: hard deadlines, 504/5003 in time, cancellation and cleanup."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aduib_asgi.context import RequestContext, get_context
from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import DeadlineMiddleware
from aduib_asgi.middleware.deadline import DEADLINE_SCOPE_KEY, DeadlineScope
from aduib_asgi.qos import timeout_headers
from aduib_asgi.qos.task_scope import TaskCancelScope
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for, envelope
from tests.qos_helpers import rpc_stack

pytestmark = pytest.mark.anyio


def _qos(timeout_ms: int | None = None, **extra: Any) -> dict[str, Any]:
    q: dict[str, Any] = dict(extra)
    if timeout_ms is not None:
        q["timeout_ms"] = timeout_ms
    return q


def assert_timeout_envelope(r: httpx.Response) -> None:
    assert r.status_code == 504
    body = r.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == 5003
    assert body["error"]["name"] == "TIMEOUT"
    assert "id" in body and "metadata" in body


async def test_slow_async_handler_answers_504_in_time_and_is_cancelled() -> None:
    registry = MethodRegistry()
    cleaned = anyio.Event()
    started = anyio.Event()

    async def slow(data: dict[str, Any]) -> dict[str, Any]:
        started.set()
        try:
            await anyio.sleep(2)
        finally:
            cleaned.set()
        return {"late": True}

    registry.register("rpc.v2/T/slow", slow)
    app, _ = rpc_stack(registry, Layer.of(DeadlineMiddleware))
    async with client_for(app) as client:
        t0 = time.monotonic()
        r = await client.post(RPC, json=envelope("rpc.v2/T/slow", {}, qos=_qos(200)))
        elapsed = time.monotonic() - t0
    assert_timeout_envelope(r)
    assert started.is_set()
    assert cleaned.is_set(), "the handler's cleanup (finally) must have run"
    # A 2 s handler with a 200 ms deadline answers within 300 ms (bound kept generous).
    assert elapsed < 0.6, elapsed


async def test_sync_handler_is_abandoned_on_deadline() -> None:
    registry = MethodRegistry()
    release = threading.Event()
    finished = threading.Event()

    def blocking(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        release.wait(10)
        finished.set()
        return {"late": True}

    registry.register("rpc.v2/T/blocking", blocking)
    app, _ = rpc_stack(registry, Layer.of(DeadlineMiddleware))
    try:
        async with client_for(app) as client:
            t0 = time.monotonic()
            r = await client.post(RPC, json=envelope("rpc.v2/T/blocking", {}, qos=_qos(200)))
            elapsed = time.monotonic() - t0
        assert_timeout_envelope(r)
        assert elapsed < 0.6, elapsed
        assert not finished.is_set()  # the thread is still running: abandoned, not joined
    finally:
        release.set()
    assert await anyio.to_thread.run_sync(finished.wait, 5)


def _context_registry() -> MethodRegistry:
    registry = MethodRegistry()

    async def budget(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def child() -> None:  # a task started by the handler sees the budget too
            c = get_context()
            seen["child_ms"] = c.remaining_ms() if c is not None else None
            seen["headers"] = timeout_headers()

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        return {"remaining_ms": ctx.remaining_ms(), **seen}

    registry.register("rpc.v2/T/budget", budget)
    return registry


@pytest.mark.parametrize(
    ("qos", "meta", "header", "low", "high"),
    [
        (5000, None, "1000", 500, 1000),      # header smaller: header applies
        (1000, None, "5000", 500, 1000),      # envelope smaller: envelope applies
        (None, 1000, None, 500, 1000),        # meta.timeout_ms of 2.0.1 clients
        (60000, 1000, None, 500, 1000),       # the smaller of qos and meta
        (10_000_000, None, None, 1500, 2000),  # capped by the server maximum
    ],
)
async def test_budget_precedence_and_cap(
    qos: int | None, meta: int | None, header: str | None, low: float, high: float
) -> None:
    app, _ = rpc_stack(_context_registry(), Layer.of(DeadlineMiddleware, max_timeout_ms=2000))
    extra: dict[str, Any] = {"qos": _qos(qos)}
    if meta is not None:
        extra["meta"] = {"timeout_ms": meta}
    headers = {"X-Timeout-Ms": header} if header else {}
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/T/budget", {}, **extra), headers=headers)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert low < result["remaining_ms"] <= high
    assert low < result["child_ms"] <= high
    assert low < int(result["headers"]["X-Timeout-Ms"]) <= high


async def test_default_and_per_method_budget() -> None:
    app, _ = rpc_stack(_context_registry(), Layer.of(
        DeadlineMiddleware, default_timeout_ms=3000, method_timeouts={"T": 1000}))
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/T/budget", {}))
    assert 500 < r.json()["result"]["remaining_ms"] <= 1000

    app, _ = rpc_stack(_context_registry(), Layer.of(DeadlineMiddleware, max_timeout_ms=None))
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/T/budget", {}))
    assert r.json()["result"]["remaining_ms"] is None
    assert r.json()["result"]["headers"] == {}


@pytest.mark.parametrize("value", ["abc", "-5", "nan", "inf"])
async def test_bad_timeout_header_is_2003(value: str) -> None:
    app, _ = rpc_stack(_context_registry(), Layer.of(DeadlineMiddleware))
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/T/budget", {}, id="bad-1"),
                              headers={"X-Timeout-Ms": value})
    assert r.status_code == 400
    body = r.json()
    assert body["id"] == "bad-1"
    assert body["error"]["code"] == 2003
    assert body["error"]["details"][0]["field"] == "X-Timeout-Ms"


async def test_alone_around_a_plain_starlette_app() -> None:
    cleaned = anyio.Event()

    async def slow(request: Request) -> JSONResponse:
        try:
            await anyio.sleep(2)
        finally:
            cleaned.set()
        return JSONResponse({"late": True})

    async def fast(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = DeadlineMiddleware(Starlette(routes=[Route("/slow", slow), Route("/fast", fast)]))
    async with client_for(app) as client:
        r = await client.get("/slow", headers={"X-Timeout-Ms": "100"})
        assert_timeout_envelope(r)
        assert cleaned.is_set()
        ok = await client.get("/fast", headers={"X-Timeout-Ms": "1000"})
        assert ok.status_code == 200 and ok.json() == {"ok": True}
        assert (await client.get("/fast")).json() == {"ok": True}


async def test_stream_hitting_deadline_ends_in_band() -> None:
    """After the response started, the deadline ends the stream via the stream-abort hook."""
    seen: list[RpcError] = []

    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        async def abort(exc: BaseException) -> bool:
            assert isinstance(exc, RpcError)
            seen.append(exc)
            await send({"type": "http.response.body",
                        "body": b"event: error\ndata: 5003\n\nevent: end\ndata: {}\n\n",
                        "more_body": False})
            return True

        scope["aduib.stream_abort"] = abort
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"event: data\ndata: 1\n\n",
                    "more_body": True})
        await anyio.sleep(5)

    app = DeadlineMiddleware(streaming_app)
    async with client_for(app) as client:
        r = await client.get("/s", headers={"X-Timeout-Ms": "150"})
    assert r.status_code == 200
    assert r.text.endswith("event: end\ndata: {}\n\n")
    assert [e.code for e in seen] == [5003]


async def test_plain_stream_is_ended_on_deadline() -> None:
    async def chunks() -> Any:
        yield b"one\n"
        await anyio.sleep(5)
        yield b"never\n"

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = DeadlineMiddleware(Starlette(routes=[Route("/s", endpoint)]))
    async with client_for(app) as client:
        with anyio.fail_after(3):
            r = await client.get("/s", headers={"X-Timeout-Ms": "150"})
    assert r.text == "one\n"


async def test_scope_is_published_for_streaming_layers() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = scope["aduib.context"]
        seen["scope"] = ctx.extras.get(DEADLINE_SCOPE_KEY)
        seen["deadline"] = ctx.deadline
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with client_for(DeadlineMiddleware(app)) as client:
        r = await client.get("/", headers={"X-Timeout-Ms": "1000"})
    assert r.status_code == 204
    dscope = seen["scope"]
    assert isinstance(dscope, DeadlineScope)
    # on asyncio the shared timer cancels the task natively (TaskCancelScope)
    assert isinstance(dscope.cancel_scope, anyio.CancelScope | TaskCancelScope)
    assert math.isfinite(dscope.deadline)  # on anyio's clock
    assert dscope.deadline <= anyio.current_time() + 1.0
    assert seen["deadline"] is not None


@pytest.mark.parametrize("where", ["qos", "meta"])
async def test_an_absurdly_large_timeout_is_capped_not_a_500(where: str) -> None:
    from aduib_asgi.dispatcher import MethodRegistry
    from aduib_asgi.middleware.deadline import DeadlineMiddleware
    from aduib_asgi.stack import Layer
    from tests.conftest import RPC, client_for, envelope
    from tests.qos_helpers import rpc_stack

    registry = MethodRegistry()

    async def ok(data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    registry.register("rpc.v2/T/ok", ok)
    app, _ = rpc_stack(registry, Layer.of(DeadlineMiddleware, max_timeout_ms=1000))
    huge = 10 ** 400
    extra = {"qos": {"timeout_ms": huge}} if where == "qos" else {"meta": {"timeout_ms": huge}}
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/T/ok", {}, **extra))
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["code"] in (1002, 2003)


async def test_code_that_swallows_the_deadline_cannot_answer_late() -> None:
    """Past the deadline nothing more goes out (as under an anyio scope, whose every
    await raises once cancelled): a handler that catches the cancellation and then
    answers still leaves the client with 504 / 5003, and the task is not left cancelled."""
    late: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await anyio.sleep(5)
        except BaseException:  # a handler that swallows cancellation
            late.append("swallowed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        late.append("never sent")

    async with client_for(DeadlineMiddleware(app)) as client:
        with anyio.fail_after(3):
            r = await client.get("/", headers={"X-Timeout-Ms": "100"})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == 5003
        assert late == ["swallowed"]
        await anyio.sleep(0)  # the request's cancellation was taken back: this task runs on


async def test_shielded_work_inside_a_handler_finishes_before_the_deadline_cuts_in() -> None:
    done: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope(shield=True):  # e.g. a commit that must not be torn
            await anyio.sleep(0.3)
            done.append("committed")
        await anyio.sleep(5)
        done.append("never")

    async with client_for(DeadlineMiddleware(app)) as client:
        with anyio.fail_after(3):
            r = await client.get("/", headers={"X-Timeout-Ms": "100"})
    assert r.status_code == 504
    assert done == ["committed"]
