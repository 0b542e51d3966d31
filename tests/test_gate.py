"""The gate (aduib_asgi.gate) in-process: decisions deferred by the layers reach the
entry paths that name their method later; the in-flight registry is bounded."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aduib_asgi.auth import BearerAuthenticator, jwt_verifier
from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware.admission import AdmissionMiddleware
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
from aduib_asgi.middleware.tenant import TenantScopeMiddleware, get_tenant
from aduib_asgi.stack import Layer, build_stack
from aduib_asgi.streaming.inflight import InflightRegistry
from tests.conftest import RPC, client_for, envelope
from tests.stream_harness import WS, WsClient
from tests.test_auth_scopes_tenants import KEY, token

pytestmark = pytest.mark.anyio


def registry(gate: anyio.Event | None = None) -> MethodRegistry:
    reg = MethodRegistry()

    async def where(data: Any, ctx: RequestContext) -> dict[str, Any]:
        return {"tenant": ctx.tenant_id, "bound": get_tenant()}

    async def ping(data: Any) -> dict[str, Any]:
        return {"pong": True}

    async def block(data: Any) -> dict[str, Any]:
        if gate is not None:
            await gate.wait()
        return {}

    reg.register("rpc.v2/G/where", where)
    reg.register("rpc.v2/G/ping", ping)
    reg.register("rpc.v2/G/block", block, concurrency=1, max_queue=0)
    return reg


async def ws_frames(app: Any, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    client = WsClient(app, WS, [])
    client.scope["headers"] += [(k.lower().encode(), v.encode())
                                for k, v in (headers or {}).items()]
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        await client.accept()
        await client.send_json(body)
        frames = await client.rest()
        tg.cancel_scope.cancel()
    return frames


async def test_websocket_tenant_of_a_bound_token_is_applied_to_the_call() -> None:
    """A tenant-bound token, no tenant header: the message's tenant is checked *and* used."""
    reg = registry()
    app = build_stack(RpcDispatcher(reg), [
        Layer.of(ErrorMappingMiddleware), Layer.of(TenantScopeMiddleware),
        Layer.of(AuthMiddleware, registry=reg, authenticators=[
            BearerAuthenticator(jwt_verifier(KEY, tenants_claim="tid"))])])
    with anyio.fail_after(10):
        ok = await ws_frames(app, envelope("rpc.v2/G/where", {}, id="w1",
                                           metadata={"tenant_id": "acme"}), token(tid="acme"))
        other = await ws_frames(app, envelope("rpc.v2/G/where", {}, id="w2",
                                              metadata={"tenant_id": "globex"}),
                                token(tid="acme"))
    assert ok[0]["type"] == "data", ok
    assert ok[0]["payload"]["data"] == {"tenant": "acme", "bound": "acme"}
    assert [f["type"] for f in other] == ["error", "end"]
    assert other[0]["payload"]["error"]["code"] == 3010


async def test_a_websocket_denial_on_the_message_is_audited_with_the_client() -> None:
    from aduib_asgi.observability.audit import CollectingAuditSink

    reg = registry()
    audit = CollectingAuditSink()
    app = build_stack(RpcDispatcher(reg), [
        Layer.of(ErrorMappingMiddleware), Layer.of(TenantScopeMiddleware),
        Layer.of(AuthMiddleware, registry=reg, audit=audit, authenticators=[
            BearerAuthenticator(jwt_verifier(KEY, tenants_claim="tid"))])])
    with anyio.fail_after(10):
        frames = await ws_frames(app, envelope("rpc.v2/G/where", {}, id="a1",
                                               metadata={"tenant_id": "globex"}),
                                 token(tid="acme"))
    assert frames[0]["payload"]["error"]["code"] == 3010
    denied = [e for e in audit.events if e.outcome == "deny"]
    assert denied and denied[-1].client == "127.0.0.1" and denied[-1].code == 3010


async def test_websocket_tenant_applies_over_the_tenant_layers_default() -> None:
    """With a default tenant (as in the demo) a bound token without a tenant header
    names its tenant in the message; the default is not held against it."""
    reg = registry()
    app = build_stack(RpcDispatcher(reg), [
        Layer.of(ErrorMappingMiddleware), Layer.of(TenantScopeMiddleware, default="default"),
        Layer.of(AuthMiddleware, registry=reg, authenticators=[
            BearerAuthenticator(jwt_verifier(KEY, tenants_claim="tid"))])])
    with anyio.fail_after(10):
        ok = await ws_frames(app, envelope("rpc.v2/G/where", {}, id="d1",
                                           metadata={"tenant_id": "acme"}), token(tid="acme"))
        unnamed = await ws_frames(app, envelope("rpc.v2/G/where", {}, id="d2"),
                                  token(tid="acme"))
    assert ok[0]["type"] == "data", ok
    assert ok[0]["payload"]["data"] == {"tenant": "acme", "bound": "acme"}
    assert unnamed[0]["type"] == "error" and unnamed[0]["payload"]["error"]["code"] == 3010


