"""Support (no tests) for the task and health tests: ASGI lifespan driver and a test dispatcher."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.health import install_health_service
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.tasks import TaskManager, install_task_service, report_progress
from tests.conftest import client_for

TS = "/aduib_rpc/v2/TaskService/"
HS = "/aduib_rpc/v2/HealthService/"
TERMINAL = {"succeeded", "failed", "canceled"}


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Drive the app's ASGI lifespan (startup before, shutdown after the block)."""
    to_app, app_in = anyio.create_memory_object_stream[dict[str, Any]](4)
    app_out, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                      app_in.receive, app_out.send)
        await to_app.send({"type": "lifespan.startup"})
        msg = await from_app.receive()
        assert msg["type"] == "lifespan.startup.complete", msg
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await to_app.send({"type": "lifespan.shutdown"})
                msg = await from_app.receive()
                assert msg["type"] == "lifespan.shutdown.complete", msg


class PrincipalLayer:
    """Test stand-in for the auth layer: ``X-Test-Principal`` -> ctx.principal/roles."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await run_with_context(self._handle, scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      ctx: RequestContext) -> None:
        p = ctx.header(b"x-test-principal")
        if p:
            ctx.principal = p.decode()
            ctx.roles = tuple(r for r in (ctx.header(b"x-test-roles") or b"").decode().split(",")
                              if r)
        await self.app(scope, receive, send)


class Handlers:
    """Test target methods; ``gate`` releases blocked tasks, lists record what ran."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.started = anyio.Event()
        self.order: list[str] = []
        self.cleaned: list[str] = []
        self.flaky_calls = 0

    def register(self, reg: MethodRegistry) -> None:
        h = self

        async def ok(data: dict[str, Any]) -> dict[str, Any]:
            return {"echo": data}

        async def flaky(data: dict[str, Any]) -> dict[str, Any]:
            h.flaky_calls += 1
            if h.flaky_calls <= data.get("fail_times", 0):
                raise RpcError(data.get("code", 5002), f"flaky #{h.flaky_calls}")
            return {"calls": h.flaky_calls}

        async def block(data: dict[str, Any]) -> dict[str, Any]:
            h.started.set()
            try:
                await h.gate.wait()
            finally:
                h.cleaned.append(data.get("tag", "block"))
            return {"released": True}

        async def order(data: dict[str, Any]) -> dict[str, Any]:
            h.order.append(data["tag"])
            return {"tag": data["tag"]}

        async def ctx(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
            rem = ctx.remaining_ms()
            return {"tenant_id": ctx.tenant_id, "principal": ctx.principal,
                    "roles": list(ctx.roles), "task_id": ctx.request_id,
                    "deadline_remaining_ms": None if rem is None else int(rem)}

        async def progress(data: dict[str, Any]) -> dict[str, Any]:
            await report_progress(1, 2, "half")
            await h.gate.wait()
            await report_progress(2, 2, "done")
            return {"done": True}

        async def sleep(data: dict[str, Any]) -> dict[str, Any]:
            await anyio.sleep(data["ms"] / 1000)
            return {"slept": data["ms"]}

        def sync_add(data: dict[str, Any]) -> dict[str, Any]:
            return {"sum": data["a"] + data["b"]}

        async def crash(data: dict[str, Any]) -> None:
            raise RuntimeError("secret")

        async def stream(data: dict[str, Any]) -> AsyncIterator[int]:
            yield 1

        for name, f in (("ok", ok), ("flaky", flaky), ("block", block), ("order", order),
                        ("ctx", ctx), ("progress", progress), ("sleep", sleep),
                        ("sync_add", sync_add), ("crash", crash), ("stream", stream)):
            reg.register(f"rpc.v2/T/{name}", f)

        async def admin(data: dict[str, Any]) -> dict[str, Any]:
            return {"secret": "ok"}

        reg.register("rpc.v2/T/admin", admin, roles=["admin"])


def build_app(store: Any = "memory://", *, framing: str = "message",
              **options: Any) -> tuple[ASGIApp, TaskManager, Handlers]:
    reg = MethodRegistry()
    handlers = Handlers()
    handlers.register(reg)
    dispatcher = RpcDispatcher(reg, debug=False)
    dispatcher.streaming.configure(default_framing=framing, heartbeat_interval=0)
    install_health_service(dispatcher, watch_interval=0.02)
    opts = {"retry_initial_delay_ms": 10.0, "poll_interval": 0.2, **options}
    manager = install_task_service(dispatcher, store, **opts)
    app = ErrorMappingMiddleware(PrincipalLayer(dispatcher))
    return app, manager, handlers


async def submit(client: httpx.AsyncClient, target: str, params: Any = None,
                 **extra: Any) -> dict[str, Any]:
    headers = extra.pop("headers", None)
    body: dict[str, Any] = {"target_method": target, **extra}
    if params is not None:
        body["params"] = params
    r = await client.post(TS + "Submit", json=body, headers=headers)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def query(client: httpx.AsyncClient, task_id: str, **kw: Any) -> httpx.Response:
    return await client.post(TS + "Query", json={"task_id": task_id}, **kw)


async def wait_terminal(client: httpx.AsyncClient, task_id: str, timeout: float = 10.0,
                        **kw: Any) -> dict[str, Any]:
    """Poll Query until the task is terminal (bounded)."""
    with anyio.fail_after(timeout):
        while True:
            r = await query(client, task_id, **kw)
            assert r.status_code == 200, r.text
            task: dict[str, Any] = r.json()["task"]
            if task["status"] in TERMINAL:
                return task
            await anyio.sleep(0.01)


async def wait_status(client: httpx.AsyncClient, task_id: str, status: str,
                      timeout: float = 10.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            task: dict[str, Any] = (await query(client, task_id)).json()["task"]
            if task["status"] == status:
                return task
            await anyio.sleep(0.01)


class SseCall:
    """Drive one POST to an SSE endpoint by hand: read events live, disconnect at will."""

    def __init__(self, app: ASGIApp, path: str, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        hdrs = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": hdrs,
            "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
        self.app = app
        self._body = raw
        self._sent_body = False
        self._gone = anyio.Event()
        self._out, self._in = anyio.create_memory_object_stream[dict[str, Any]](1000)
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.done = anyio.Event()
        self._buf = b""

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        await self._out.send(message)

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        finally:
            self.done.set()
            self._out.close()

    def disconnect(self) -> None:
        self._gone.set()

    async def start(self) -> None:
        """Wait for the response start."""
        msg = await self._in.receive()
        assert msg["type"] == "http.response.start", msg
        self.status = msg["status"]
        self.headers = {k.decode(): v.decode() for k, v in msg["headers"]}

    async def next_block(self) -> str | None:
        """The next SSE block (text between blank lines), or None at the end of the body."""
        while b"\n\n" not in self._buf:
            try:
                msg = await self._in.receive()
            except anyio.EndOfStream:
                return None
            self._buf += msg.get("body", b"")
            if not msg.get("more_body", False) and b"\n\n" not in self._buf:
                return None
        block, self._buf = self._buf.split(b"\n\n", 1)
        return block.decode()

    async def next_data(self) -> Any:
        """The JSON of the next block's ``data:`` (skipping comment-only blocks)."""
        while True:
            block = await self.next_block()
            if block is None:
                return None
            data = [ln[5:].lstrip() for ln in block.split("\n") if ln.startswith("data:")]
            if data:
                return json.loads("\n".join(data))

    async def rest(self) -> list[Any]:
        out = []
        while (item := await self.next_data()) is not None:
            out.append(item)
        return out


@asynccontextmanager
async def sse_call(app: ASGIApp, path: str, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> AsyncIterator[SseCall]:
    call = SseCall(app, path, body, headers)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call.run)
        try:
            await call.start()
            yield call
        finally:
            call.disconnect()


__all__ = [
    "HS",
    "TS",
    "Handlers",
    "SseCall",
    "build_app",
    "client_for",
    "lifespan",
    "query",
    "sse_call",
    "submit",
    "wait_status",
    "wait_terminal",
]
