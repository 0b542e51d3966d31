"""The QoS layers' hot-path shortcuts decide and report exactly what the general path does.

Speed is measured in benchmarks/ (``ab_ref.py``, ``ratelimit_idempotency.py``);
these tests pin down that each shortcut is invisible: same verdicts, same
storage keys, same headers and errors.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from limits import parse

from aduib_asgi.middleware import ratelimit as rl_module
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy, make_limiter
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.stack import Layer, build_stack
from aduib_asgi.storage.ratelimit import FixedWindowQuota, quota_for
from tests.conftest import RPC, client_for, envelope
from tests.rl_idem_helpers import EnvelopeLayer, Services
from tests.test_ratelimit_windows import CountingStorage

pytestmark = pytest.mark.anyio

PING = "rpc.v2/Limited/ping"




# -- rate limit: the memory:// fixed window without a coroutine -------------------------

async def test_memory_hit_without_a_coroutine_is_the_awaited_hit() -> None:
    """hit_now and hit, interleaved on one bucket: one count, limits' own window."""
    limiter = make_limiter("memory://", "fixed-window")
    quota = quota_for(limiter)
    assert isinstance(quota, FixedWindowQuota)
    item = parse("4/10 seconds")
    key = item.key_for("p", "acme")
    seen = []
    for i in range(6):
        if i % 2:
            before = time.time()
            done = quota.hit_now(item, key, 1)
            assert done is not None
            ok, remaining, reset, now = done
            assert before <= now <= time.time()
        else:
            ok, remaining, reset = await quota.hit(item, ("p", "acme"), 1)
        own_reset, own_remaining = await limiter.get_window_stats(item, "p", "acme")
        assert (remaining, reset) == (own_remaining, own_reset)
        seen.append(ok)
    assert seen == [True, True, True, True, False, False]
    assert limiter.storage.memory.storage[key] == 6  # type: ignore[attr-defined]


async def test_a_replaced_storage_is_awaited_as_before() -> None:
    """The synchronous shortcut is looked up per hit: a storage swapped in is used."""
    limiter = make_limiter("memory://", "fixed-window")
    quota = quota_for(limiter)
    assert isinstance(quota, FixedWindowQuota)
    counting = CountingStorage(limiter.storage)
    limiter.storage = counting  # type: ignore[assignment]
    item = parse("5/minute")
    assert quota.hit_now(item, item.key_for("p", "acme"), 1) is None
    assert counting.calls == []
    assert (await quota.hit(item, ("p", "acme"), 1))[:2] == (True, 4)
    assert counting.calls == ["incr", "get_expiry"]


@pytest.mark.parametrize("wrap", [True, False])
async def test_memory_storage_errors_are_translated_as_limits_does(wrap: bool) -> None:
    """limits' methods are called without their error translator only when it would
    re-raise as is: with ``wrap_exceptions`` a storage error is still a StorageError."""
    from limits.errors import StorageError

    from aduib_asgi.storage.ratelimit import BudgetedMemoryStorage

    class Broken(dict[str, int]):
        def get(self, *args: Any) -> Any:
            raise ValueError("broken")

    from limits.aio.strategies import FixedWindowRateLimiter

    storage = BudgetedMemoryStorage(wrap_exceptions=wrap)
    quota = FixedWindowQuota(FixedWindowRateLimiter(storage))
    assert await storage.incr("k", 60) == 1
    storage.memory.storage = Broken()  # type: ignore[assignment]
    for call in (lambda: storage.memory.incr("k", 60), lambda: storage.memory.get("k"),
                 lambda: quota.hit_now(parse("5/minute"), "k", 1)):  # a charged bucket
        with pytest.raises(StorageError if wrap else ValueError):
            call()
    with pytest.raises(StorageError if wrap else ValueError):
        await storage.incr("k", 60)


def tenant_rate_app(services: Services, **rl: Any) -> Any:
    rl.setdefault("policies", [RateLimitPolicy("ping", "3/10 seconds", methods=(PING,))])
    return build_stack(services.dispatcher(), [
        Layer.of(ErrorMappingMiddleware),
        Layer.of(EnvelopeLayer),
        Layer.of(TenantScopeMiddleware, pattern=r"[ -~]{1,64}"),
        Layer.of(RateLimitMiddleware, **rl),
    ])


