"""A WebSocket refused before the handshake: an HTTP error where the server can send one.

With the ASGI ``websocket.http.response`` extension (uvicorn, Starlette's test
client) the refusal is the table's HTTP status with the full error envelope and
the layer's headers; without it, a close with the layer's close code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from aduib_asgi.auth import BearerAuthenticator, Identity
from aduib_asgi.middleware.admission import AdmissionMiddleware
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware
from aduib_asgi.qos import ShutdownController

pytestmark = pytest.mark.anyio

DENIAL = {"websocket.http.response": {}}


async def echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def ws_app() -> Starlette:
    return Starlette(routes=[WebSocketRoute("/ws", echo_ws)])


def layers() -> dict[str, tuple[Any, dict[str, str], int, int, int]]:
    """name: (app, headers that get refused, HTTP status, error code, close code)."""
    draining = ShutdownController()
    draining.start_draining()

    def verify(token: str) -> Identity | None:
        return Identity("alice") if token == "good" else None

    return {
        "auth": (AuthMiddleware(ws_app(), require_auth=True,
                                authenticators=[BearerAuthenticator(verify)]),
                 {"authorization": "Bearer wrong"}, 401, 3001, 1008),
        "tenant": (TenantScopeMiddleware(ws_app()), {"x-tenant-id": "bad tenant!"},
                   400, 2003, 1008),
        "version": (VersionNegotiationMiddleware(ws_app()), {"aduib-rpc-version": "9.0"},
                    400, 1001, 1008),
        "ratelimit": (RateLimitMiddleware(ws_app(), policies=[
            RateLimitPolicy("ws", "1/minute", paths=("/ws",))]),
            {}, 429, 5020, 1008),
        "admission": (AdmissionMiddleware(ws_app(), shutdown=draining), {}, 503, 5002, 1012),
    }


async def connect(app: Any, headers: dict[str, str], *,
                  extensions: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One WebSocket handshake through ``app``; the messages it sent back."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1000} if sent else \
            {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "ws",
             "subprotocols": [], "root_path": "", "asgi": {"version": "3.0"}}
    if extensions is not None:
        scope["extensions"] = extensions
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("name", ["auth", "tenant", "version", "ratelimit", "admission"])
async def test_refusal_is_an_http_error_envelope_with_the_extension(name: str) -> None:
    app, headers, status, code, _ = layers()[name]
    if name == "ratelimit":  # the first connection uses the quota
        first = await connect(app, {}, extensions=DENIAL)
        assert first[0]["type"] == "websocket.accept"
    sent = await connect(app, headers, extensions=DENIAL)
    assert [m["type"] for m in sent] == ["websocket.http.response.start",
                                         "websocket.http.response.body"]
    assert sent[0]["status"] == status
    got = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    assert got["content-type"] == "application/json"
    assert int(got["content-length"]) == len(sent[1]["body"])
    body = json.loads(sent[1]["body"])
    assert body["status"] == "error" and body["error"]["code"] == code
    assert body["aduib_rpc"] == "2.0" and body["id"]
    if name == "auth":
        assert got["www-authenticate"].startswith("Bearer")
    if name == "ratelimit":
        assert int(got["retry-after"]) >= 1
        assert got["ratelimit"].startswith('"ws";r=0;t=')
    if name == "admission":
        assert got["retry-after"] == "1"


@pytest.mark.parametrize("name", ["auth", "tenant", "version", "ratelimit", "admission"])
async def test_refusal_is_a_close_without_the_extension(name: str) -> None:
    app, headers, _, _, close_code = layers()[name]
    if name == "ratelimit":
        first = await connect(app, {}, extensions=None)
        assert first[0]["type"] == "websocket.accept"
    sent = await connect(app, headers, extensions=None)
    assert len(sent) == 1
    assert sent[0]["type"] == "websocket.close" and sent[0]["code"] == close_code


def test_the_demo_over_uvicorn_refuses_a_bad_token_with_401_and_the_envelope() -> None:
    """A real client against the real server: the handshake fails with 401 and code 3001."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    from tests.demo_process import running_demo

    with running_demo() as demo:
        url = demo.url.replace("http://", "ws://") + "/aduib_rpc/v2/rpc/ws"
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, additional_headers={"Authorization": "Bearer nope"},
                       open_timeout=10)
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(response.body)["error"]["code"] == 3001
        with ws_connect(url, additional_headers={"Authorization": "Bearer demo-user-token"},
                        open_timeout=10):
            pass  # the right token is accepted
        demo.stop()
    output = demo.output
    # uvicorn's sansio WebSocket protocol logs a refused handshake as an app error;
    # the demo filters that line for handshakes the stack refused on purpose
    assert "without completing handshake" not in output, output
    assert "ERROR" not in output, output


async def test_denials_and_closes_are_counted_with_their_status_and_code() -> None:
    """Metrics/spans see a refused handshake's status; the close fallback records the code."""
    from aduib_asgi.context import CONTEXT_KEY, RequestContext
    from aduib_asgi.middleware.metrics import StatusResponder

    app, headers, status, code, _ = layers()["tenant"]
    seen: dict[str, Any] = {}

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        ctx = RequestContext(raw_headers=scope["headers"])
        scope[CONTEXT_KEY] = ctx
        responder = StatusResponder(send)
        await app(scope, receive, responder)
        seen["status"] = responder.status
        seen["code"] = ctx.extras.get("aduib.error_code")

    await connect(outer, headers, extensions=DENIAL)
    assert seen == {"status": status, "code": code}
    await connect(outer, headers, extensions=None)
    assert seen["code"] == code


async def test_a_crash_before_accept_is_a_500_envelope_with_the_extension() -> None:
    from aduib_asgi.middleware.errors import ErrorMappingMiddleware

    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def crashing_after_accept(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        raise RuntimeError("boom")

    sent = await connect(ErrorMappingMiddleware(crashing), {}, extensions=DENIAL)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["code"] == 5000
    closed = await connect(ErrorMappingMiddleware(crashing), {}, extensions=None)
    assert closed == [{"type": "websocket.close", "code": 1011, "reason": "internal error"}]
    after = await connect(ErrorMappingMiddleware(crashing_after_accept), {}, extensions=DENIAL)
    assert [m["type"] for m in after] == ["websocket.accept", "websocket.close"]
    assert after[1]["code"] == 1011
