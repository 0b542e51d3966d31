"""POST /v2/rpc/stream: both SSE framings, pre-stream HTTP errors, heartbeats, deadlines."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.responses import send_error
from aduib_asgi.streaming import Partial, StreamState, raw_item, stream_response
from tests.conftest import client_for, envelope
from tests.stream_harness import STREAM, frames_of, http_stream, parse_sse

pytestmark = pytest.mark.anyio


class Count(BaseModel):
    n: int


def make_registry() -> MethodRegistry:
    reg = MethodRegistry()

    async def count(data: Count) -> AsyncIterator[dict[str, int]]:
        for i in range(data.n):
            yield {"i": i}

    async def auth_gen(data: dict[str, Any]) -> AsyncIterator[int]:
        raise RpcError(3000, "who are you")
        yield 1  # pragma: no cover

    async def limited(data: dict[str, Any]) -> AsyncIterator[int]:
        raise RpcError(5020, "slow down", headers={"Retry-After": "3"})
        yield 1  # pragma: no cover

    async def mid_fail(data: dict[str, Any]) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("secret-detail")

    async def partials(data: dict[str, Any]) -> AsyncIterator[Any]:
        yield Partial({"progress": 50})
        yield {"done": True}

    def sync_gen(data: dict[str, Any]) -> Iterator[Any]:
        yield threading.current_thread().name
        yield "second"

    async def slow(data: dict[str, Any]) -> AsyncIterator[int]:
        yield 1
        await anyio.sleep(data.get("pause", 0.3))
        yield 2

    async def forever(data: dict[str, Any]) -> AsyncIterator[int]:
        yield 0
        await anyio.sleep(math.inf)
        yield 1  # pragma: no cover

    async def unary(data: dict[str, Any]) -> dict[str, Any]:
        return {"unary": True}

    async def unserializable(data: dict[str, Any]) -> AsyncIterator[Any]:
        yield {"i": 1}
        yield {"x": object()}  # no JSON for it
        yield {"i": 3}  # pragma: no cover

    reg.register("rpc.v2/S/count", count, input_model=Count)
    reg.register("rpc.v2/S/auth", auth_gen)
    reg.register("rpc.v2/S/limited", limited)
    reg.register("rpc.v2/S/mid_fail", mid_fail)
    reg.register("rpc.v2/S/partials", partials)
    reg.register("rpc.v2/S/sync_gen", sync_gen)
    reg.register("rpc.v2/S/slow", slow)
    reg.register("rpc.v2/S/forever", forever)
    reg.register("rpc.v2/S/unary", unary)
    async def unserializable_first(data: dict[str, Any]) -> AsyncIterator[Any]:
        yield {"x": object()}  # the very first item cannot be encoded

    reg.register("rpc.v2/S/unserializable", unserializable)
    reg.register("rpc.v2/S/unserializable_first", unserializable_first)
    return reg


def make_app(*, framing: str = "message", heartbeat: float = 0.0, debug: bool = False,
             wrap: Any = None) -> tuple[ASGIApp, RpcDispatcher]:
    dispatcher = RpcDispatcher(make_registry(), debug=debug)
    dispatcher.streaming.configure(default_framing=framing, heartbeat_interval=heartbeat)
    inner: ASGIApp = dispatcher if wrap is None else wrap(dispatcher)
    return ErrorMappingMiddleware(inner, debug=debug), dispatcher


async def post_stream(app: ASGIApp, body: Any, **kw: Any) -> httpx.Response:
    async with client_for(app) as c:
        if isinstance(body, bytes):
            return await c.post(STREAM, content=body, **kw)
        return await c.post(STREAM, json=body, **kw)


# -- message framing ------------------------------------------------------------------


async def test_message_framing_events_and_headers() -> None:
    app, _ = make_app()
    r = await post_stream(app, envelope("rpc.v2/S/count", {"n": 3}, id="c1"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["aduib-stream-framing"] == "message"
    events = parse_sse(r.content)
    assert [e["event"] for e in events] == ["data", "data", "data", "end"]
    assert [e["id"] for e in events] == ["1", "2", "3", "4"]
    frames = [json.loads(e["data"]) for e in events]
    assert [f["sequence"] for f in frames] == [1, 2, 3, 4]
    assert [f["payload"]["data"] for f in frames[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert frames[-1]["payload"]["control"] == {"final": True, "total_count": 3}


async def test_empty_stream_is_one_end_frame() -> None:
    app, _ = make_app()
    r = await post_stream(app, envelope("rpc.v2/S/count", {"n": 0}))
    assert r.status_code == 200
    assert [f["type"] for f in frames_of(r.content)] == ["end"]


async def test_partial_frames_are_not_counted() -> None:
    app, _ = make_app()
    r = await post_stream(app, envelope("rpc.v2/S/partials"))
    frames = frames_of(r.content)
    assert [f["type"] for f in frames] == ["partial", "data", "end"]
    assert frames[-1]["payload"]["control"]["total_count"] == 1


async def test_sync_generator_runs_in_a_worker_thread() -> None:
    app, _ = make_app()
    r = await post_stream(app, envelope("rpc.v2/S/sync_gen"))
    frames = frames_of(r.content)
    assert frames[0]["payload"]["data"] != threading.current_thread().name
    assert frames[1]["payload"]["data"] == "second"
    assert frames[-1]["type"] == "end"


async def test_unary_method_on_stream_endpoint_is_one_item() -> None:
    app, _ = make_app()
    r = await post_stream(app, envelope("rpc.v2/S/unary"))
    assert [f["type"] for f in frames_of(r.content)] == ["data", "end"]


async def test_mid_stream_failure_is_error_then_end_without_secrets() -> None:
    app, _ = make_app(debug=False)
    r = await post_stream(app, envelope("rpc.v2/S/mid_fail"))
    assert r.status_code == 200
    frames = frames_of(r.content)
    assert [f["type"] for f in frames] == ["data", "error", "end"]
    err = frames[1]["payload"]["error"]
    assert err["code"] == 5000 and err["name"] == "INTERNAL_ERROR"
    assert "secret-detail" not in r.text and "debug" not in err


@pytest.mark.parametrize("framing", ["message", "envelope"])
async def test_an_item_that_cannot_be_encoded_is_error_then_end(framing: str) -> None:
    # The encoding failure used to escape the stream: no error frame, no end frame.
    app, dispatcher = make_app(framing=framing)
    r = await post_stream(app, envelope("rpc.v2/S/unserializable"))
    assert r.status_code == 200
    if framing == "envelope":
        items = [json.loads(e["data"]) for e in parse_sse(r.content)]
        assert [i["status"] for i in items] == ["success", "error"]
        assert items[1]["error"]["code"] == 5000
        return
    frames = frames_of(r.content)
    assert [(f["type"], f["sequence"]) for f in frames] == [
        ("data", 1), ("error", 2), ("end", 3)]
    assert frames[1]["payload"]["error"]["code"] == 5000
    assert frames[-1]["payload"]["control"] == {"final": True, "total_count": 1}
    assert len(dispatcher.streaming.inflight) == 0


@pytest.mark.parametrize("framing", ["message", "envelope"])
async def test_a_first_item_that_cannot_be_encoded_is_a_plain_http_error(framing: str) -> None:
    """Nothing was sent yet: the failure is an HTTP error (PROTOCOL.md section 5)."""
    app, dispatcher = make_app(framing=framing)
    r = await post_stream(app, envelope("rpc.v2/S/unserializable_first"))
    assert r.status_code == 500
    if framing == "envelope":  # envelope framing: one SSE error event with the table status
        (event,) = [json.loads(e["data"]) for e in parse_sse(r.content)]
        assert event["error"]["code"] == 5000
    else:
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == 5000
    assert len(dispatcher.streaming.inflight) == 0


async def test_debug_mode_adds_debug_to_error_frames() -> None:
    app, _ = make_app(debug=True)
    r = await post_stream(app, envelope("rpc.v2/S/mid_fail"))
    err = frames_of(r.content)[1]["payload"]["error"]
    assert "secret-detail" in err["debug"]["internal_message"]


# -- envelope framing -----------------------------------------------------------------


@pytest.mark.parametrize("by", ["config", "header"])
async def test_envelope_framing(by: str) -> None:
    app, _ = make_app(framing="envelope" if by == "config" else "message")
    headers = {"aduib-stream-framing": "envelope"} if by == "header" else {}
    r = await post_stream(app, envelope("rpc.v2/S/count", {"n": 2}, id="e1"), headers=headers)
    assert r.status_code == 200
    assert r.headers["aduib-stream-framing"] == "envelope"
    assert r.headers["content-type"].startswith("text/event-stream")
    assert b"id:" not in r.content and b"event:" not in r.content
    assert b"retry:" not in r.content
    events = parse_sse(r.content)
    envs = [json.loads(e["data"]) for e in events]
    assert [e["result"] for e in envs] == [{"i": 0}, {"i": 1}]
    assert all(e["id"] == "e1" and e["status"] == "success" for e in envs)


async def test_header_can_ask_for_message_framing_on_an_envelope_server() -> None:
    app, _ = make_app(framing="envelope")
    r = await post_stream(app, envelope("rpc.v2/S/count", {"n": 1}),
                          headers={"aduib-stream-framing": "message"})
    assert r.headers["aduib-stream-framing"] == "message"
    assert [f["type"] for f in frames_of(r.content)] == ["data", "end"]


async def test_envelope_framing_mid_stream_error_is_one_error_envelope_then_close() -> None:
    app, _ = make_app(framing="envelope")
    r = await post_stream(app, envelope("rpc.v2/S/mid_fail"))
    envs = [json.loads(e["data"]) for e in parse_sse(r.content)]
    assert [e["status"] for e in envs] == ["success", "error"]
    assert envs[1]["error"]["code"] == 5000


async def test_envelope_framing_partial_items_have_status_partial() -> None:
    app, _ = make_app(framing="envelope")
    r = await post_stream(app, envelope("rpc.v2/S/partials"))
    assert [json.loads(e["data"])["status"] for e in parse_sse(r.content)] == [
        "partial", "success"]


async def test_unknown_framing_header_is_2003() -> None:
    app, _ = make_app()
    r = await post_stream(app, envelope("rpc.v2/S/count", {"n": 1}),
                          headers={"aduib-stream-framing": "xml"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 2003


# -- errors before the first frame are HTTP errors ----------------------------------------


class RejectMiddleware:
    """A layer in front that refuses some requests (like auth / rate limit layers do)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def handle(scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
            code = ctx.header(b"x-reject")
            if code is not None:
                await send_error(scope, send, RpcError(int(code)), ctx=ctx)
                return
            await self.app(scope, receive, send)

        await run_with_context(handle, scope, receive, send)


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"aduib_rpc": "2.0"}', {}, 400, 1002),  # bad envelope
        (b"{not json", {}, 400, 1003),
        (envelope("rpc.v2/S/nope"), {}, 404, 4001),  # unknown method
        (envelope("rpc.v2/Nope/x"), {}, 404, 4002),
        (envelope("rpc.v2/S/count", {"n": "x"}), {}, 400, 2001),  # input model
        (envelope("rpc.v2/S/auth"), {}, 401, 3000),  # generator fails before its first yield
        (envelope("rpc.v2/S/limited"), {}, 429, 5020),
        (envelope("rpc.v2/S/count", {"n": 1}), {"x-reject": "3001"}, 401, 3001),  # middleware
        (envelope("rpc.v2/S/count", {"n": 1}), {"x-reject": "5020"}, 429, 5020),
        (b"<xml/>", {"content-type": "text/plain"}, 415, 1003),
    ],
)
@pytest.mark.parametrize("framing", ["message", "envelope"])
async def test_pre_stream_errors_are_http_errors(
    body: Any, headers: dict[str, str], status: int, code: int, framing: str
) -> None:
    app, _ = make_app(framing=framing, wrap=RejectMiddleware)
    r = await post_stream(app, body, headers=headers)
    assert r.status_code == status
    if framing == "message" or "x-reject" in headers:  # a layer's own error: JSON
        assert r.headers["content-type"].startswith("application/json")
        env = r.json()
    else:  # envelope framing: SSE with one error envelope, so 2.0.1 clients read the code
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.content)
        assert len(events) == 1
        env = json.loads(events[0]["data"])
    assert env["status"] == "error" and env["error"]["code"] == code
    assert env["error"]["name"] and env["error"]["message"]
    if code == 5020 and "x-reject" not in headers:
        assert r.headers["retry-after"] == "3"


