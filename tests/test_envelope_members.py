"""Request-envelope members that must take effect, not just parse (PROTOCOL.md sections 2, 6).

``metadata.headers`` (and ``meta.headers`` of 2.0.1 clients, ``meta`` of v1
clients) are the envelope's equivalents of HTTP headers: the layers that fall
back to headers see them; an HTTP header of the same name wins; transport and
forwarding headers are never taken from the body.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ContentNegotiationMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import RPC, client_for, envelope
from tests.rl_idem_helpers import Services

pytestmark = pytest.mark.anyio


async def _seen(client: httpx.AsyncClient, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await client.post(RPC, json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    seen: dict[str, Any] = r.json()["result"]
    return seen


async def test_metadata_headers_carry_the_tenant(demo_client: httpx.AsyncClient) -> None:
    body = envelope("rpc.v2/Echo/context", {}, metadata={"headers": {"X-Tenant-ID": "acme"}})
    assert (await _seen(demo_client, body))["tenant_id"] == "acme"


async def test_meta_headers_of_2_0_1_clients_carry_the_tenant(
        demo_client: httpx.AsyncClient) -> None:
    body = envelope("rpc.v2/Echo/context", {}, meta={"headers": {"X-Tenant-Id": "t1"},
                                                     "timeout_ms": 3000})
    assert (await _seen(demo_client, body))["tenant_id"] == "t1"


async def test_v1_meta_carries_the_tenant(demo_client: httpx.AsyncClient) -> None:
    body = {"aduib_rpc": "1.0", "method": "rpc.v2/Echo/context", "data": {},
            "meta": {"X-Tenant-ID": "legacy"}}
    assert (await _seen(demo_client, body))["tenant_id"] == "legacy"


async def test_metadata_headers_carry_credentials_and_trace(
        demo_client: httpx.AsyncClient) -> None:
    trace, span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    body = envelope("rpc.v2/Admin/secret", {}, metadata={"headers": {
        "Authorization": "Bearer demo-admin-token", "traceparent": f"00-{trace}-{span}-01"}})
    r = await demo_client.post(RPC, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["trace_context"]["trace_id"] == trace


async def test_metadata_headers_timeout_applies(demo_client: httpx.AsyncClient) -> None:
    body = envelope("rpc.v2/Echo/context", {}, metadata={"headers": {"X-Timeout-Ms": "5000"}})
    remaining = (await _seen(demo_client, body))["deadline_remaining_ms"]
    assert remaining is not None and 0 < remaining <= 5000


async def test_http_header_wins_over_metadata_headers(demo_client: httpx.AsyncClient) -> None:
    body = envelope("rpc.v2/Echo/context", {}, metadata={"headers": {"X-Tenant-ID": "body"}})
    seen = await _seen(demo_client, body, {"X-Tenant-ID": "http"})
    assert seen["tenant_id"] == "http"


async def test_metadata_headers_never_supply_transport_headers() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        ctx: RequestContext = scope["aduib.context"]
        seen["xff"] = ctx.header(b"x-forwarded-for")
        seen["host"] = ctx.header(b"host")
        seen["tenant"] = ctx.header(b"x-tenant-id")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    body = envelope("rpc.v2/Echo/echo", {}, metadata={"headers": {
        "X-Forwarded-For": "10.9.9.9", "Host": "evil", "X-Tenant-ID": "acme"}})
    async with client_for(ContentNegotiationMiddleware(app)) as client:
        r = await client.post(RPC, json=body)
    assert r.status_code == 204
    assert seen == {"xff": None, "host": b"testserver", "tenant": b"acme"}


def _metadata_app() -> Any:
    registry = MethodRegistry()

    async def seen(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        assert ctx.envelope is not None and ctx.envelope.metadata is not None
        return {"timestamp_ms": ctx.envelope.metadata.timestamp_ms, "server": ctx.timestamp_ms}

    registry.register("rpc.v2/Meta/seen", seen)
    return ContentNegotiationMiddleware(RpcDispatcher(registry))


@pytest.mark.parametrize("with_content_layer", [True, False])
async def test_server_fills_metadata_timestamp_when_absent(with_content_layer: bool) -> None:
    app = _metadata_app()
    if not with_content_layer:
        app = app.app
    async with client_for(app) as client:
        for body in (envelope("rpc.v2/Meta/seen", {}),
                     envelope("rpc.v2/Meta/seen", {}, metadata={"client_id": "c1"})):
            seen = await _seen(client, body)
            assert isinstance(seen["timestamp_ms"], int)
            assert seen["timestamp_ms"] == seen["server"]
        client_ts = 1795803146891
        seen = await _seen(client, envelope("rpc.v2/Meta/seen", {},
                                            metadata={"timestamp_ms": client_ts}))
        assert seen["timestamp_ms"] == client_ts


async def _post_without_accept_encoding(client: httpx.AsyncClient,
                                        body: dict[str, Any]) -> httpx.Response:
    request = client.build_request("POST", RPC, json=body)
    del request.headers["accept-encoding"]
    return await client.send(request)


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
async def test_metadata_compression_chooses_the_response_coding(
        demo_client: httpx.AsyncClient, coding: str) -> None:
    body = envelope("rpc.v2/Echo/big", {"size": 4000}, metadata={"compression": coding})
    r = await _post_without_accept_encoding(demo_client, body)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == coding
    assert len(r.json()["result"]["text"]) == 4000


async def test_metadata_compression_yields_to_accept_encoding(
        demo_client: httpx.AsyncClient) -> None:
    body = envelope("rpc.v2/Echo/big", {"size": 4000}, metadata={"compression": "gzip"})
    r = await demo_client.post(RPC, json=body, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and "content-encoding" not in r.headers


@pytest.mark.parametrize("value", ["identity", "none", "deflate", "bogus"])
async def test_metadata_compression_unknown_or_identity_is_plain(
        demo_client: httpx.AsyncClient, value: str) -> None:
    body = envelope("rpc.v2/Echo/big", {"size": 4000}, metadata={"compression": value})
    r = await _post_without_accept_encoding(demo_client, body)
    assert r.status_code == 200 and "content-encoding" not in r.headers
    assert len(r.json()["result"]["text"]) == 4000


async def test_without_metadata_compression_nothing_is_compressed(
        demo_client: httpx.AsyncClient) -> None:
    r = await _post_without_accept_encoding(
        demo_client, envelope("rpc.v2/Echo/big", {"size": 4000}))
    assert r.status_code == 200 and "content-encoding" not in r.headers


async def test_rate_limit_partitioned_by_metadata_client_id() -> None:
    policy = RateLimitPolicy("per-client", "1/minute", methods=("rpc.v2/Limited/ping",),
                             key_by=("client_id",))
    app = build_stack(Services().dispatcher(), [
        Layer.of(ErrorMappingMiddleware), Layer.of(ContentNegotiationMiddleware),
        Layer.of(RateLimitMiddleware, policies=[policy])])

    def ping(client_id: str | None) -> dict[str, Any]:
        meta = {"client_id": client_id} if client_id is not None else {}
        return envelope("rpc.v2/Limited/ping", {}, metadata=meta)

    async with client_for(app) as client:
        codes = [(await client.post(RPC, json=ping(c))).status_code
                 for c in ("c1", "c2", "c1", None, None)]
    assert codes == [200, 200, 429, 200, 429]