async def ping(client: httpx.AsyncClient, tenant: str) -> httpx.Response:
    return await client.post(RPC, json=envelope(PING, {}), headers={"x-tenant-id": tenant})


async def test_tenant_keys_are_limits_own_keys_per_tenant() -> None:
    """A policy keyed by tenant remembers each tenant's storage key: limits' key_for
    of (policy, escaped tenant), one bucket per tenant, quotas apart."""
    app = tenant_rate_app(Services())
    layer = _layer(app, RateLimitMiddleware)
    async with client_for(app) as client:
        got: dict[str, list[tuple[int, str]]] = {t: [] for t in ("acme", "a/b%c")}
        for _ in range(4):
            for tenant in got:
                resp = await ping(client, tenant)
                got[tenant].append((resp.status_code, resp.headers["ratelimit"].split(";t=")[0]))
    expected = [(200, '"ping";r=2'), (200, '"ping";r=1'), (200, '"ping";r=0'),
                (429, '"ping";r=0')]
    assert got == {"acme": expected, "a/b%c": expected}
    p = layer.policies[0]
    assert p.tenant_keys == {
        "acme": p.policy.item.key_for("ping", "acme"),
        "a/b%c": p.policy.item.key_for("ping", "a%2Fb%25c"),
    }
    memory = layer.limiter.storage.memory
    assert {k: memory.storage[k] for k in p.tenant_keys.values()} == \
        dict.fromkeys(p.tenant_keys.values(), 4)


async def test_tenant_keys_without_a_tenant_layer_follow_the_header() -> None:
    """Without a tenant layer the partition is the raw X-Tenant-ID ("default" when
    absent or empty): the remembered keys are still limits' keys of the escaped tenant."""
    from tests.test_ratelimit import rpc_app

    app = rpc_app(Services())
    layer = _layer(app, RateLimitMiddleware)
    async with client_for(app) as client:
        shared = [await client.post(RPC, json=envelope(PING, {}), headers=h)
                  for h in ({}, {"x-tenant-id": "default"}, {"x-tenant-id": ""})]
        other = await ping(client, "a/b")
        again = await ping(client, "a/b")
    assert [r.headers["ratelimit"].split(";t=")[0] for r in shared] == \
        ['"ping";r=2', '"ping";r=1', '"ping";r=0']
    assert [r.headers["ratelimit"].split(";t=")[0] for r in (other, again)] == \
        ['"ping";r=2', '"ping";r=1']
    p = layer.policies[0]
    default = p.policy.item.key_for("ping", "default")
    assert p.tenant_keys == {None: default, b"default": default, b"": default,
                             b"a/b": p.policy.item.key_for("ping", "a%2Fb")}


async def test_the_tenant_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rl_module, "_CACHE_MAX", 3)
    app = tenant_rate_app(Services())
    layer = _layer(app, RateLimitMiddleware)
    async with client_for(app) as client:
        for i in range(10):
            resp = await ping(client, f"t{i}")
            assert resp.status_code == 200 and resp.headers["ratelimit"].startswith('"ping";r=2')
    assert 1 <= len(layer.policies[0].tenant_keys) <= 3


async def test_a_storage_replaced_on_the_layer_s_limiter_is_used() -> None:
    app = tenant_rate_app(Services())
    layer = _layer(app, RateLimitMiddleware)
    counting = CountingStorage(layer.limiter.storage)
    layer.limiter.storage = counting
    async with client_for(app) as client:
        for r in (2, 1):
            resp = await ping(client, "acme")
            assert resp.headers["ratelimit"].startswith(f'"ping";r={r};t=')
    assert counting.calls[0] == "incr" and counting.calls.count("incr") == 2


def _layer(app: Any, cls: type) -> Any:
    while not isinstance(app, cls):
        app = app.app
    return app


# -- auth: one decision, registration options before pattern rules ----------------------