async def test_quota_applies_when_the_dispatcher_parses_the_envelope() -> None:
    """No content layer: the rate-limit layer cannot see the method; the gate applies it."""
    policy = RateLimitPolicy("ping", "2/minute", methods=("rpc.v2/G/ping",))
    app = ErrorMappingMiddleware(RateLimitMiddleware(RpcDispatcher(registry()),
                                                     policies=[policy]))
    async with client_for(app) as c:
        codes = [(await c.post(RPC, json=envelope("rpc.v2/G/ping", {}))).status_code
                 for _ in range(3)]
        other = await c.post(RPC, json=envelope("rpc.v2/G/where", {}))
        last = await c.post(RPC, json=envelope("rpc.v2/G/ping", {}))
    assert codes == [200, 200, 429]
    assert other.status_code == 200
    assert last.json()["error"]["code"] == 5020 and "retry-after" in last.headers
    assert last.json()["error"]["details"][0]["metadata"]["retry_after_s"] >= 1


async def test_quota_applies_on_the_v1_endpoint_and_sse_without_a_content_layer() -> None:
    policy = RateLimitPolicy("ping", "2/minute", methods=("rpc.v2/G/ping",))
    app = ErrorMappingMiddleware(RateLimitMiddleware(RpcDispatcher(registry()),
                                                     policies=[policy]))
    v1 = {"aduib_rpc": "1.0", "id": "v1", "method": "rpc.v2/G/ping", "data": {}}
    async with client_for(app) as c:
        first = await c.post("/aduib_rpc/v1/rpc", json=v1)
        sse = await c.post("/aduib_rpc/v2/rpc/stream", json=envelope("rpc.v2/G/ping", {}))
        refused_v1 = await c.post("/aduib_rpc/v1/rpc", json=v1)
        refused_sse = await c.post("/aduib_rpc/v2/rpc/stream",
                                   json=envelope("rpc.v2/G/ping", {}))
    assert first.status_code == 200 and sse.status_code == 200
    assert refused_v1.status_code == 429 and refused_v1.json()["error"]["code"] == 5020
    assert refused_sse.status_code == 429 and refused_sse.json()["error"]["code"] == 5020


async def test_admission_behind_a_global_limit_is_not_taken_twice() -> None:
    """Global limit 1: the request holds it, the gate adds only the method's bulkhead."""
    app = ErrorMappingMiddleware(AdmissionMiddleware(
        RpcDispatcher(registry()), max_concurrency=1, limits={"rpc.v2/G/ping": 1}))
    async with client_for(app) as c:
        with anyio.fail_after(10):
            r = await c.post(RPC, json=envelope("rpc.v2/G/ping", {}))
    assert r.status_code == 200


async def test_a_tenant_slot_is_not_taken_twice_either() -> None:
    app = ErrorMappingMiddleware(AdmissionMiddleware(
        RpcDispatcher(registry()), tenant_limit=1, limits={"rpc.v2/G/ping": 1},
        queue_timeout_s=2))
    async with client_for(app) as c:
        with anyio.fail_after(10):
            r = await c.post(RPC, json=envelope("rpc.v2/G/ping", {}))
    assert r.status_code == 200, r.text


async def test_websocket_call_refused_by_admission_gets_5021_then_end() -> None:
    gate = anyio.Event()
    reg = registry(gate)
    app = build_stack(RpcDispatcher(reg), [Layer.of(ErrorMappingMiddleware),
                                           Layer.of(AdmissionMiddleware, registry=reg)])
    first = WsClient(app, WS, [])
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await first.accept()
            await first.send_json(envelope("rpc.v2/G/block", {}, id="b1"))
            await anyio.sleep(0.1)  # b1 holds the only slot
            refused = await ws_frames(app, envelope("rpc.v2/G/block", {}, id="b2"))
            gate.set()
            done = await first.rest()
            tg.cancel_scope.cancel()
    assert [f["type"] for f in refused] == ["error", "end"]
    error = refused[0]["payload"]["error"]
    assert error["code"] == 5021 and error["details"][0]["metadata"]["retry_after_s"] >= 0
    assert done[0]["type"] == "data"


