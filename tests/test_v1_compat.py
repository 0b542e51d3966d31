"""v1 compatibility (PROTOCOL.md section 9): upgrade, downgrade, the v1 endpoint."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import ErrorMappingMiddleware
from aduib_asgi.responses import build_envelope
from aduib_asgi.versioning.compat import (
    downgrade_v1,
    install_v1_shaper,
    upgrade_v1,
)
from aduib_asgi.versioning.methods import normalize_method
from tests.conftest import RPC

pytestmark = pytest.mark.anyio

V1 = "/aduib_rpc/v1/rpc"


async def test_v1_round_trip_on_v2_endpoint(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json={"aduib_rpc": "1.0", "id": 42,
                                          "method": "rpc.v2/Echo/echo", "data": {"a": 1}})
    assert r.status_code == 200
    assert r.json() == {"aduib_rpc": "1.0", "id": 42, "status": "success",
                        "result": {"a": 1}, "error": None}


async def test_v1_endpoint_upgrades_without_version_member(
    demo_client: httpx.AsyncClient,
) -> None:
    r = await demo_client.post(V1, json={"method": "Echo.echo", "data": {"b": 2},
                                         "id": "one"})
    assert r.status_code == 200
    assert r.json() == {"aduib_rpc": "1.0", "id": "one", "status": "success",
                        "result": {"b": 2}, "error": None}


async def test_v1_missing_id_is_generated(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(V1, json={"aduib_rpc": "1.0", "method": "rpc.v2/Echo/echo"})
    assert r.status_code == 200
    assert uuid.UUID(r.json()["id"]).version == 4


async def test_v1_meta_becomes_metadata_headers_and_version_is_1_0() -> None:
    registry = MethodRegistry()
    seen: dict[str, Any] = {}

    async def peek(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        assert ctx.envelope is not None and ctx.envelope.metadata is not None
        seen["headers"] = dict(ctx.envelope.metadata.headers)
        return {"v": ctx.envelope.aduib_rpc}

    registry.register("rpc.v2/Peek/peek", peek)
    app = ErrorMappingMiddleware(RpcDispatcher(registry))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        r = await client.post(V1, json={"aduib_rpc": "1.0", "method": "Peek/peek",
                                        "meta": {"tenant": "t1", "n": 3, "stream": False}})
    assert r.json()["result"] == {"v": "1.0"}
    assert seen["headers"] == {"tenant": "t1", "n": "3"}


async def test_v1_errors_are_v1_shaped(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(V1, json={"aduib_rpc": "1.0", "id": "e1",
                                         "method": "rpc.v2/Echo/fail",
                                         "data": {"code": 4001, "message": "nope"}})
    assert r.status_code == 404
    assert r.json() == {"aduib_rpc": "1.0", "id": "e1", "status": "error", "result": None,
                        "error": {"code": 4001, "message": "nope", "data": None}}


async def test_v1_validation_error_carries_details_as_data(
    demo_client: httpx.AsyncClient,
) -> None:
    r = await demo_client.post(V1, json={"aduib_rpc": "1.0", "id": "e2",
                                         "method": "rpc.v2/Echo/echo", "data": [1]})
    assert r.status_code == 400
    body = r.json()
    assert body["aduib_rpc"] == "1.0" and body["id"] == "e2" and body["status"] == "error"
    assert body["error"]["code"] == 1002
    assert [d["field"] for d in body["error"]["data"]] == ["data"]


async def test_v1_undecodable_body_is_v1_shaped(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(V1, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    assert body["aduib_rpc"] == "1.0" and body["error"]["code"] == 1003
    assert set(body) == {"aduib_rpc", "id", "status", "result", "error"}


async def test_v1_stream_without_stream_endpoint_is_5001() -> None:
    dispatcher = RpcDispatcher(MethodRegistry())
    dispatcher._routes.pop("/aduib_rpc/v2/rpc/stream", None)
    app = ErrorMappingMiddleware(dispatcher)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        r = await client.post(V1, json={"aduib_rpc": "1.0", "method": "rpc.v2/Echo/stream",
                                        "meta": {"stream": True}})
    # meta.stream selected envelope framing: the error is one SSE event (PROTOCOL.md 5.1).
    assert r.status_code == 501
    assert r.headers["content-type"].startswith("text/event-stream")
    body = json.loads(r.text.removeprefix("data: ").strip())
    assert body["error"]["code"] == 5001 and body["aduib_rpc"] == "1.0"


async def test_v1_stream_flag_selects_the_stream_endpoint() -> None:
    dispatcher = RpcDispatcher(MethodRegistry())
    calls: list[str] = []

    async def fake_stream(scope: Any, receive: Any, send: Any, ctx: RequestContext) -> None:
        calls.append(ctx.envelope.method if ctx.envelope else "?")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"streamed"})

    dispatcher.add_route("/v2/rpc/stream", fake_stream, methods=("POST",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dispatcher),
                                 base_url="http://t") as client:
        r = await client.post(V1, json={"aduib_rpc": "1.0", "method": "Echo.stream",
                                        "meta": {"stream": "true"}})
    assert r.text == "streamed" and calls == ["rpc.v2/Echo/stream"]


async def test_v1_stream_in_the_demo_is_v1_envelopes(demo_client: httpx.AsyncClient) -> None:
    pytest.importorskip("aduib_asgi.streaming.endpoints")  # the streaming endpoint (issue 5)
    r = await demo_client.post(V1, json={"aduib_rpc": "1.0", "id": 5, "method": "Echo.stream",
                                         "data": {"count": 2}, "meta": {"stream": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["aduib-stream-framing"] == "envelope"
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert events == [
        {"aduib_rpc": "1.0", "id": 5, "status": "success", "result": {"index": i}, "error": None}
        for i in range(2)
    ]


async def test_shaper_applies_to_a_middleware_rejection_around_a_plain_app() -> None:
    """Any producer of envelopes answers v1-shaped once the request is marked v1."""

    async def home(request: Request) -> JSONResponse:
        install_v1_shaper(request.scope["aduib.context"], "x-1")
        raise RpcError(3011, "no")

    app = ErrorMappingMiddleware(Starlette(routes=[Route("/", home)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        r = await client.get("/")
    assert r.status_code == 403
    assert r.json() == {"aduib_rpc": "1.0", "id": "x-1", "status": "error", "result": None,
                        "error": {"code": 3011, "message": "no", "data": None}}


async def test_v2_requests_are_untouched(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json={"aduib_rpc": "2.0", "id": "v2",
                                          "method": "rpc.v2/Echo/echo", "data": {}})
    body = r.json()
    assert body["aduib_rpc"] == "2.0" and "metadata" in body and "error" not in body


# -- property tests -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(
    st.sampled_from(["aduib_rpc", "id", "method", "data", "meta", "metadata", "name", "x"])
    | st.text(max_size=6),
    json_values,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(json_objects)
def test_upgrade_never_raises_and_preserves_method_data_id(payload: dict[str, Any]) -> None:
    out, stream = upgrade_v1(payload)
    assert isinstance(out, dict) and isinstance(stream, bool)
    assert out["aduib_rpc"] == "1.0"
    if "method" in payload:
        method = payload["method"]
        assert out["method"] == (normalize_method(method) or method)
    assert out.get("data", "absent") == payload.get("data", "absent")
    rid = payload.get("id")
    if isinstance(rid, str) and rid:
        assert out["id"] == rid
    elif isinstance(rid, int) and not isinstance(rid, bool):
        assert out["id"] == str(rid)
    elif rid is None or rid == "":
        assert uuid.UUID(out["id"]).version == 4
    else:
        assert out["id"] == rid


@settings(max_examples=300, deadline=None)
@given(json_objects, json_values)
def test_downgrade_never_raises_and_preserves_id_result(
    env: dict[str, Any], original_id: Any
) -> None:
    out = downgrade_v1(env)
    assert out["aduib_rpc"] == "1.0" and out["status"] in ("success", "error")
    assert out["id"] == env.get("id")
    if out["status"] == "success":
        assert out["result"] == env.get("result") and out["error"] is None
    else:
        assert set(out["error"]) == {"code", "message", "data"}
        assert isinstance(out["error"]["code"], int)
    if original_id is not None and original_id != "":
        assert downgrade_v1(env, original_id)["id"] == original_id


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20) | st.integers(), json_values)
def test_round_trip_preserves_id_and_result(rid: Any, result: Any) -> None:
    upgraded, _ = upgrade_v1({"aduib_rpc": "1.0", "id": rid, "method": "Echo.echo"})
    ctx = RequestContext(request_id=upgraded["id"])
    install_v1_shaper(ctx, rid if rid != "" else None)
    out = build_envelope(ctx, result=result)
    assert out["id"] == (rid if rid != "" else upgraded["id"])
    assert out["result"] == result
    err = build_envelope(ctx, error=RpcError(2001, "bad", details=[{"field": "data.x"}]))
    assert err["error"] == {"code": 2001, "message": "bad", "data": [{"field": "data.x"}]}
