"""AuthMiddleware through the real stack: authenticators, RBAC, audit, mTLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import httpx
import jwt
import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from aduib_asgi.auth import (
    BearerAuthenticator,
    Identity,
    MtlsAuthenticator,
    jwt_verifier,
)
from aduib_asgi.auth.tls import TlsExtensionApp, tls_protocol
from aduib_asgi.demo.security import demo_auth_options
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.observability.audit import CollectingAuditSink
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for
from tests.obs_helpers import call, make_registry, rpc_app

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer demo-admin-token"}
USER = {"Authorization": "Bearer demo-user-token"}


def _app(audit: CollectingAuditSink | None = None, **kw: Any) -> Any:
    registry = make_registry()
    opts = {**demo_auth_options(registry), **kw}
    if audit is not None:
        opts["audit"] = audit
    return rpc_app([Layer.of(AuthMiddleware, **opts)], registry)


def _auth_meta(scheme: str, credentials: str | None = None, **more: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {"scheme": scheme, **more}
    if credentials is not None:
        auth["credentials"] = credentials
    return {"metadata": {"auth": auth}}


async def test_anonymous_allowed_on_open_methods() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"))
    assert r.status_code == 200
    assert (r.json()["result"]["principal"], r.json()["result"]["roles"]) == (None, [])


async def test_bearer_principal_and_roles_reach_handler() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers=USER)
        s = await c.post(RPC, json=call("rpc.v2/Admin/secret"), headers=ADMIN)
    assert (r.json()["result"]["principal"], r.json()["result"]["roles"]) == ("alice", ["user"])
    assert s.status_code == 200 and s.json()["result"] == {"secret": "ok"}


async def test_admin_secret_without_credentials_is_3000_with_challenge() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/Admin/secret", id="a1"))
    assert r.status_code == 401
    body = r.json()
    assert body["error"]["code"] == 3000 and body["id"] == "a1" and body["status"] == "error"
    assert r.headers["www-authenticate"].startswith('Bearer realm="aduib_rpc"')
    assert "ApiKey" in r.headers["www-authenticate"]


async def test_admin_secret_with_user_role_is_3011() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/Admin/secret"), headers=USER)
        k = await c.post(RPC, json=call("rpc.v2/Admin/secret"), headers={"X-API-Key": "demo-key"})
    assert r.status_code == 403 and r.json()["error"]["code"] == 3011
    assert k.status_code == 403 and "www-authenticate" not in k.headers


async def test_unknown_bearer_token_is_3001() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == 3001
    assert r.headers["www-authenticate"] == 'Bearer realm="aduib_rpc", error="invalid_token"'


async def test_non_bearer_authorization_is_3000() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"),
                         headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and r.json()["error"]["code"] == 3000


async def test_api_key() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"X-API-Key": "demo-key"})
        bad = await c.post(RPC, json=call("rpc.v2/T/context"), headers={"X-API-Key": "wrong"})
    assert (r.json()["result"]["principal"], r.json()["result"]["roles"]) == ("svc", ["service"])
    assert bad.status_code == 401 and bad.json()["error"]["code"] == 3001
    assert bad.headers["www-authenticate"].startswith("ApiKey")


async def test_envelope_credentials_and_asserted_roles_not_trusted() -> None:
    async with client_for(_app()) as c:
        ok = await c.post(RPC, json=call("rpc.v2/Admin/secret",
                                         **_auth_meta("bearer", "demo-admin-token")))
        forged = await c.post(RPC, json=call(
            "rpc.v2/Admin/secret",
            **_auth_meta("bearer", "demo-user-token", principal="admin", roles=["admin"])))
        forged_anon = await c.post(RPC, json=call(
            "rpc.v2/Admin/secret", metadata={"auth": {"principal": "admin", "roles": ["admin"]}}))
        key = await c.post(RPC, json=call("rpc.v2/T/context", **_auth_meta("api_key", "demo-key")))
    assert ok.status_code == 200
    assert forged.status_code == 403 and forged.json()["error"]["code"] == 3011
    assert forged_anon.status_code == 401
    assert key.json()["result"]["principal"] == "svc"


async def test_mtls_scheme_without_client_certificate_is_3000() -> None:
    async with client_for(_app()) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo", **_auth_meta("mtls")))
    assert r.status_code == 401 and r.json()["error"]["code"] == 3000


def _tls_ext(cert: trustme.LeafCert) -> dict[str, Any]:
    return {"client_cert_chain": [cert.cert_chain_pems[0].bytes().decode()],
            "client_cert_name": "CN=ignored", "client_cert_error": None,
            "server_cert": None, "tls_version": 0x0304, "cipher_suite": None}


async def test_mtls_principal_from_verified_certificate() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("alice.example", common_name="alice")
    registry = make_registry()
    auth = Layer.of(AuthMiddleware, registry=registry, authenticators=[
        MtlsAuthenticator(roles={"alice.example": ["admin"]})])
    app = TlsExtensionApp(rpc_app([auth], registry), _tls_ext(cert))
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/context"))
        env = await c.post(RPC, json=call("rpc.v2/Admin/secret", **_auth_meta("mtls")))
    # no SAN URI: the principal is the first SAN DNS name (not the CN)
    assert (r.json()["result"]["principal"], r.json()["result"]["roles"]) == (
        "alice.example", ["admin"])
    assert env.status_code == 200
    failed = {**_tls_ext(cert), "client_cert_error": "unable to verify"}
    app2 = TlsExtensionApp(rpc_app([auth], registry), failed)
    async with client_for(app2) as c:
        r2 = await c.post(RPC, json=call("rpc.v2/T/echo", **_auth_meta("mtls")))
    assert r2.status_code == 401 and r2.json()["error"]["code"] == 3000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_mtls_over_real_uvicorn_with_tls_protocol_hook() -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("client.example", common_name="bob")

    async def who(request: Request) -> JSONResponse:
        ctx = request.scope["aduib.context"]
        return JSONResponse({"principal": ctx.principal, "scheme": ctx.auth_scheme})

    app = AuthMiddleware(Starlette(routes=[Route("/who", who)]),
                         authenticators=[MtlsAuthenticator()], require_auth=True)
    port = _free_port()
    with server_cert.private_key_and_cert_chain_pem.tempfile() as pem, \
            ca.cert_pem.tempfile() as ca_file:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", http=tls_protocol(H11Protocol),
                                ssl_certfile=pem, ssl_ca_certs=ca_file,
                                ssl_cert_reqs=ssl.CERT_OPTIONAL)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            deadline = time.monotonic() + 10
            while not server.started and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert server.started
            with_cert = ssl.create_default_context()
            ca.configure_trust(with_cert)
            client_cert.configure_cert(with_cert)
            without = ssl.create_default_context()
            ca.configure_trust(without)
            url = f"https://127.0.0.1:{port}/who"
            async with httpx.AsyncClient(verify=with_cert) as c:
                r = await c.get(url)
            async with httpx.AsyncClient(verify=without) as c:
                anon = await c.get(url)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
    assert r.status_code == 200 and r.json() == {"principal": "client.example",
                                                 "scheme": "mtls"}
    assert anon.status_code == 401 and anon.json()["error"]["code"] == 3000


async def test_require_auth_with_anonymous_allowlist() -> None:
    app = _app(require_auth=True, anonymous_methods=["rpc.v2/T/echo"])
    async with client_for(app) as c:
        denied = await c.post(RPC, json=call("rpc.v2/T/context"))
        allowed = await c.post(RPC, json=call("rpc.v2/T/echo", {"a": 1}))
        authed = await c.post(RPC, json=call("rpc.v2/T/context"), headers=USER)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == 3000
    assert allowed.status_code == 200
    assert authed.status_code == 200


async def test_rules_config_by_service_and_method() -> None:
    app = _app(rules={"rpc.v2/T/*": ["ops", "admin"], "rpc.v2/T/echo": ["user"]})
    async with client_for(app) as c:
        ctx_user = await c.post(RPC, json=call("rpc.v2/T/context"), headers=USER)
        ctx_admin = await c.post(RPC, json=call("rpc.v2/T/context"), headers=ADMIN)
        echo_user = await c.post(RPC, json=call("rpc.v2/T/echo"), headers=USER)
        anon = await c.post(RPC, json=call("rpc.v2/T/echo"))
    assert ctx_user.status_code == 403 and ctx_user.json()["error"]["code"] == 3011
    assert ctx_admin.status_code == 200
    assert echo_user.status_code == 200
    assert anon.status_code == 401


async def test_bad_rule_pattern_rejected_at_build_time() -> None:
    with pytest.raises(ValueError):
        AuthMiddleware(Starlette(), rules={"Admin": ["admin"]})


async def test_jwt_verifier_valid_expired_invalid() -> None:
    key = "k" * 32
    verify = jwt_verifier(key, audience="aduib")
    app = _app(authenticators=[BearerAuthenticator(verify)])
    good = jwt.encode({"sub": "carol", "roles": ["admin"], "aud": "aduib",
                       "exp": int(time.time()) + 60}, key, algorithm="HS256")
    expired = jwt.encode({"sub": "carol", "aud": "aduib", "exp": int(time.time()) - 60},
                         key, algorithm="HS256")
    forged = jwt.encode({"sub": "carol", "aud": "aduib"}, "x" * 32, algorithm="HS256")
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/Admin/secret"),
                         headers={"Authorization": f"Bearer {good}"})
        e = await c.post(RPC, json=call("rpc.v2/T/echo"),
                         headers={"Authorization": f"Bearer {expired}"})
        f = await c.post(RPC, json=call("rpc.v2/T/echo"),
                         headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 200
    assert e.status_code == 401 and e.json()["error"]["code"] == 3002
    assert 'error_description="token expired"' in e.headers["www-authenticate"]
    assert f.status_code == 401 and f.json()["error"]["code"] == 3001


async def test_async_verifier_and_failing_verifier() -> None:
    async def verify(token: str) -> Identity | None:
        if token == "boom":
            raise ValueError(f"backend rejected {token}")
        return Identity("async-user", ("user",)) if token == "ok" else None

    app = _app(authenticators=[BearerAuthenticator(verify)])
    async with client_for(app) as c:
        ok = await c.post(RPC, json=call("rpc.v2/T/context"),
                          headers={"Authorization": "Bearer ok"})
        boom = await c.post(RPC, json=call("rpc.v2/T/echo"),
                            headers={"Authorization": "Bearer boom"})
    assert ok.json()["result"]["principal"] == "async-user"
    assert boom.status_code == 401 and boom.json()["error"]["code"] == 3001
    assert "boom" not in boom.text


async def test_scheme_without_authenticator_is_3000() -> None:
    app = _app(authenticators=[BearerAuthenticator(lambda t: None)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"), headers={"X-API-Key": "demo-key"})
        e = await c.post(RPC, json=call("rpc.v2/T/echo", **_auth_meta("api_key", "demo-key")))
    assert r.status_code == 200  # no API-key authenticator: the header is not a credential
    assert e.status_code == 401 and e.json()["error"]["code"] == 3000


async def test_audit_events_for_decisions() -> None:
    sink = CollectingAuditSink()
    async with client_for(_app(audit=sink)) as c:
        await c.post(RPC, json=call("rpc.v2/T/echo", id="open"))
        await c.post(RPC, json=call("rpc.v2/Admin/secret", id="ok"), headers=ADMIN)
        await c.post(RPC, json=call("rpc.v2/Admin/secret", id="no"), headers=USER)
        await c.post(RPC, json=call("rpc.v2/T/echo", id="bad"),
                     headers={"Authorization": "Bearer demo-nope"})
    events = {e.request_id: e for e in sink.events}
    assert set(events) == {"ok", "no", "bad"}  # anonymous calls to open methods: no decision
    assert (events["ok"].outcome, events["ok"].code, events["ok"].principal) == (
        "allow", 0, "admin")
    assert (events["no"].outcome, events["no"].code, events["no"].principal) == (
        "deny", 3011, "alice")
    assert (events["bad"].outcome, events["bad"].code, events["bad"].scheme) == (
        "deny", 3001, "bearer")
    assert events["no"].method == "rpc.v2/Admin/secret"
    assert all("demo-" not in repr(e) for e in sink.events)


async def test_works_alone_around_plain_app_with_path_rules() -> None:
    async def view(request: Request) -> JSONResponse:
        ctx = request.scope["aduib.context"]
        return JSONResponse({"principal": ctx.principal})

    app = AuthMiddleware(
        Starlette(routes=[Route("/admin/x", view), Route("/open", view)]),
        authenticators=[BearerAuthenticator(lambda t: Identity("u", ("user",)) if t == "u"
                                            else None)],
        rules={"/admin": ["admin"]},
    )
    async with client_for(app) as c:
        open_ = await c.get("/open", headers={"Authorization": "Bearer u"})
        admin = await c.get("/admin/x", headers={"Authorization": "Bearer u"})
        anon = await c.get("/admin/x")
    assert open_.json() == {"principal": "u"}
    assert admin.status_code == 403 and admin.json()["error"]["code"] == 3011
    assert anon.status_code == 401 and "www-authenticate" in anon.headers


async def test_a_short_secret_does_not_mangle_the_error_message() -> None:
    """Scrubbing removes the secret where it appears as itself, not inside our own words."""
    app = _app()
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo", **_auth_meta("bearer", "tok")))
        e = await c.post(RPC, json=call("rpc.v2/T/echo"), headers={"Authorization": "Bearer e"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "Invalid token"
    assert e.json()["error"]["message"] == "Invalid token"


async def test_a_secret_a_verifier_echoes_is_still_scrubbed() -> None:
    from aduib_asgi.errors import RpcError as Err

    def verify(token: str) -> Identity | None:
        raise Err(3001, f"token {token} is revoked")

    app = _app(authenticators=[BearerAuthenticator(verify)])
    async with client_for(app) as c:
        r = await c.post(RPC, json=call("rpc.v2/T/echo"),
                         headers={"Authorization": "Bearer s3cr3t-value"})
    assert "s3cr3t-value" not in r.text
    assert r.json()["error"]["message"] == "token [REDACTED] is revoked"


async def test_required_mtls_fails_closed_without_a_verified_certificate() -> None:
    """A server that does not fill the tls extension (or a bearer caller without a
    certificate) gets 3000 when mTLS is required, never anonymous access."""
    registry = make_registry()
    opts = demo_auth_options(registry, mtls_required=True)
    app = rpc_app([Layer.of(AuthMiddleware, **opts)], registry)
    async with client_for(app) as c:
        anonymous = await c.post(RPC, json=call("rpc.v2/T/echo", {"a": 1}))
        bearer = await c.post(RPC, json=call("rpc.v2/T/echo", {"a": 1}), headers=ADMIN)
    for r in (anonymous, bearer):
        assert r.status_code == 401 and r.json()["error"]["code"] == 3000
        assert "Mutual" in r.headers["WWW-Authenticate"]
    ca = trustme.CA()
    cert = ca.issue_cert("svc.example")
    ok_app = TlsExtensionApp(rpc_app([Layer.of(AuthMiddleware, **opts)], registry),
                             _tls_ext(cert))
    async with client_for(ok_app) as c:
        # with a verified certificate, a bearer token still authenticates the call
        r = await c.post(RPC, json=call("rpc.v2/T/context"), headers=USER)
    assert r.status_code == 200 and r.json()["result"]["principal"] == "alice"


async def test_audit_events_of_certificate_callers_carry_certificate_facts() -> None:
    from aduib_asgi.auth import certificate_facts

    ca = trustme.CA()
    cert = ca.issue_cert("bob.example", common_name="bob")
    pem = cert.cert_chain_pems[0].bytes().decode()
    facts = certificate_facts(pem)
    audit = CollectingAuditSink()
    registry = make_registry()
    app = TlsExtensionApp(rpc_app([Layer.of(
        AuthMiddleware, registry=registry, audit=audit,
        authenticators=[MtlsAuthenticator(roles={"bob.example": ["user"]})])], registry),
        _tls_ext(cert))
    async with client_for(app) as c:
        await c.post(RPC, json=call("rpc.v2/T/context"))
        await c.post(RPC, json=call("rpc.v2/Admin/secret"))
    allow, deny = audit.events
    assert (allow.outcome, deny.outcome, deny.code) == ("allow", "deny", 3011)
    for event in (allow, deny):
        assert event.principal == "bob.example" and event.scheme == "mtls"
        assert event.cert_subject == facts.subject and "CN=bob" in facts.subject
        assert event.cert_issuer == facts.issuer and event.cert_serial == facts.serial
        assert event.cert_sha256 == facts.sha256
        assert "BEGIN CERTIFICATE" not in repr(event.as_dict())
