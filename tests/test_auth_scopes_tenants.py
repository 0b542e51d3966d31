"""OAuth scopes (3012 INSUFFICIENT_SCOPE) and tenant-bound identities (3010 UNAUTHORIZED)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from aduib_asgi.auth import BearerAuthenticator, Identity, jwt_verifier
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, make_registry, rpc_app

pytestmark = pytest.mark.anyio

KEY = "k" * 32


def token(sub: str = "carol", **claims: Any) -> dict[str, str]:
    body = {"sub": sub, "exp": int(time.time()) + 60, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, KEY, algorithm="HS256")}


def registry() -> MethodRegistry:
    r = make_registry()

    async def read(data: dict[str, Any]) -> dict[str, Any]:
        return {"read": True}

    async def write(data: dict[str, Any]) -> dict[str, Any]:
        return {"written": True}

    r.register("rpc.v2/Doc/read", read, scopes=["docs:read"])
    r.register("rpc.v2/Doc/write", write, scopes=["docs:read", "docs:write"])
    return r


def app(*, tenant: bool = True, **auth: Any) -> Any:
    reg = registry()
    auth.setdefault("authenticators", [BearerAuthenticator(jwt_verifier(KEY,
                                                                        tenants_claim="tid"))])
    layers = [Layer.of(TenantScopeMiddleware)] if tenant else []
    return rpc_app([*layers, Layer.of(AuthMiddleware, registry=reg, **auth)], reg)


# -- scopes --------------------------------------------------------------------------------


async def test_a_token_with_the_scopes_is_admitted() -> None:
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/write"),
                         headers=token(scope="docs:read docs:write other"))
    assert r.status_code == 200 and r.json()["result"] == {"written": True}


async def test_a_missing_scope_is_403_3012_with_the_rfc6750_challenge() -> None:
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/write"), headers=token(scope="docs:read"))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == 3012
    assert r.json()["error"]["name"] == "INSUFFICIENT_SCOPE"
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="docs:read docs:write"' in challenge


async def test_scopes_from_a_list_claim_scp() -> None:
    async with client_for(app()) as c:
        ok = await c.post(RPC, json=call("rpc.v2/Doc/read"), headers=token(scp=["docs:read"]))
        no = await c.post(RPC, json=call("rpc.v2/Doc/read"), headers=token(scp=["other"]))
    assert ok.status_code == 200
    assert no.status_code == 403 and no.json()["error"]["code"] == 3012


async def test_no_credentials_on_a_scoped_method_is_401_3000() -> None:
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/read"))
    assert r.status_code == 401 and r.json()["error"]["code"] == 3000
    assert "www-authenticate" in r.headers


async def test_scope_rules_by_pattern_for_methods_and_plain_paths() -> None:
    async with client_for(app(scope_rules={"rpc.v2/T/*": ["t:use"]})) as c:
        no = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token(scope="docs:read"))
        ok = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token(scope="t:use"))
    assert no.status_code == 403 and no.json()["error"]["code"] == 3012
    assert ok.status_code == 200


async def test_handler_sees_the_granted_scopes() -> None:
    reg = registry()

    async def whoami(data: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"scopes": list(ctx.scopes)}

    reg.register("rpc.v2/Doc/whoami", whoami)
    verify = jwt_verifier(KEY)
    stack = rpc_app([Layer.of(AuthMiddleware, registry=reg,
                              authenticators=[BearerAuthenticator(verify)])], reg)
    async with client_for(stack) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/whoami"), headers=token(scope="a b"))
    assert r.json()["result"] == {"scopes": ["a", "b"]}


async def test_scopes_hold_without_the_auth_layer() -> None:
    """Like roles, a ``scopes=[...]`` registration is enforced where the method resolves."""
    reg = registry()
    dispatcher = RpcDispatcher(reg)
    async with client_for(dispatcher) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/read"))
    assert r.status_code == 401 and r.json()["error"]["code"] == 3000


# -- tenant-bound identities -----------------------------------------------------------------


async def test_an_identity_bound_to_tenants_may_use_them() -> None:
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"),
                         headers={**token(tid=["acme", "beta"]), "X-Tenant-ID": "beta"})
    assert r.status_code == 200 and r.json()["result"]["tenant_id"] == "beta"


async def test_another_tenant_is_403_3010() -> None:
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"),
                         headers={**token(tid="acme"), "X-Tenant-ID": "globex"})
    assert r.status_code == 403
    body = r.json()
    assert body["error"]["code"] == 3010 and body["error"]["name"] == "UNAUTHORIZED"
    assert "globex" in body["error"]["message"]


async def test_the_envelope_tenant_is_checked_too() -> None:
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context",
                                        metadata={"tenant_id": "globex"}),
                         headers=token(tid="acme"))
    assert r.status_code == 403 and r.json()["error"]["code"] == 3010


async def test_tenant_binding_holds_without_the_tenant_layer() -> None:
    """Auth alone reads the requested tenant from the header."""
    async with client_for(app(tenant=False)) as c:
        no = await c.post(RPC, json=call("rpc.v2/T/echo"),
                          headers={**token(tid="acme"), "X-Tenant-ID": "globex"})
        ok = await c.post(RPC, json=call("rpc.v2/T/echo"),
                          headers={**token(tid="acme"), "X-Tenant-ID": "acme"})
    assert no.status_code == 403 and no.json()["error"]["code"] == 3010
    assert ok.status_code == 200


async def test_unbound_identities_and_requests_without_a_tenant_are_unaffected() -> None:
    unbound = app(authenticators=[BearerAuthenticator(jwt_verifier(KEY))])  # no tenants_claim
    async with client_for(unbound) as c:
        free = await c.post(RPC, json=call("rpc.v2/T/echo"),
                            headers={**token(tid="acme"), "X-Tenant-ID": "globex"})
    async with client_for(app()) as c:
        none = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token(tid="acme"))
    assert free.status_code == 200
    assert none.status_code == 200


async def test_a_token_without_the_tenants_claim_is_bound_to_no_tenant() -> None:
    """With ``tenants_claim`` configured a token lacking it fails closed."""
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"),
                         headers={**token(), "X-Tenant-ID": "acme"})
    assert r.status_code == 403 and r.json()["error"]["code"] == 3010


async def test_identity_objects_carry_scopes_and_tenants() -> None:
    ident = {"tok": Identity("dave", roles=("user",), scopes=("docs:read",),
                             tenants=("acme",))}

    def verify(t: str) -> Identity | None:
        return ident.get(t)

    stack = app(authenticators=[BearerAuthenticator(verify)])
    async with client_for(stack) as c:
        read = await c.post(RPC, json=call("rpc.v2/Doc/read"),
                            headers={"Authorization": "Bearer tok", "X-Tenant-ID": "acme"})
        other = await c.post(RPC, json=call("rpc.v2/Doc/read"),
                             headers={"Authorization": "Bearer tok", "X-Tenant-ID": "zeta"})
    assert read.status_code == 200
    assert other.status_code == 403 and other.json()["error"]["code"] == 3010
