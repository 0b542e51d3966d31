"""Who the client is (aduib_asgi.identity): one address, one caller scope, used by
rate limits, idempotency keys, task idempotency keys, audit and logs alike."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.identity import (
    TRUSTED_PROXIES_KEY,
    ClientIdentityMiddleware,
    TrustedProxies,
    caller_scope,
    client_address,
)
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.observability.logs import JsonFormatter, RequestContextFilter
from aduib_asgi.stack import StackOrderError, check_order
from tests.test_tasks_support import TS, build_app, lifespan

pytestmark = pytest.mark.anyio


def _ctx(headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
    return RequestContext(raw_headers=headers or [])


def test_peer_is_the_client_without_trusted_proxies() -> None:
    ctx = _ctx([(b"x-forwarded-for", b"198.51.100.1")])
    scope: dict[str, Any] = {"type": "http", "client": ("203.0.113.7", 1)}
    assert client_address(scope, ctx) == "203.0.113.7"
    assert ctx.client == "203.0.113.7"


def test_trusted_proxy_names_the_client_and_is_resolved_once() -> None:
    ctx = _ctx([(b"x-forwarded-for", b"spoofed, 198.51.100.1, 10.0.0.9")])
    scope: dict[str, Any] = {"type": "http", "client": ("10.1.2.3", 1),
                             TRUSTED_PROXIES_KEY: TrustedProxies(["10.0.0.0/8"])}
    assert client_address(scope, ctx) == "198.51.100.1"
    scope["client"] = ("203.0.113.9", 1)  # resolved once: the context keeps its answer
    assert client_address(scope, ctx) == "198.51.100.1"


def test_caller_scope_separates_anonymous_clients_by_address() -> None:
    a, b, alice = _ctx(), _ctx(), _ctx()
    alice.principal = "alice"
    sa = caller_scope(a, {"client": ("127.0.0.1", 1)})
    sb = caller_scope(b, {"client": ("127.0.0.2", 1)})
    assert sa != sb
    assert caller_scope(alice, {"client": ("127.0.0.1", 1)}) != sa
    t = _ctx([(b"x-tenant-id", b"acme")])
    t.principal = "alice"
    assert caller_scope(t) != caller_scope(alice)  # tenant is part of it


def test_identity_layer_must_wrap_the_layers_that_use_the_address() -> None:
    with pytest.raises(StackOrderError):
        check_order(["ratelimit", "identity"])
    with pytest.raises(StackOrderError):
        check_order(["idempotency", "identity"])


class _Count:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b'{"n": %d}' % self.calls
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def test_anonymous_idempotency_keys_are_scoped_by_forwarded_client() -> None:
    """Two anonymous clients behind one trusted proxy never share a key."""
    inner = _Count()
    app = ClientIdentityMiddleware(IdempotencyMiddleware(inner),
                                   trusted_proxies=["10.0.0.0/8"])
    transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        h = {"idempotency-key": "k1"}
        a1 = await c.post("/x", content=b"{}", headers={**h, "x-forwarded-for": "198.51.100.1"})
        b1 = await c.post("/x", content=b"{}", headers={**h, "x-forwarded-for": "198.51.100.2"})
        a2 = await c.post("/x", content=b"{}", headers={**h, "x-forwarded-for": "198.51.100.1"})
    assert a1.json() == {"n": 1} and b1.json() == {"n": 2}  # b ran its own call
    assert a2.json() == {"n": 1} and a2.headers["idempotent-replayed"] == "true"
    assert inner.calls == 2


async def test_task_idempotency_key_is_scoped_by_principal() -> None:
    """An anonymous caller reusing alice's task key gets its own task, not hers."""
    app, _, _ = build_app()
    async with lifespan(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = {"target_method": "rpc.v2/T/ok", "params": {"secret": 1},
                "idempotency_key": "shared"}
        alice = await c.post(TS + "Submit", json=body, headers={"x-test-principal": "alice"})
        again = await c.post(TS + "Submit", json=body, headers={"x-test-principal": "alice"})
        anon = await c.post(TS + "Submit", json=body)
        bob = await c.post(TS + "Submit", json=body, headers={"x-test-principal": "bob"})
    ids = [r.json()["task_id"] for r in (alice, again, anon, bob)]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3


async def test_logs_and_audit_name_the_resolved_client() -> None:
    from aduib_asgi.auth import ApiKeyAuthenticator, Identity
    from aduib_asgi.middleware.auth import AuthMiddleware
    from aduib_asgi.observability.audit import CollectingAuditSink

    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Sink()
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.identity")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        log.info("handled")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    audit = CollectingAuditSink()
    app = ClientIdentityMiddleware(
        AuthMiddleware(inner, authenticators=[ApiKeyAuthenticator({"k": Identity("alice")})],
                       audit=audit),
        trusted_proxies=["10.0.0.0/8"])
    transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 5000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/x", headers={"x-api-key": "k", "x-forwarded-for": "192.0.2.4"})
    finally:
        log.removeHandler(handler)
    assert r.status_code == 204
    assert audit.events and audit.events[0].client == "192.0.2.4"
    assert '"client": "192.0.2.4"' in records[0]


async def test_context_helper_sees_the_same_address_in_every_layer() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        async def handle(scope: Scope, receive: Receive, send: Send,
                         ctx: RequestContext) -> None:
            seen.append(client_address(scope, ctx))
            seen.append(caller_scope(ctx))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        await run_with_context(handle, scope, receive, send)

    app = ClientIdentityMiddleware(inner, trusted_proxies=["127.0.0.1"])
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.get("/", headers={"forwarded": 'for="[2001:db8::1]:4711"'})
    assert seen == ["2001:db8::1", "default\x1fa:2001:db8::1"]


async def test_demo_behind_a_trusted_proxy_scopes_anonymous_keys_by_forwarded_client() -> None:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    app = build_demo_app(DemoConfig(env="prod", trusted_proxies=("10.0.0.0/8",)))
    transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 5000))
    body = {"aduib_rpc": "2.0", "method": "rpc.v2/Counter/incr", "data": {"name": "idn"}}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        h = {"idempotency-key": "same"}
        a = await c.post("/aduib_rpc/v2/rpc", json=body,
                         headers={**h, "x-forwarded-for": "198.51.100.1"})
        b = await c.post("/aduib_rpc/v2/rpc", json=body,
                         headers={**h, "x-forwarded-for": "198.51.100.2"})
    assert a.status_code == b.status_code == 200
    assert "idempotent-replayed" not in b.headers  # b is another client: its own call
    assert a.json()["result"] != b.json()["result"]
