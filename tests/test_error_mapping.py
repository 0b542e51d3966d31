"""ErrorMappingMiddleware: around the dispatcher and around a plain Starlette app."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import ErrorMappingMiddleware
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio


async def test_crash_in_prod_hides_the_exception(
    prod_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="aduib_asgi"):
        r = await prod_client.post(RPC, json=envelope("rpc.v2/Echo/crash", id="c1"))
    assert r.status_code == 500
    body = r.json()
    assert body["error"]["code"] == 5000
    assert body["error"]["name"] == "INTERNAL_ERROR"
    assert body["id"] == "c1"
    assert "debug" not in body["error"]
    assert "boom-secret" not in r.text
    assert "RuntimeError" not in r.text
    # The traceback goes to the log instead.
    assert any(rec.exc_info and "boom-secret" in str(rec.exc_info[1]) for rec in caplog.records)


async def test_crash_in_dev_has_debug(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/crash"))
    assert r.status_code == 500
    debug = r.json()["error"]["debug"]
    assert "boom-secret" in debug["stack_trace"]
    assert "Traceback" in debug["stack_trace"]
    assert debug["internal_message"] == "RuntimeError: boom-secret"
    assert isinstance(debug["timestamp_ms"], int)


def _plain_app() -> Starlette:
    async def denied(request: Request) -> PlainTextResponse:
        raise RpcError(3011, "no entry", details=[{"type": "rbac", "reason": "role"}])

    async def boom(request: Request) -> PlainTextResponse:
        raise KeyError("hidden")

    async def fine(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello\n", headers={"x-custom": "1"})

    async def late(request: Request) -> StreamingResponse:
        async def gen():  # type: ignore[no-untyped-def]
            yield b"first"
            raise RpcError(5000, "late")

        return StreamingResponse(gen())

    return Starlette(routes=[Route("/denied", denied), Route("/boom", boom),
                             Route("/fine", fine), Route("/late", late)])


async def test_plain_starlette_app_error_becomes_envelope() -> None:
    async with client_for(ErrorMappingMiddleware(_plain_app())) as c:
        r = await c.get("/denied")
        boom = await c.get("/boom")
    assert r.status_code == 403
    body = r.json()
    assert body["status"] == "error"
    assert body["error"] == {"code": 3011, "name": "PERMISSION_DENIED", "message": "no entry",
                             "details": [{"type": "rbac", "reason": "role"}]}
    assert boom.status_code == 500
    assert boom.json()["error"]["code"] == 5000
    assert "hidden" not in boom.text


async def test_unrelated_route_is_untouched_byte_for_byte() -> None:
    async with client_for(_plain_app()) as bare, \
            client_for(ErrorMappingMiddleware(_plain_app())) as wrapped:
        a = await bare.get("/fine")
        b = await wrapped.get("/fine")
    assert a.status_code == b.status_code == 200
    assert a.content == b.content == b"hello\n"
    assert a.headers.raw == b.headers.raw


async def test_error_after_response_started_ends_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="aduib_asgi"):
        async with client_for(ErrorMappingMiddleware(_plain_app())) as c:
            r = await c.get("/late")
    assert r.status_code == 200
    assert r.content == b"first"
    assert any("after the response started" in rec.getMessage() for rec in caplog.records)