def _decision(layer: Any, identity: Any, method: str | None, path: str = "/rpc",
              spec: Any = None) -> Any:
    from aduib_asgi.context import RequestContext
    from aduib_asgi.errors import RpcError
    from aduib_asgi.models import parse_method

    ctx = RequestContext()
    ctx.method = method
    if spec is not None:
        ctx.extras["aduib.method_spec"] = spec
    parts = parse_method(method) if method is not None else None
    try:
        return layer._decide(identity, ctx, method, parts[0] if parts else None, path)
    except RpcError as exc:
        return exc.code


@pytest.mark.parametrize("with_registry", [True, False])
def test_auth_decision_table(with_registry: bool) -> None:
    """Roles and scopes: a method's registration options win over the pattern rules,
    which apply to methods without the option and to plain paths; nothing configured
    admits anonymous callers with nothing required."""
    from aduib_asgi.auth import Identity
    from aduib_asgi.dispatcher import MethodRegistry
    from aduib_asgi.middleware.auth import AuthMiddleware

    async def f(data: Any) -> None:
        return None

    registry = MethodRegistry()
    own = registry.register("rpc.v2/Ops/own", f, roles=["admin"], scopes=["w"])
    plain = registry.register("rpc.v2/Ops/plain", f, timeout_ms=5)
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    layer = AuthMiddleware(app, rules={"rpc.v2/Ops/*": ["ops"], "/admin": ["root"]},
                           scope_rules={"rpc.v2/Ops/*": ["r"]},
                           registry=registry if with_registry else None)
    bare = AuthMiddleware(app)
    admin = Identity("a", roles=("admin",), scopes=("w",))
    ops = Identity("o", roles=("ops",), scopes=("r",))
    # the spec is known through the registry, or (dispatcher, WebSocket) ctx.extras
    spec_own = None if with_registry else own
    spec_plain = None if with_registry else plain
    assert _decision(layer, admin, own.method, spec=spec_own) == (("admin",), ("w",))
    assert _decision(layer, ops, own.method, spec=spec_own) == 3011  # options win
    assert _decision(layer, None, own.method, spec=spec_own) == 3000
    assert _decision(layer, ops, plain.method, spec=spec_plain) == (("ops",), ("r",))
    assert _decision(layer, admin, plain.method, spec=spec_plain) == 3011
    assert _decision(layer, ops, "rpc.v2/Ops/unknown") == (("ops",), ("r",))
    assert _decision(layer, None, None, "/admin") == 3000  # a plain path's rule
    assert _decision(layer, ops, None, "/other") == (None, None)
    assert _decision(bare, None, own.method, spec=own) == 3000  # options without a registry
    assert _decision(bare, None, plain.method, spec=plain) == (None, None)
    assert _decision(bare, None, None) == (None, None)
    assert _decision(bare, ops, "rpc.v2/Ops/unknown") == (None, None)


# -- deadline: the budget of a request that names none ----------------------------------

