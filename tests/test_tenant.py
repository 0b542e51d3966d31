"""TenantScopeMiddleware through the real stack: precedence, validation, isolation."""

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from aduib_asgi.context import get_context
from aduib_asgi.middleware.tenant import TenantScopeMiddleware, get_tenant, tenant_setting
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, rpc_app

pytestmark = pytest.mark.anyio


def _app(**kw: Any) -> Any:
    return rpc_app([Layer.of(TenantScopeMiddleware, **kw)])


def _meta(tenant: str) -> dict[str, Any]:
    return {"metadata": {"tenant_id": tenant}}


async def test_tenant_from_header_reaches_handler_and_contextvar() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"X-Tenant-ID": "acme"})
    seen = r.json()["result"]
    assert (seen["tenant_id"], seen["tenant_var"]) == ("acme", "acme")
    assert get_tenant() is None  # nothing leaks into the caller's context


async def test_tenant_from_envelope_metadata() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context", **_meta("t1")))
    assert r.json()["result"]["tenant_id"] == "t1"


async def test_envelope_and_header_agree() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context", **_meta("t1")),
                         headers={"X-Tenant-Id": "t1"})
    assert r.status_code == 200 and r.json()["result"]["tenant_id"] == "t1"


async def test_envelope_and_header_disagree_is_2003() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context", id="r1", **_meta("t1")),
                         headers={"X-Tenant-ID": "t2"})
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error" and body["id"] == "r1"
    assert body["error"]["code"] == 2003 and body["error"]["name"] == "INVALID_FIELD_VALUE"
    assert {d["field"] for d in body["error"]["details"]} == {"metadata.tenant_id", "X-Tenant-ID"}
    assert "metadata" in body


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "acme/evil", "t\u00e9"])
async def test_invalid_tenant_header_is_2003(bad: str) -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"),
                         headers=[(b"x-tenant-id", bad.encode("utf-8"))])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 2003 and err["details"][0]["field"] == "X-Tenant-ID"


async def test_invalid_tenant_in_envelope_is_2003() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context", **_meta("no spaces allowed")))
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["field"] == "metadata.tenant_id"


async def test_required_tenant_missing_is_2002() -> None:
    async with client_for(_app(required=True)) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"))
    assert r.status_code == 400 and r.json()["error"]["code"] == 2002


async def test_default_tenant_when_none_given() -> None:
    async with client_for(_app(default="default")) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"))
        r2 = await c.post(RPC, json=call("rpc.v2/T/context"))
    assert r.json()["result"]["tenant_id"] == "default"
    assert r2.json()["result"]["tenant_var"] == "default"
    async with client_for(_app()) as c:
        r3 = await c.post(RPC, json=call("rpc.v2/T/context"))
    assert r3.json()["result"]["tenant_id"] is None


async def test_custom_pattern() -> None:
    async with client_for(_app(pattern=r"t[0-9]+")) as c:
        ok = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"X-Tenant-ID": "t42"})
        bad = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"X-Tenant-ID": "acme"})
    assert ok.status_code == 200 and bad.status_code == 400
    with pytest.raises(ValueError):
        TenantScopeMiddleware(Starlette(), pattern=r"t[0-9]+", default="default")


async def test_sync_handler_in_worker_thread_sees_tenant() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/sync_context"), headers={"X-Tenant-ID": "sy"})
    seen = r.json()["result"]
    assert seen["thread"] != threading.current_thread().name  # really ran in a worker
    assert (seen["tenant_id"], seen["tenant_var"]) == ("sy", "sy")


async def test_streaming_generator_sees_tenant_in_every_chunk() -> None:
    async def stream(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            for _ in range(3):
                await anyio.sleep(0)
                yield f"{get_tenant()}|{get_context().tenant_id};".encode()  # type: ignore[union-attr]

        return StreamingResponse(gen())

    app = TenantScopeMiddleware(Starlette(routes=[Route("/s", stream)]))
    async with client_for(app) as c:
        r = await c.get("/s", headers={"X-Tenant-ID": "streamy"})
    assert r.text == "streamy|streamy;" * 3


async def test_per_tenant_overrides_visible_to_handler_code() -> None:
    async def view(request: Request) -> JSONResponse:
        return JSONResponse({"limit": tenant_setting("limit", 10)})

    app = TenantScopeMiddleware(Starlette(routes=[Route("/x", view)]),
                                overrides={"big": {"limit": 1000}})
    async with client_for(app) as c:
        big = await c.get("/x", headers={"X-Tenant-ID": "big"})
        small = await c.get("/x", headers={"X-Tenant-ID": "small"})
    assert (big.json()["limit"], small.json()["limit"]) == (1000, 10)


async def test_works_alone_and_rejects_with_envelope() -> None:
    async def view(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": get_tenant()})

    app = TenantScopeMiddleware(Starlette(routes=[Route("/x", view)]), required=True)
    async with client_for(app) as c:
        ok = await c.get("/x", headers={"X-Tenant-ID": "acme"})
        missing = await c.get("/x")
        bad = await c.get("/x", headers={"X-Tenant-ID": "bad tenant"})
    assert ok.json() == {"tenant": "acme"}
    assert missing.status_code == 400 and missing.json()["error"]["code"] == 2002
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 2003


async def test_websocket_with_bad_tenant_is_closed() -> None:
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("must not be reached")

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"x-tenant-id", b"bad tenant")]}
    await TenantScopeMiddleware(inner)(scope, receive, send)
    assert sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008


async def test_many_interleaved_concurrent_tenants_never_cross() -> None:
    """250 concurrent requests from 25 tenants, interleaved by random sleeps."""
    n = 250
    results: dict[int, Any] = {}
    rng = random.Random(7)
    plan = [(i, f"tenant-{i % 25}", rng.choice([0, 1, 2, 5]),
             rng.choice(["header", "envelope", "both"])) for i in range(n)]

    async with client_for(_app()) as c:
        async def one(i: int, tenant: str, ms: int, via: str) -> None:
            body = call("rpc.v2/T/interleave", {"ms": ms}, id=f"req-{i}")
            headers = {}
            if via in ("envelope", "both"):
                body["metadata"] = {"tenant_id": tenant}
            if via in ("header", "both"):
                headers["X-Tenant-ID"] = tenant
            r = await c.post(RPC, json=body, headers=headers)
            results[i] = (r.status_code, r.json())

        async with anyio.create_task_group() as tg:
            for args in plan:
                tg.start_soon(one, *args)

    assert len(results) == n
    for i, tenant, _, _ in plan:
        status, body = results[i]
        assert status == 200, body
        assert body["id"] == f"req-{i}"
        res = body["result"]
        assert res == {"before": tenant, "after": tenant, "same_ctx": True, "tenant_id": tenant}
