"""FastAPI and Starlette HTTP errors become the standard envelope with the same
status when the error layer is in front; docs/fastapi.md's example runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from aduib_asgi.middleware import ErrorMappingMiddleware
from tests.conftest import client_for

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parent.parent / "docs" / "fastapi.md"


def _doc_namespace() -> dict[str, Any]:
    (source,) = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    namespace: dict[str, Any] = {"__name__": "fastapi_doc"}
    exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("which", ["app", "stacked"])
async def test_the_documented_fastapi_app_answers_envelopes(which: str) -> None:
    app = _doc_namespace()[which]
    async with client_for(app) as c:
        created = await c.post("/orders", json={"item": "tea", "quantity": 2},
                               headers={"X-Tenant-ID": "acme"})
        found = await c.get("/orders/1")
        missing = await c.get("/orders/7")
        conflict = await c.post("/orders", json={"item": "tea", "quantity": 1})
        invalid = await c.post("/orders", json={"item": "tea", "quantity": "lots",
                                                "secret": "do-not-echo"})
        bad_path = await c.get("/orders/abc")
        no_route = await c.get("/nowhere")
        wrong_method = await c.delete("/orders")
        bad_tenant = await c.get("/orders/1", headers={"X-Tenant-ID": "no spaces"})
    assert created.status_code == 200 and created.json() == {"id": 1}
    assert found.status_code == 200 and found.json() == {"item": "tea", "quantity": 2}
    assert "ratelimit" in found.headers  # the rate-limit layer is in the stack
    err = missing.json()
    assert missing.status_code == 404 and err["aduib_rpc"] == "2.0"
    assert err["error"] == {"code": 4000, "name": "NOT_FOUND", "message": "no order 7"}
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == 4011
    assert invalid.status_code == 422
    e = invalid.json()["error"]
    assert e["code"] == 2001 and e["name"] == "INVALID_PARAMS"
    assert [d["field"] for d in e["details"]] == ["body.quantity"]
    assert "lots" not in invalid.text and "do-not-echo" not in invalid.text
    assert bad_path.status_code == 422
    assert bad_path.json()["error"]["details"][0]["field"] == "path.order_id"
    assert no_route.status_code == 404 and no_route.json()["error"]["code"] == 4000
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == 2000
    assert "POST" in wrong_method.headers["allow"]
    assert bad_tenant.status_code == 400 and bad_tenant.json()["error"]["code"] == 2003


def _starlette(map_http_errors: bool = True) -> Any:
    async def teapot(request: Request) -> PlainTextResponse:
        raise HTTPException(418, "short and stout", headers={"X-Why": "tea"})

    async def down(request: Request) -> PlainTextResponse:
        raise HTTPException(503, "db at 10.0.0.7 refused", headers={"Retry-After": "5"})

    async def locked(request: Request) -> PlainTextResponse:
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer realm="x"'})

    async def own_json(request: Request) -> JSONResponse:
        return JSONResponse({"problem": "own format"}, status_code=400)

    app = Starlette(routes=[Route("/teapot", teapot), Route("/down", down),
                            Route("/locked", locked), Route("/own", own_json)])
    return ErrorMappingMiddleware(app, map_http_errors=map_http_errors)


async def test_starlette_http_exceptions_keep_their_status_and_headers() -> None:
    async with client_for(_starlette()) as c:
        teapot = await c.get("/teapot")
        down = await c.get("/down")
        locked = await c.get("/locked")
        own = await c.get("/own")
        missing = await c.get("/missing")
    assert teapot.status_code == 418 and teapot.headers["x-why"] == "tea"
    assert teapot.json()["error"] == {"code": 2000, "name": "BAD_REQUEST",
                                      "message": "short and stout"}
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert down.json()["error"]["code"] == 5002
    assert "10.0.0.7" not in down.text  # a 5xx never carries the internal text
    assert locked.status_code == 401 and locked.json()["error"]["code"] == 3000
    assert locked.headers["www-authenticate"] == 'Bearer realm="x"'
    assert own.status_code == 400 and own.json() == {"problem": "own format"}  # untouched
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 4000


async def test_mapping_can_be_turned_off() -> None:
    async with client_for(_starlette(map_http_errors=False)) as c:
        teapot = await c.get("/teapot")
    assert teapot.status_code == 418 and teapot.text == "short and stout"
