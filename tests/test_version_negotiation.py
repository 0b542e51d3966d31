"""Version negotiation (PROTOCOL.md section 4) through the real stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ErrorMappingMiddleware, VersionNegotiationMiddleware
from aduib_asgi.stack import Layer, build_stack
from aduib_asgi.versioning import ServerVersions, parse_version
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

CONTEXT = "rpc.v2/Echo/context"


def rpc_app(versions: tuple[str, ...] = ("2.0", "1.0")) -> Any:
    registry = MethodRegistry()

    async def negotiated(data: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"negotiated_version": ctx.negotiated_version}

    registry.register("rpc.v2/Echo/context", negotiated)
    return build_stack(RpcDispatcher(registry), [
        Layer.of(ErrorMappingMiddleware),
        Layer.of(VersionNegotiationMiddleware, versions=versions),
    ])


async def call(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    return await client.post(RPC, json=envelope(CONTEXT, {}, **extra))


async def test_default_request_negotiates_2_0(demo_client: httpx.AsyncClient) -> None:
    r = await call(demo_client)
    assert r.status_code == 200
    body = r.json()
    assert body["aduib_rpc"] == "2.0"
    assert body["negotiated_version"] == "2.0"
    assert body["result"]["negotiated_version"] == "2.0"  # reaches the handler


async def test_highest_common_version_is_picked(demo_client: httpx.AsyncClient) -> None:
    r = await call(demo_client, supported_versions=["1.0", "2.0", "3.0"])
    assert r.status_code == 200
    assert r.json()["negotiated_version"] == "2.0"
    r = await call(demo_client, supported_versions=["1.0"])
    assert r.json()["negotiated_version"] == "1.0"
    assert r.json()["result"]["negotiated_version"] == "1.0"


async def test_2_10_is_higher_than_2_9() -> None:
    async with client_for(rpc_app(("2.9", "2.10", "2.0"))) as client:
        r = await call(client, supported_versions=["2.9", "2.10", "2.0"])
        assert r.status_code == 200
        assert r.json()["negotiated_version"] == "2.10"
        assert r.json()["result"]["negotiated_version"] == "2.10"
        r = await call(client, supported_versions=["2.9", "2.0"])
        assert r.json()["negotiated_version"] == "2.9"


async def test_no_intersection_is_1001_listing_server_versions(
    demo_client: httpx.AsyncClient,
) -> None:
    r = await call(demo_client, supported_versions=["3.0", "4.1"], id="v-1")
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error"
    assert body["id"] == "v-1"
    assert body["error"]["code"] == 1001
    assert body["error"]["name"] == "UNSUPPORTED_VERSION"
    (detail,) = body["error"]["details"]
    assert detail["field"] == "supported_versions"
    assert detail["metadata"]["supported_versions"] == ["2.0", "1.0"]
    assert detail["metadata"]["requested"] == ["3.0", "4.1"]


async def test_unsupported_envelope_version_without_list_is_1001(
    demo_client: httpx.AsyncClient,
) -> None:
    r = await demo_client.post(RPC, json={"aduib_rpc": "3.0", "method": CONTEXT})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 1001
    assert err["details"][0]["field"] == "aduib_rpc"
    assert err["details"][0]["metadata"]["supported_versions"] == ["2.0", "1.0"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"aduib_rpc": "two"}, "aduib_rpc"),
        ({"aduib_rpc": "2"}, "aduib_rpc"),
        ({"aduib_rpc": "2.0.1"}, "aduib_rpc"),
        ({"aduib_rpc": 2.0}, "aduib_rpc"),
        ({"aduib_rpc": "\u0662.\u0660"}, "aduib_rpc"),  # Arabic-Indic digits are not ASCII
        ({"supported_versions": ["2.0", "x"]}, "supported_versions.1"),
        ({"supported_versions": "2.0"}, "supported_versions"),
        ({"supported_versions": [2]}, "supported_versions.0"),
        ({"supported_versions": []}, "supported_versions"),
    ],
)
async def test_malformed_versions_are_1001_not_500(
    demo_client: httpx.AsyncClient, extra: dict[str, Any], field: str
) -> None:
    body = {"aduib_rpc": "2.0", "method": CONTEXT, **extra}
    r = await demo_client.post(RPC, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 1001
    assert err["details"][0]["field"] == field


async def test_server_without_1_0_rejects_v1_in_v1_shape() -> None:
    async with client_for(rpc_app(("2.0",))) as client:
        r = await client.post(RPC, json={"aduib_rpc": "1.0", "id": 7, "method": CONTEXT})
        assert r.status_code == 400
        body = r.json()
        assert body == {"aduib_rpc": "1.0", "id": 7, "status": "error", "result": None,
                        "error": {"code": 1001, "message": body["error"]["message"],
                                  "data": body["error"]["data"]}}
        assert body["error"]["data"][0]["metadata"]["supported_versions"] == ["2.0"]


# -- headers, around a plain app ------------------------------------------------------


def plain_app() -> Any:
    async def home(request: Request) -> JSONResponse:
        ctx = request.scope.get("aduib.context")
        return JSONResponse({"version": ctx.negotiated_version if ctx else None})

    app = Starlette(routes=[Route("/", home)])
    return VersionNegotiationMiddleware(app, versions=("2.10", "2.9", "1.0"))


async def test_plain_app_negotiates_from_headers() -> None:
    async with client_for(plain_app()) as client:
        r = await client.get("/", headers={"Aduib-Rpc-Supported-Versions": "1.0, 2.9, 2.10"})
        assert r.status_code == 200
        assert r.json() == {"version": "2.10"}
        assert r.headers["aduib-rpc-negotiated-version"] == "2.10"
        r = await client.get("/", headers={"Aduib-Rpc-Version": "1.0"})
        assert r.json() == {"version": "1.0"}
        assert r.headers["aduib-rpc-negotiated-version"] == "1.0"


async def test_plain_app_without_headers_passes_through() -> None:
    async with client_for(plain_app()) as client:
        r = await client.get("/")
        assert r.status_code == 200
        assert r.json() == {"version": None}
        assert "aduib-rpc-negotiated-version" not in r.headers


@pytest.mark.parametrize(
    "headers",
    [{"Aduib-Rpc-Supported-Versions": "3.0"}, {"Aduib-Rpc-Version": "2.0"},
     {"Aduib-Rpc-Version": "junk"}, {"Aduib-Rpc-Supported-Versions": "2.10, nope"}],
)
async def test_plain_app_header_mismatch_is_1001_envelope(headers: dict[str, str]) -> None:
    async with client_for(plain_app()) as client:
        r = await client.get("/", headers=headers)
        assert r.status_code == 400
        body = r.json()
        assert body["status"] == "error"
        assert body["error"]["code"] == 1001
        assert body["error"]["details"][0]["metadata"]["supported_versions"] == [
            "2.10", "2.9", "1.0"]


async def test_websocket_version_mismatch_closes_before_accept() -> None:
    reached: list[str | None] = []

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["aduib.context"].negotiated_version)
        await send({"type": "websocket.accept"})

    app = VersionNegotiationMiddleware(ws_app)

    async def run(version: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws", "headers": [
            (b"aduib-rpc-version", version.encode())]}
        await app(scope, receive, send)
        return sent

    assert await run("2.0") == [{"type": "websocket.accept"}]
    assert reached == ["2.0"]
    (closed,) = await run("9.0")
    assert closed["type"] == "websocket.close" and closed["code"] == 1008
    assert reached == ["2.0"]


# -- unit: ordering and parsing --------------------------------------------------------


def test_parse_version() -> None:
    assert parse_version("2.10") == (2, 10)
    assert parse_version("2.10") > parse_version("2.9")  # type: ignore[operator]
    for bad in ("", "2", "2.", ".1", "a.b", "2.0.0", " 2.0", "12345.0", None, 2.0):
        assert parse_version(bad) is None


def test_server_versions_config() -> None:
    sv = ServerVersions(["1.0", "2.10", "2.9"])
    assert sv.versions == ("2.10", "2.9", "1.0")
    assert sv.negotiate("2.0", ["2.9", "2.10"]) == "2.10"
    assert sv.negotiate("1.00") == "1.0"
    with pytest.raises(ValueError):
        ServerVersions(["2"])
    with pytest.raises(ValueError):
        ServerVersions([])