def test_deadline_budget_sources_are_read_per_request() -> None:
    """No configured default: no deadline, no call into the defaults; the public
    attributes changed at run time still count on the next request."""
    from aduib_asgi.context import RequestContext
    from aduib_asgi.middleware.deadline import DeadlineMiddleware
    from aduib_asgi.models import RpcRequest

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    layer = DeadlineMiddleware(app)
    scope = {"type": "http", "path": "/rpc"}

    def budget(payload: Any = None, header: bytes | None = None) -> float | None:
        ctx = RequestContext(raw_headers=[(b"x-timeout-ms", header)] if header else [])
        ctx.method, ctx.service = "rpc.v2/T/t", "T"
        ctx.payload = payload
        ctx.envelope = RpcRequest.model_validate(
            {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/T/t"})
        return layer._budget_ms(ctx, scope)

    assert budget() is None
    assert budget({"data": 1}) is None
    assert budget({"meta": {"timeout_ms": 700}}) == 700.0
    assert budget({"meta": {"timeout_ms": 700}}, b"300") == 300.0
    assert budget({"meta": "bad"}) is None
    layer.method_timeouts["T"] = 250  # a per-service default added at run time
    assert budget() == 250.0
    assert budget({"meta": {"timeout_ms": 900}}) == 900.0
    layer.method_timeouts.clear()
    layer.default_timeout_ms = 100
    assert budget() == 100.0
    layer.max_timeout_ms = 50
    assert budget() == 50.0


# -- admission: one object is the request's cancel scope and its progress ---------------

async def test_admission_responder_is_the_cancel_scope_and_tracks_progress() -> None:
    import asyncio

    from aduib_asgi.middleware.admission import _AdmissionResponder
    from aduib_asgi.qos.shutdown import ShutdownController

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message["type"])

    shutdown = ShutdownController(grace_s=0.0)
    responder = _AdmissionResponder(send)
    reached = False
    with responder:
        shutdown.enter(responder)
        await responder({"type": "http.response.start", "status": 200, "headers": []})
        await responder({"type": "http.response.body", "body": b"a", "more_body": True})
        assert (responder.started, responder.finished) == (True, False)
        assert shutdown.abort_in_flight() == 1  # cancels the request's task natively
        try:
            await asyncio.sleep(1)
        finally:
            shutdown.exit(responder)
        reached = True
    assert not reached and responder.cancelled_caught  # caught at the scope's exit
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await responder({"type": "http.response.body", "body": b"", "more_body": False})
    assert responder.finished and sent == ["http.response.start", "http.response.body",
                                           "http.response.body"]


# -- not triggered: the handler hands back the inner app's own awaitable ----------------

class _Inner:
    """An inner app that returns (not awaits) one awaitable per call, and records it."""

    def __init__(self) -> None:
        self.returned: list[Any] = []

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        async def run() -> None:
            return None

        awaitable = run()
        self.returned.append(awaitable)
        return awaitable


def _not_triggered_layers(inner: _Inner) -> list[tuple[str, Any, Any]]:
    """(name, handler, context) of each QoS layer on its not-triggered path."""
    from aduib_asgi.context import RequestContext
    from aduib_asgi.demo.security import demo_auth_options
    from aduib_asgi.middleware.auth import AuthMiddleware
    from aduib_asgi.middleware.deadline import DeadlineMiddleware
    from aduib_asgi.middleware.idempotency import IdempotencyMiddleware

    def ctx() -> RequestContext:
        return RequestContext(raw_headers=[(b"content-type", b"application/json")])

    rate = RateLimitMiddleware(inner, policies=[RateLimitPolicy("p", "1000/minute")])
    return [
        ("deadline", DeadlineMiddleware(inner)._http, ctx()),
        ("idempotency", IdempotencyMiddleware(inner)._handle, ctx()),
        ("auth", AuthMiddleware(inner, **demo_auth_options(None))._handle, ctx()),
        ("ratelimit (memory, admitted)", rate._handle, ctx()),
    ]


async def test_not_triggered_handlers_add_no_coroutine_of_their_own() -> None:
    """Deadline without a budget, idempotency without a key, auth of an anonymous
    caller with nothing required and a memory:// rate-limit admission return the
    inner app's awaitable itself: no frame of theirs per request in a stack."""
    inner = _Inner()
    scope = {"type": "http", "method": "POST", "path": "/rpc", "headers": []}
    for name, handler, ctx in _not_triggered_layers(inner):
        got = handler(scope, None, None, ctx)
        assert inner.returned and got is inner.returned[-1], name
        await got


async def test_rate_limit_admission_without_a_coroutine_still_reports() -> None:
    """The admitted memory:// hit, handed back without a coroutine, has already
    reported its quota (headers and metadata) when the inner app runs."""
    inner = _Inner()
    _, handler, ctx = _not_triggered_layers(inner)[-1]
    scope = {"type": "http", "method": "POST", "path": "/rpc", "headers": []}
    got = handler(scope, None, None, ctx)
    assert got is inner.returned[-1]
    await got
    assert ctx.rate_limit is not None and ctx.rate_limit["limit"] == 1000
    assert ctx.rate_limit["remaining"] == 999
    assert [k for k, _ in ctx.response_headers] == [b"ratelimit-policy", b"ratelimit"]


def test_memory_hit_with_the_expiry_at_hand_is_the_same_hit() -> None:
    """The layer passes each policy's window as the expiry: limits' own get_expiry()."""
    from aduib_asgi.middleware.ratelimit import _Compiled

    for limit in ("3/10 seconds", "100/minute", "5 per 2 hours", "1/day"):
        p = _Compiled(RateLimitPolicy("p", limit))
        assert p.window == p.item.get_expiry() == parse(limit).get_expiry()
    limiter = make_limiter("memory://", "fixed-window")
    quota = quota_for(limiter)
    assert isinstance(quota, FixedWindowQuota)
    item = parse("2/10 seconds")
    got = [quota.hit_now(item, item.key_for("p", "a"), 1, 10) for _ in range(3)]
    assert [g[:2] for g in got if g is not None] == [(True, 1), (True, 0), (False, 0)]
    assert limiter.storage.memory.expirations[item.key_for("p", "a")] == got[0][2]  # type: ignore[attr-defined,index]


async def test_auth_blanks_envelope_credentials_and_skips_payloads_without_metadata() -> None:
    from aduib_asgi.context import RequestContext
    from aduib_asgi.demo.security import demo_auth_options
    from aduib_asgi.middleware.auth import REDACTED, AuthMiddleware

    inner = _Inner()
    layer = AuthMiddleware(inner, **demo_auth_options(None))
    scope = {"type": "http", "method": "POST", "path": "/rpc", "headers": []}
    plain = RequestContext()
    plain.payload = {"aduib_rpc": "2.0", "id": "1", "data": {"credentials": "x"}}
    await layer._handle(scope, None, None, plain)
    assert plain.payload["data"] == {"credentials": "x"}  # not an envelope's metadata.auth
    with_auth = RequestContext()
    with_auth.payload = {"metadata": {"auth": {"scheme": "bearer", "credentials": "t0k"}}}
    await layer._handle(scope, None, None, with_auth)  # no envelope parsed: anonymous
    assert with_auth.payload["metadata"]["auth"]["credentials"] == REDACTED


async def test_admission_counts_the_request_in_flight_until_it_ends() -> None:
    """Without a controller that cancels, a request is counted in flight (what a drain
    waits for) while the app runs, also when it fails."""
    from aduib_asgi.context import RequestContext
    from aduib_asgi.middleware.admission import AdmissionMiddleware

    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(layer.shutdown.in_flight)
        if scope.get("fail"):
            raise RuntimeError("boom")

    layer = AdmissionMiddleware(app)
    assert not layer.shutdown.cancel_after_grace
    scope = {"type": "http", "method": "POST", "path": "/rpc", "headers": []}
    await layer._http(scope, None, None, RequestContext())
    with pytest.raises(RuntimeError):
        await layer._http({**scope, "fail": True}, None, None, RequestContext())
    assert seen == [1, 1] and layer.shutdown.in_flight == 0


async def test_a_closed_breaker_counts_each_outcome_and_an_open_one_refuses() -> None:
    from aduib_asgi.context import RequestContext
    from aduib_asgi.middleware.circuit import ERROR_CODE_KEY, CircuitBreakerMiddleware
    from aduib_asgi.qos.breaker import BreakerSettings

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ctx = scope["aduib.context"]
        if scope.get("fail"):
            ctx.extras[ERROR_CODE_KEY] = 6000
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    layer = CircuitBreakerMiddleware(app, settings=BreakerSettings(min_requests=4,
                                                                   failure_rate=0.5))
    scope = {"type": "http", "method": "POST", "path": "/rpc", "headers": []}

    async def call(fail: bool) -> None:
        ctx = RequestContext()
        await layer._http({**scope, "aduib.context": ctx, "fail": fail}, None, send, ctx)

    await call(False)
    await call(False)
    breaker = layer.breaker("/rpc")
    assert breaker is not None and breaker.counts() == (2, 0) and breaker.state == "closed"
    await call(True)
    await call(True)
    assert breaker.state == "open"
    sent.clear()
    await call(False)
    assert sent[0]["status"] == 503 and breaker.counts() == (4, 2)