# -- heartbeats --------------------------------------------------------------------------


async def test_heartbeat_after_interval_without_frames() -> None:
    app, _ = make_app(heartbeat=0.05)
    async with http_stream(app, envelope("rpc.v2/S/slow", {"pause": 0.4})) as s:
        assert await s.start() == 200
        first = await s.frame()
        assert first is not None and first["type"] == "data"
        beats = []
        while (f := await s.frame()) is not None and f["type"] == "heartbeat":
            beats.append(f)
        assert f is not None and f["type"] == "data"
        rest = []
        while (g := await s.frame()) is not None:
            rest.append(g)
    assert len(beats) >= 2
    assert [b["payload"]["control"]["ping_id"] for b in beats] == [
        str(i) for i in range(1, len(beats) + 1)]
    seqs = [first["sequence"], *(b["sequence"] for b in beats), f["sequence"],
            *(g["sequence"] for g in rest)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1]["type"] == "end" and rest[-1]["payload"]["control"]["total_count"] == 2


async def test_no_heartbeat_when_frames_flow() -> None:
    app, _ = make_app(heartbeat=5.0)
    r = await post_stream(app, envelope("rpc.v2/S/count", {"n": 50}))
    assert "heartbeat" not in {f["type"] for f in frames_of(r.content)}


