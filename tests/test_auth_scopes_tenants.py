"""OAuth scopes (3012 INSUFFICIENT_SCOPE) and tenant-bound identities (3010 UNAUTHORIZED)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import jwt
import pytest

from aduib_asgi.auth import BearerAuthenticator, Identity, jwt_verifier
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, make_registry, rpc_app
from tests.stream_harness import WS, WsClient

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


def app(*, tenant: bool = True, tenants_claim: str | None = "tid", **auth: Any) -> Any:
    reg = registry()
    auth.setdefault("authenticators", [BearerAuthenticator(jwt_verifier(
        KEY, tenants_claim=tenants_claim))])
    layers = [Layer.of(TenantScopeMiddleware)] if tenant else []
    return rpc_app([*layers, Layer.of(AuthMiddleware, registry=reg, **auth)], reg)


# -- scopes --------------------------------------------------------------------------------


async def test_a_token_with_the_scopes_is_admitted() -> None:
    async with client_for(app(tenants_claim=None)) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/write"),
                         headers=token(scope="docs:read docs:write other"))
    assert r.status_code == 200 and r.json()["result"] == {"written": True}


async def test_a_missing_scope_is_403_3012_with_the_rfc6750_challenge() -> None:
    async with client_for(app(tenants_claim=None)) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/write"), headers=token(scope="docs:read"))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == 3012
    assert r.json()["error"]["name"] == "INSUFFICIENT_SCOPE"
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="docs:read docs:write"' in challenge


async def test_scopes_from_a_list_claim_scp() -> None:
    async with client_for(app(tenants_claim=None)) as c:
        ok = await c.post(RPC, json=call("rpc.v2/Doc/read"), headers=token(scp=["docs:read"]))
        no = await c.post(RPC, json=call("rpc.v2/Doc/read"), headers=token(scp=["other"]))
    assert ok.status_code == 200
    assert no.status_code == 403 and no.json()["error"]["code"] == 3012


async def test_no_credentials_on_a_scoped_method_is_401_3000() -> None:
    async with client_for(app(tenants_claim=None)) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/read"))
    assert r.status_code == 401 and r.json()["error"]["code"] == 3000
    assert "www-authenticate" in r.headers


async def test_scope_rules_by_pattern_for_methods_and_plain_paths() -> None:
    async with client_for(app(tenants_claim=None, scope_rules={"rpc.v2/T/*": ["t:use"]})) as c:
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


async def test_unbound_identities_and_anonymous_calls_are_unaffected() -> None:
    unbound = app(authenticators=[BearerAuthenticator(jwt_verifier(KEY))])  # no tenants_claim
    async with client_for(unbound) as c:
        free = await c.post(RPC, json=call("rpc.v2/T/echo"),
                            headers={**token(tid="acme"), "X-Tenant-ID": "globex"})
        anon = await c.post(RPC, json=call("rpc.v2/T/echo"), headers={"X-Tenant-ID": "globex"})
    assert free.status_code == 200
    assert anon.status_code == 200


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


# -- review findings: every path and every tenant source --------------------------------------


async def test_a_bound_identity_naming_no_tenant_is_checked_against_default() -> None:
    """No tenant named means the implicit ``default`` tenant: a bound identity may not use it."""
    async with client_for(app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token(tid="acme"))
        unbound_claim = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token())
    assert r.status_code == 403 and r.json()["error"]["code"] == 3010
    assert unbound_claim.status_code == 403 and unbound_claim.json()["error"]["code"] == 3010


async def test_every_named_tenant_must_be_allowed_without_the_tenant_layer() -> None:
    """Auth alone: envelope and header tenants are both checked (no mismatch bypass)."""
    async with client_for(app(tenant=False)) as c:
        mixed = await c.post(RPC, json=call("rpc.v2/T/echo", metadata={"tenant_id": "acme"}),
                             headers={**token(tid="acme"), "X-Tenant-ID": "globex"})
        padded = await c.post(RPC, json=call("rpc.v2/T/echo"),
                              headers={**token(tid="acme"), "X-Tenant-ID": "acme "})
    assert mixed.status_code == 403 and mixed.json()["error"]["code"] == 3010
    assert padded.status_code in (400, 403)


async def test_identity_fields_given_as_strings_are_split_not_substring_matched() -> None:
    ident = Identity("eve", roles="notadmin reader", scopes="notadmin read")  # type: ignore[arg-type]
    assert ident.roles == ("notadmin", "reader") and ident.scopes == ("notadmin", "read")
    reg = registry()

    async def admin(data: dict[str, Any]) -> dict[str, Any]:
        return {}

    reg.register("rpc.v2/Doc/admin", admin, scopes="admin")
    verify = {"tok": ident}.get
    stack = rpc_app([Layer.of(AuthMiddleware, registry=reg,
                              authenticators=[BearerAuthenticator(verify)])], reg)
    async with client_for(stack) as c:
        r = await c.post(RPC, json=call("rpc.v2/Doc/admin"),
                         headers={"Authorization": "Bearer tok"})
    assert r.status_code == 403 and r.json()["error"]["code"] == 3012


def test_scope_names_that_would_break_the_challenge_are_refused() -> None:
    reg = MethodRegistry()

    async def f(data: dict[str, Any]) -> None:
        return None

    for bad in ('a"b', "a\\b", "a\r\nX-Evil: 1", ""):
        with pytest.raises(ValueError):
            reg.register("rpc.v2/Bad/f", f, scopes=[bad])
    with pytest.raises(ValueError):
        AuthMiddleware(rpc_app([]), scope_rules={"rpc.v2/T/*": ['x"y']})


def test_tenant_must_be_outside_auth_in_a_stack() -> None:
    from aduib_asgi.stack import StackOrderError, check_order

    with pytest.raises(StackOrderError):
        check_order(["auth", "tenant"])


def ws_registry() -> MethodRegistry:
    reg = registry()

    async def count(data: dict[str, Any]) -> Any:
        for i in range(int(data.get("n", 2))):
            yield i

    reg.register("rpc.v2/W/count", count)
    return reg


@asynccontextmanager
async def ws_with(app: Any, headers: dict[str, str]) -> AsyncIterator[WsClient]:
    client = WsClient(app, WS, [])
    client.scope["headers"] += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        await client.accept()
        yield client
        tg.cancel_scope.cancel()


def ws_app(**auth: Any) -> Any:
    reg = ws_registry()
    auth.setdefault("authenticators", [BearerAuthenticator(jwt_verifier(KEY,
                                                                        tenants_claim="tid"))])
    return rpc_app([Layer.of(TenantScopeMiddleware),
                    Layer.of(AuthMiddleware, registry=reg, **auth)], reg)


async def test_websocket_methods_follow_the_scope_rules() -> None:
    stack = ws_app(scope_rules={"rpc.v2/W/*": ["w:use"]})
    hdrs = {"X-Tenant-ID": "acme"}
    with anyio.fail_after(10):
        async with ws_with(stack, {**token(tid="acme", scope="other"), **hdrs}) as ws:
            await ws.send_json(call("rpc.v2/W/count"))
            refused = await ws.rest()
        async with ws_with(stack, {**token(tid="acme", scope="w:use"), **hdrs}) as ws:
            await ws.send_json(call("rpc.v2/W/count"))
            allowed = await ws.rest()
    assert [f["type"] for f in refused] == ["error", "end"]
    assert refused[0]["payload"]["error"]["code"] == 3012
    assert [f["type"] for f in allowed][-1] == "end" and "error" not in [
        f["type"] for f in allowed]


async def test_a_websocket_message_cannot_switch_tenant() -> None:
    stack = ws_app(authenticators=[BearerAuthenticator(jwt_verifier(KEY))])  # not bound
    with anyio.fail_after(10):
        async with ws_with(stack, {**token(), "X-Tenant-ID": "acme"}) as ws:
            await ws.send_json(call("rpc.v2/W/count", metadata={"tenant_id": "globex"}))
            frames = await ws.rest()
    assert [f["type"] for f in frames] == ["error", "end"]
    assert frames[0]["payload"]["error"]["code"] == 2003


async def test_task_submit_follows_the_scope_rules_and_tasks_keep_the_scopes() -> None:
    from aduib_asgi.middleware.content import ContentNegotiationMiddleware
    from aduib_asgi.middleware.errors import ErrorMappingMiddleware
    from aduib_asgi.stack import build_stack
    from aduib_asgi.tasks import install_task_service
    from tests.test_tasks_support import lifespan

    reg = registry()
    seen: list[list[str]] = []

    async def job(data: dict[str, Any], ctx: Any) -> dict[str, Any]:
        seen.append(list(ctx.scopes))
        return {"ok": True}

    reg.register("rpc.v2/S/job", job)
    dispatcher = RpcDispatcher(reg)
    install_task_service(dispatcher)
    stack = build_stack(dispatcher, [
        Layer.of(ErrorMappingMiddleware), Layer.of(ContentNegotiationMiddleware),
        Layer.of(AuthMiddleware, registry=reg, scope_rules={"rpc.v2/S/*": ["s:use"]},
                 authenticators=[BearerAuthenticator(jwt_verifier(KEY))])])
    submit = "/aduib_rpc/v2/TaskService/Submit"
    async with lifespan(stack), client_for(stack) as c:
        refused = await c.post(submit, json={"target_method": "rpc.v2/S/job"},
                               headers=token(scope="other"))
        ok = await c.post(submit, json={"target_method": "rpc.v2/S/job"},
                          headers=token(scope="s:use extra"))
        assert ok.status_code == 200, ok.text
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == 3012
    assert seen == [["s:use", "extra"]]


# -- second review ------------------------------------------------------------------------------


async def test_a_bound_identity_may_open_a_websocket_without_a_tenant_header() -> None:
    """Browsers cannot set headers: the tenant is checked on the first message instead."""
    stack = ws_app()
    with anyio.fail_after(10):
        async with ws_with(stack, token(tid="acme")) as ws:
            await ws.send_json(call("rpc.v2/W/count", metadata={"tenant_id": "acme"}))
            ok = await ws.rest()
        async with ws_with(stack, token(tid="acme")) as ws:
            await ws.send_json(call("rpc.v2/W/count", metadata={"tenant_id": "globex"}))
            refused = await ws.rest()
    assert "error" not in [f["type"] for f in ok] and ok[-1]["type"] == "end"
    assert refused[0]["type"] == "error" and refused[0]["payload"]["error"]["code"] == 3010


def _task_stack(**auth: Any) -> tuple[Any, list[str]]:
    from aduib_asgi.middleware.content import ContentNegotiationMiddleware
    from aduib_asgi.middleware.errors import ErrorMappingMiddleware
    from aduib_asgi.stack import build_stack
    from aduib_asgi.tasks import install_task_service

    reg = registry()
    ran: list[str] = []

    async def job(data: dict[str, Any]) -> dict[str, Any]:
        ran.append("job")
        return {}

    async def only_users(data: dict[str, Any]) -> dict[str, Any]:
        ran.append("only_users")
        return {}

    reg.register("rpc.v2/S/job", job)
    reg.register("rpc.v2/U/only", only_users, roles=["user"])
    dispatcher = RpcDispatcher(reg)
    install_task_service(dispatcher)
    auth.setdefault("authenticators", [BearerAuthenticator(jwt_verifier(KEY))])
    return build_stack(dispatcher, [
        Layer.of(ErrorMappingMiddleware), Layer.of(ContentNegotiationMiddleware),
        Layer.of(AuthMiddleware, registry=reg, **auth)]), ran


async def test_task_targets_follow_require_auth_and_registration_precedence() -> None:
    from tests.test_tasks_support import lifespan

    submit = "/aduib_rpc/v2/TaskService/Submit"
    stack, _ = _task_stack(require_auth=True, anonymous_methods=["/aduib_rpc/v2/TaskService"],
                           rules={"rpc.v2/U/*": ["admin"]})
    async with lifespan(stack), client_for(stack) as c:
        anon = await c.post(submit, json={"target_method": "rpc.v2/S/job"})
        user = await c.post(submit, json={"target_method": "rpc.v2/U/only"},
                            headers=token(roles=["user"]))
        direct = await c.post(RPC, json=call("rpc.v2/U/only"), headers=token(roles=["user"]))
    assert anon.status_code == 401 and anon.json()["error"]["code"] == 3000
    assert direct.status_code == 200  # the registration's roles win over the pattern rule
    assert user.status_code == 200, user.text  # and so they do for a task target


async def test_late_denials_are_audited() -> None:
    from aduib_asgi.observability.audit import CollectingAuditSink
    from tests.test_tasks_support import lifespan

    audit = CollectingAuditSink()
    stack, _ = _task_stack(scope_rules={"rpc.v2/S/*": ["s:use"]}, audit=audit)
    async with lifespan(stack), client_for(stack) as c:
        r = await c.post("/aduib_rpc/v2/TaskService/Submit",
                         json={"target_method": "rpc.v2/S/job"}, headers=token(scope="x"))
    assert r.json()["error"]["code"] == 3012
    assert any(e.outcome == "deny" and e.code == 3012 for e in audit.events)


def _admin_rules_without_content_layer() -> Any:
    """errors → auth (rules: T/* needs admin) → dispatcher: the dispatcher parses envelopes."""
    from aduib_asgi.middleware.errors import ErrorMappingMiddleware
    from aduib_asgi.stack import build_stack

    reg = registry()
    return build_stack(RpcDispatcher(reg), [
        Layer.of(ErrorMappingMiddleware),
        Layer.of(AuthMiddleware, registry=reg, rules={"rpc.v2/T/*": ["admin"]},
                 authenticators=[BearerAuthenticator(jwt_verifier(KEY))])])


async def test_rules_apply_when_the_dispatcher_parses_the_envelope() -> None:
    """No content layer: the auth layer ran before the method was known."""
    stack = _admin_rules_without_content_layer()
    async with client_for(stack) as c:
        anon = await c.post(RPC, json=call("rpc.v2/T/echo"))
        user = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token(roles=["user"]))
        admin = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=token(roles=["admin"]))
    assert anon.status_code == 401 and anon.json()["error"]["code"] == 3000
    assert user.status_code == 403 and user.json()["error"]["code"] == 3011
    assert admin.status_code == 200


def test_role_names_are_free_text_and_identity_takes_any_iterable() -> None:
    reg = MethodRegistry()

    async def f(data: dict[str, Any]) -> None:
        return None

    reg.register("rpc.v2/R/f", f, roles=["Domain Admins", "café"])
    assert reg.get("rpc.v2/R/f").options["roles"] == ("Domain Admins", "café")  # type: ignore[union-attr]
    assert Identity("a", roles=frozenset({"admin"})).roles == ("admin",)  # type: ignore[arg-type]
    assert Identity("a", scopes=["x", "y"]).scopes == ("x", "y")  # type: ignore[arg-type]


async def test_rules_apply_on_the_v1_endpoint_too() -> None:
    stack = _admin_rules_without_content_layer()
    v1 = {"aduib_rpc": "1.0", "id": 1, "method": "rpc.v1/T/echo", "data": {}}
    async with client_for(stack) as c:
        anon = await c.post("/aduib_rpc/v1/rpc", json=v1)
        admin = await c.post("/aduib_rpc/v1/rpc", json=v1, headers=token(roles=["admin"]))
    assert anon.status_code == 401
    assert admin.status_code == 200


async def test_task_reads_follow_the_rules_for_methods_registered_elsewhere() -> None:
    """Query of a task whose method this instance does not know still applies the rules."""
    from functools import partial

    from aduib_asgi.auth.rbac import AUTHORIZE_KEY
    from aduib_asgi.context import RequestContext
    from aduib_asgi.errors import RpcError
    from aduib_asgi.models import TaskRecord, TaskStatus
    from aduib_asgi.tasks import TaskManager
    from aduib_asgi.tasks.store import TaskEntry

    manager = TaskManager(MethodRegistry())
    entry = TaskEntry(record=TaskRecord(task_id="t1", target_method="rpc.v2/Else/where",
                                        status=TaskStatus.SUCCEEDED, tenant_id="default",
                                        created_at_ms=0))
    await manager.store.create(entry)
    mw = AuthMiddleware(rpc_app([]), rules={"rpc.v2/Else/*": ["admin"]},
                        authenticators=[BearerAuthenticator(jwt_verifier(KEY))])
    anonymous = RequestContext()
    anonymous.extras[AUTHORIZE_KEY] = partial(mw._authorize, None, None)
    with pytest.raises(RpcError) as refused:
        await manager.get("t1", anonymous)
    assert refused.value.code == 3000
    admin = RequestContext()
    admin.extras[AUTHORIZE_KEY] = partial(mw._authorize, Identity("root", roles=("admin",)), None)
    assert (await manager.get("t1", admin)).task_id == "t1"
