"""The README's code runs as written, and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(index: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(_blocks()[index], f"README block {index}", "exec"), namespace)
    return namespace


def test_readme_has_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text


async def test_plain_starlette_composition() -> None:
    app = _run(0)["app"]
    async with client_for(app) as c:
        ok = await c.get("/orders", headers={"X-Tenant-ID": "acme",
                                             "traceparent": "00-0af7651916cd43dd8448eb211c80319c-"
                                                            "b7ad6b7169203331-01"})
        denied = await c.get("/orders?fail=1")
        bad_tenant = await c.get("/orders", headers={"X-Tenant-ID": "no spaces"})
        first = await c.post("/orders", headers={"Idempotency-Key": '"k1"'})
        again = await c.post("/orders", headers={"Idempotency-Key": '"k1"'})
    assert ok.status_code == 200
    assert ok.json() == {"orders": [], "tenant": "acme"}
    assert "ratelimit" in ok.headers
    assert ok.headers["traceresponse"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == 3011
    assert bad_tenant.status_code == 400
    assert bad_tenant.json()["error"]["code"] == 2003
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == first.content


async def test_rpc_example() -> None:
    app = _run(1)["app"]
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {"a": 1}))
    assert r.json()["result"] == {"a": 1}