async def test_heartbeat_is_a_comment_in_envelope_framing() -> None:
    app, _ = make_app(framing="envelope", heartbeat=0.05)
    async with http_stream(app, envelope("rpc.v2/S/slow", {"pause": 0.3})) as s:
        await s.start()
        body = await s.rest()
    assert b": ping\n\n" in body
    assert [json.loads(e["data"])["result"] for e in parse_sse(body) if "data" in e] == [1, 2]


# -- deadlines ---------------------------------------------------------------------------


async def test_qos_timeout_ends_stream_with_5003_then_end() -> None:
    app, _ = make_app()
    body = envelope("rpc.v2/S/forever", qos={"timeout_ms": 150})
    with anyio.fail_after(10):
        r = await post_stream(app, body)
    assert r.status_code == 200
    frames = frames_of(r.content)
    assert [f["type"] for f in frames] == ["data", "error", "end"]
    assert frames[1]["payload"]["error"]["code"] == 5003


async def test_deadline_before_first_frame_is_http_504() -> None:
    reg_app, dispatcher = make_app()

    async def never(data: dict[str, Any]) -> AsyncIterator[int]:
        await anyio.sleep(math.inf)
        yield 1  # pragma: no cover

    dispatcher.registry.register("rpc.v2/S/never", never)
    with anyio.fail_after(10):
        r = await post_stream(reg_app, envelope("rpc.v2/S/never", meta={"timeout_ms": 100}))
    assert r.status_code == 504
    assert r.json()["error"]["code"] == 5003


