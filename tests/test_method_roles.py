"""A method registered with roles=[...] refuses callers without them, auth layer or not."""

from __future__ import annotations

from typing import Any

import pytest

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ErrorMappingMiddleware
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio


def _registry() -> MethodRegistry:
    reg = MethodRegistry()

    async def secret(data: dict[str, Any]) -> dict[str, Any]:
        return {"secret": "ok"}

    async def feed(data: dict[str, Any]):  # type: ignore[no-untyped-def]
        yield {"i": 1}

    reg.register("rpc.v2/Admin/secret", secret, roles=["admin"])
    reg.register("rpc.v2/Admin/feed", feed, roles=["admin"])
    return reg


class _Identity:
    """A stand-in for an auth layer: sets principal and roles on the context."""

    def __init__(self, app: Any, *, principal: str | None, roles: tuple[str, ...]) -> None:
        self.app, self.principal, self.roles = app, principal, roles

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        ctx = RequestContext(raw_headers=scope["headers"])
        ctx.principal, ctx.roles = self.principal, self.roles
        scope["aduib.context"] = ctx
        await self.app(scope, receive, send)


@pytest.mark.parametrize("path", [RPC, RPC + "/stream"])
async def test_anonymous_caller_gets_3000_without_the_auth_layer(path: str) -> None:
    app = ErrorMappingMiddleware(RpcDispatcher(_registry()))
    method = "rpc.v2/Admin/secret" if path == RPC else "rpc.v2/Admin/feed"
    async with client_for(app) as c:
        r = await c.post(path, json=envelope(method))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == 3000
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_caller_without_the_role_gets_3011_and_with_it_succeeds() -> None:
    user = _Identity(RpcDispatcher(_registry()), principal="alice", roles=("user",))
    admin = _Identity(RpcDispatcher(_registry()), principal="root", roles=("admin",))
    async with client_for(user) as c:
        denied = await c.post(RPC, json=envelope("rpc.v2/Admin/secret"))
    async with client_for(admin) as c:
        ok = await c.post(RPC, json=envelope("rpc.v2/Admin/secret"))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == 3011
    assert ok.status_code == 200
    assert ok.json()["result"] == {"secret": "ok"}