def test_inflight_registry_is_bounded_per_tenant_and_in_total() -> None:
    reg = InflightRegistry(max_per_tenant=2, max_total=3)

    class Call:
        def cancel(self, reason: str | None = None) -> None:
            return None

    def ctx(tenant: str, rid: str) -> RequestContext:
        c = RequestContext(request_id=rid)
        c.tenant_id = tenant
        c.principal = "p"
        return c

    calls = [Call() for _ in range(5)]
    k1 = reg.register(ctx("a", "1"), calls[0])
    reg.register(ctx("a", "2"), calls[1])
    with pytest.raises(RpcError) as per_tenant:
        reg.register(ctx("a", "3"), calls[2])
    reg.register(ctx("b", "1"), calls[3])  # another tenant is not affected
    with pytest.raises(RpcError) as total:
        reg.register(ctx("c", "1"), calls[4])
    assert per_tenant.value.code == total.value.code == 5021
    assert per_tenant.value.headers["Retry-After"] == "1"
    reg.unregister(k1, calls[0])
    reg.register(ctx("a", "3"), calls[2])  # room again once a call ended
    assert len(reg) == 3


async def test_task_runs_hold_the_method_bulkhead_from_the_apps_lifespan() -> None:
    """Tasks that never passed a Submit gate (recovered, another instance's) are
    admitted too: the admission layer offers its decision on the lifespan."""
    from aduib_asgi.models import TaskSubmitRequest
    from aduib_asgi.tasks import install_task_service
    from tests.test_tasks_support import lifespan

    reg = MethodRegistry()
    running = 0
    peak = 0

    async def one_at_a_time(data: Any) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1
        return {}

    reg.register("rpc.v2/G/one", one_at_a_time, concurrency=1)
    dispatcher = RpcDispatcher(reg)
    manager = install_task_service(dispatcher, workers=4)
    app = build_stack(dispatcher, [Layer.of(ErrorMappingMiddleware),
                                   Layer.of(AdmissionMiddleware, registry=reg)])
    async with lifespan(app):
        assert manager.admission is not None
        entries = [await manager.submit(TaskSubmitRequest(target_method="rpc.v2/G/one"), None)
                   for _ in range(4)]
        with anyio.fail_after(10):
            for e in entries:
                while True:
                    stored = await manager.store.get(e.task_id)
                    if stored is not None and stored.record.status.terminal:
                        break
                    await anyio.sleep(0.02)
    assert peak == 1


async def test_a_task_run_is_not_failed_while_the_server_drains() -> None:
    """Draining refuses new requests; a task run goes on (the manager hands tasks
    back when it stops), it never fails with 5002."""
    from aduib_asgi.models import TaskSubmitRequest
    from aduib_asgi.qos import ShutdownController
    from aduib_asgi.tasks import install_task_service
    from tests.test_tasks_support import lifespan

    reg = registry()
    dispatcher = RpcDispatcher(reg)
    manager = install_task_service(dispatcher)
    shutdown = ShutdownController(cancel_after_grace=False)
    app = build_stack(dispatcher, [Layer.of(ErrorMappingMiddleware),
                                   Layer.of(AdmissionMiddleware, registry=reg,
                                            shutdown=shutdown)])
    async with lifespan(app):
        shutdown.start_draining()
        entry = await manager.submit(TaskSubmitRequest(target_method="rpc.v2/G/ping"), None)
        with anyio.fail_after(10):
            while True:
                stored = await manager.store.get(entry.task_id)
                if stored is not None and stored.record.status.terminal:
                    break
                await anyio.sleep(0.02)
    assert stored.record.status.value == "succeeded", stored.record


def test_two_callers_may_run_calls_with_the_same_id_and_cancel_only_their_own() -> None:
    reg = InflightRegistry()
    cancelled: list[str] = []

    class Call:
        def __init__(self, name: str) -> None:
            self.name = name

        def cancel(self, reason: str | None = None) -> None:
            cancelled.append(self.name)

    def anon(addr: str) -> RequestContext:
        c = RequestContext(request_id="same")
        c.client = addr
        return c

    a, b = Call("a"), Call("b")
    ka = reg.register(anon("127.0.0.1"), a)
    kb = reg.register(anon("127.0.0.2"), b)
    assert reg.cancel(anon("127.0.0.2"), "same", "x") is True
    assert cancelled == ["b"]
    reg.unregister(kb, b)
    assert reg.cancel(anon("127.0.0.2"), "same") is False  # b is gone, a is not b's
    assert reg.cancel(anon("127.0.0.1"), "same") is True and cancelled == ["b", "a"]
    reg.unregister(ka, a)
    assert len(reg) == 0