async def test_deadline_middleware_scope_is_lifted_and_enforced_in_band() -> None:
    from aduib_asgi.middleware.deadline import DeadlineMiddleware

    app, _ = make_app(wrap=lambda d: DeadlineMiddleware(d))
    # Register content negotiation is absent: the deadline comes from X-Timeout-Ms here.
    with anyio.fail_after(10):
        r = await post_stream(app, envelope("rpc.v2/S/forever"), headers={"x-timeout-ms": "150"})
    assert r.status_code == 200
    frames = frames_of(r.content)
    assert [f["type"] for f in frames] == ["data", "error", "end"]
    assert frames[1]["payload"]["error"]["code"] == 5003


# -- the API used by other streaming endpoints --------------------------------------------


async def test_stream_response_in_a_plain_starlette_app() -> None:
    """Task Subscribe / Health Watch style: raw model items in envelope framing."""

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"event": "started"}
        yield {"event": "completed"}

    class Watch:  # a raw ASGI endpoint (Starlette calls instances as ASGI apps)
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await run_with_context(self.handle, scope, receive, send)

        async def handle(self, scope: Scope, receive: Receive, send: Send,
                         ctx: RequestContext) -> None:
            await receive()  # the request body
            state = await stream_response(scope, receive, send, ctx, events(),
                                          item_encoder=raw_item, heartbeat_interval=0)
            assert state is StreamState.COMPLETED

    app = Starlette(routes=[Route("/watch", Watch(), methods=["POST"])])
    async with client_for(app) as c:
        r = await c.post("/watch", json={}, headers={"aduib-stream-framing": "envelope"})
        assert [json.loads(e["data"]) for e in parse_sse(r.content)] == [
            {"event": "started"}, {"event": "completed"}]
        r = await c.post("/watch", json={})
        assert [f["type"] for f in frames_of(r.content)] == ["data", "data", "end"]


async def test_stream_abort_hook_ends_a_started_stream_in_band() -> None:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        async def handle(scope: Scope, receive: Receive, send: Send,
                         ctx: RequestContext) -> None:
            async def gen() -> AsyncIterator[int]:
                yield 1
                assert await scope["aduib.stream_abort"](RpcError(6000, "upstream died"))
                yield 2

            await stream_response(scope, receive, send, ctx, gen(), heartbeat_interval=0)

        await run_with_context(handle, scope, receive, send)

    async with client_for(ErrorMappingMiddleware(endpoint)) as c:
        r = await c.post("/x", json={})
    frames = frames_of(r.content)
    assert [f["type"] for f in frames] == ["data", "error", "end"]
    assert frames[1]["payload"]["error"]["code"] == 6000
