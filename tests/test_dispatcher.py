"""The dispatcher: envelope validation, routing, handlers, response metadata."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from aduib_asgi.context import RequestContext, get_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher, service
from aduib_asgi.errors import RpcError
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio


async def post_raw(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(RPC, content=body, headers={"content-type": "application/json"})


async def test_echo_with_id(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {"msg": "hi", "n": 1},
                                                  id="req-echo-1"))
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "req-echo-1"
    assert body["status"] == "success"
    assert body["result"] == {"msg": "hi", "n": 1}
    meta = body["metadata"]
    assert {"timestamp_ms", "duration_ms", "server_id", "server_version"} <= set(meta)


async def test_missing_id_is_generated_and_echoed(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json={"aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo"})
    assert r.status_code == 200
    assert uuid.UUID(r.json()["id"]).version == 4
    assert r.json().get("result") is None  # Echo/echo: absent data comes back unchanged


async def test_unknown_members_are_ignored(demo_client: httpx.AsyncClient) -> None:
    body = envelope("rpc.v2/Echo/echo", {"x": 1}, id="r", meta={"headers": {"a": "b"}},
                    qos={"enabled": False, "idempotency_ttl_s": 300, "priority": 2},
                    metadata={"long_task": False, "tenant_id": "t1"}, whatever=[1, 2])
    r = await demo_client.post(RPC, json=body)
    assert r.status_code == 200
    assert r.json()["result"] == {"x": 1}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{bad json", 400, 1003, None),
        (b"\xff\xfe\x00{}", 400, 1003, None),
        (b"[" * 100_000 + b"]" * 100_000, 400, 1003, None),
        (b"[1, 2]", 400, 1002, None),
        (b'{"aduib_rpc": "2.0"}', 400, 1002, "method"),
        (b'{"method": "Echo.echo"}', 400, 1002, "method"),
        (b'{"method": "rpc.v2/Echo/echo", "data": [1]}', 400, 1002, "data"),
        (b'{"method": "rpc.v2/Echo/echo", "data": "x"}', 400, 1002, "data"),
        (b'{"method": "rpc.v2/Nope/echo"}', 404, 4002, None),
        (b'{"method": "rpc.v2/Echo/nope"}', 404, 4001, None),
        (b"", 400, 1002, None),
        (b'{"method": "rpc.v2/Echo/echo", "data": {"x": NaN}}', 400, 1003, None),
        (b'{"method": "rpc.v2/Echo/echo", "data": {"x": -Infinity}}', 400, 1003, None),
    ],
)
async def test_bad_requests_get_their_own_code(
    demo_client: httpx.AsyncClient, body: bytes, status: int, code: int, field: str | None
) -> None:
    r = await post_raw(demo_client, body)
    assert r.status_code == status
    out = r.json()
    assert out["status"] == "error"
    assert out["error"]["code"] == code
    assert out["error"]["name"]
    uuid.UUID(out["id"])
    if field is not None:
        assert [d["field"] for d in out["error"]["details"]] == [field]


async def test_invalid_envelope_still_echoes_a_readable_id(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json={"id": "keep-me", "method": 5})
    assert r.status_code == 400
    assert r.json()["id"] == "keep-me"
    assert r.json()["error"]["code"] == 1002


async def test_wrong_http_method_is_405_with_envelope(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get(RPC)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["status"] == "error"
    assert r.json()["error"]["code"] == 2000


async def test_unknown_path_is_404_envelope(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post("/aduib_rpc/v2/nothing", json={})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 4000


async def test_unsupported_content_type_without_negotiation_layer() -> None:
    app = RpcDispatcher(MethodRegistry())
    async with client_for(app) as c:
        r = await c.post(RPC, content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["error"]["code"] == 1003


async def test_body_size_cap_is_413() -> None:
    reg = MethodRegistry()
    reg.register("rpc.v2/Echo/echo", lambda d: d)
    app = RpcDispatcher(reg, max_body_size=100)
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {"x": "y" * 200}))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 2004


class Point(BaseModel):
    x: int
    y: int


async def test_sync_handler_runs_in_a_thread_with_the_context() -> None:
    reg = MethodRegistry()
    seen: dict[str, Any] = {}

    def where(data: Point, ctx: RequestContext) -> dict[str, Any]:
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        seen["ctxvar"] = get_context() is ctx
        return {"sum": data.x + data.y, "rid": ctx.request_id}

    reg.register("rpc.v2/Math/add", where, input_model=Point)
    async with client_for(RpcDispatcher(reg)) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/Math/add", {"x": 1, "y": 2}, id="a"))
        bad = await c.post(RPC, json=envelope("rpc.v2/Math/add", {"x": "no"}))
    assert r.json()["result"] == {"sum": 3, "rid": "a"}
    assert seen == {"thread": True, "ctxvar": True}
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["code"] == 2001
    assert sorted(d["field"] for d in err["details"]) == ["data.x", "data.y"]


async def test_pydantic_results_and_service_decorator() -> None:
    reg = MethodRegistry()

    @service(reg, "Geo")
    class Geo:
        async def origin(self, data: dict[str, Any]) -> Point:
            return Point(x=0, y=0)

        def fail(self, data: dict[str, Any]) -> None:
            raise RpcError(4010, "exists")

    async with client_for(RpcDispatcher(reg)) as c:
        ok = await c.post(RPC, json=envelope("rpc.v2/Geo/origin"))
        err = await c.post(RPC, json=envelope("rpc.v2/Geo/fail"))
    assert ok.json()["result"] == {"x": 0, "y": 0}
    assert err.status_code == 409
    assert err.json()["error"]["code"] == 4010


def test_registry_rejects_bad_names_and_duplicates() -> None:
    reg = MethodRegistry()
    reg.register("rpc.v2/A/b", lambda d: d)
    with pytest.raises(ValueError):
        reg.register("rpc.v2/A/b", lambda d: d)
    with pytest.raises(ValueError):
        reg.register("A.b", lambda d: d)


async def test_content_type_is_case_insensitive_and_head_works_on_get_routes() -> None:
    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher

    reg = MethodRegistry()

    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return data

    reg.register("rpc.v2/T/echo", echo)
    app = RpcDispatcher(reg)
    async with client_for(app) as c:
        r = await c.post(RPC, content=b'{"aduib_rpc":"2.0","method":"rpc.v2/T/echo","data":{}}',
                         headers={"Content-Type": "Application/JSON; Charset=UTF-8"})
        head = await c.head("/aduib_rpc/v2/capabilities")
        get = await c.get("/aduib_rpc/v2/capabilities")
    assert r.status_code == 200, r.text
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


async def test_a_configured_server_id_is_on_errors_from_outer_layers() -> None:
    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
    from aduib_asgi.middleware.errors import ErrorMappingMiddleware
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware
    from aduib_asgi.stack import Layer, build_stack

    app = build_stack(RpcDispatcher(MethodRegistry(), server_id="node-a"), [
        Layer.of(ErrorMappingMiddleware), Layer.of(TenantScopeMiddleware)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/T/echo", {}),
                         headers={"X-Tenant-ID": "bad tenant"})
    assert r.json()["error"]["code"] == 2003
    assert r.json()["metadata"]["server_id"] == "node-a"
