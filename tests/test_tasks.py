"""TaskService through the real ASGI stack: submit/query/cancel, status machine,
retries with backoff, timeouts, priority order, scheduling, tenant isolation."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from tests.test_tasks_support import (
    TS,
    build_app,
    client_for,
    lifespan,
    query,
    submit,
    wait_terminal,
)

pytestmark = pytest.mark.anyio


async def test_submit_then_query_returns_the_handler_result(backend: str) -> None:
    app, _, _ = build_app(backend)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ok", {"x": 1}, priority=[2])
        assert sub["status"] in ("scheduled", "running", "succeeded")
        assert isinstance(sub["created_at_ms"], int)
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"
    assert task["result"] == {"echo": {"x": 1}}
    assert task["priority"] == 2
    assert task["attempt"] == 1
    assert task["started_at_ms"] >= task["created_at_ms"]
    assert task["completed_at_ms"] >= task["started_at_ms"]


async def test_status_machine_scheduled_running_succeeded() -> None:
    app, _, h = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {})
        assert sub["status"] == "scheduled"  # pending -> scheduled before Submit answers
        await h.started.wait()
        assert (await query(c, sub["task_id"])).json()["task"]["status"] == "running"
        h.gate.set()
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"
    assert task["result"] == {"released": True}


async def test_sync_handler_runs_in_a_thread() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/sync_add", {"a": 2, "b": 3})
        task = await wait_terminal(c, sub["task_id"])
    assert task["result"] == {"sum": 5}


@pytest.mark.parametrize("priority", [5, [1, 2], "high", -1])
async def test_bad_priority_is_1002(priority: object) -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/ok",
                                              "priority": priority})
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == "error" and body["error"]["code"] == 1002
    assert body["error"]["details"][0]["field"].startswith("priority")


@pytest.mark.parametrize(("target", "status", "code"), [
    ("rpc.v2/T/nope", 404, 4001),
    ("rpc.v2/Nope/x", 404, 4002),
    ("not-a-method", 400, 1002),
    ("rpc.v2/T/stream", 400, 2000),
])
async def test_bad_target_is_rejected_at_submit(target: str, status: int, code: int) -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        r = await c.post(TS + "Submit", json={"target_method": target})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_missing_fields_and_bad_bodies() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        r = await c.post(TS + "Submit", json={"params": {}})
        assert r.status_code == 400
        assert r.json()["error"]["details"][0]["field"] == "target_method"
        r = await c.post(TS + "Query", json=[1])
        assert (r.status_code, r.json()["error"]["code"]) == (400, 1002)
        r = await c.get(TS + "Query")
        assert r.status_code == 405


async def test_unknown_task_is_404_4000() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        for op, body in (("Query", {"task_id": "nope"}), ("Cancel", {"task_id": "nope"}),
                         ("Subscribe", {"task_id": "nope"})):
            r = await c.post(TS + op, json=body)
            assert r.status_code == 404, op
            assert r.json()["error"]["code"] == 4000, op


async def test_submit_without_running_workers_is_503() -> None:
    app, _, _ = build_app()
    async with client_for(app) as c:  # no ASGI lifespan: workers never started
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/ok"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == 5002


async def test_retries_until_success(backend: str) -> None:
    app, _, h = build_app(backend)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/flaky", {"fail_times": 2}, max_attempts=3)
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"
    assert task["attempt"] == 3
    assert h.flaky_calls == 3
    assert task["result"] == {"calls": 3}


async def test_retries_exhausted_fail_with_the_last_error() -> None:
    app, _, h = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/flaky", {"fail_times": 9}, max_attempts=3)
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "failed"
    assert task["attempt"] == 3 and h.flaky_calls == 3
    assert task["error"]["code"] == 5002
    assert task["error"]["message"] == "flaky #3"


async def test_client_errors_are_not_retried() -> None:
    app, _, h = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/flaky", {"fail_times": 9, "code": 2003}, max_attempts=5)
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "failed"
    assert task["attempt"] == 1 and h.flaky_calls == 1
    assert task["error"]["code"] == 2003


async def test_unexpected_exception_is_a_generic_5000() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/crash", {})
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "failed"
    assert task["error"]["code"] == 5000
    assert "secret" not in str(task["error"])


async def test_backoff_is_exponential() -> None:
    _app, manager, _ = build_app(retry_initial_delay_ms=100, retry_multiplier=2,
                                retry_max_delay_ms=350)
    assert [manager.backoff_ms(n) for n in (1, 2, 3, 4)] == [100, 200, 350, 350]


async def test_timeout_per_attempt_is_5003_and_retried() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/sleep", {"ms": 10_000}, timeout_ms=30, max_attempts=2)
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "failed"
    assert task["attempt"] == 2
    assert task["error"]["code"] == 5003


async def test_handler_sees_the_deadline_of_timeout_ms() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ctx", {}, timeout_ms=60_000)
        task = await wait_terminal(c, sub["task_id"])
    assert 0 < task["result"]["deadline_remaining_ms"] <= 60_000


async def test_cancel_stops_a_running_task(backend: str) -> None:
    app, _, h = build_app(backend)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {"tag": "t1"})
        await h.started.wait()
        r = await c.post(TS + "Cancel", json={"task_id": sub["task_id"], "reason": "stop"})
        assert r.status_code == 200
        assert r.json() == {"task_id": sub["task_id"], "status": "canceled", "canceled": True}
        assert h.cleaned == ["t1"]  # the handler's cleanup ran: it was really stopped
        task = (await query(c, sub["task_id"])).json()["task"]
        assert task["status"] == "canceled"
        assert task["error"]["message"] == "stop"
        r = await c.post(TS + "Cancel", json={"task_id": sub["task_id"]})
        assert r.json() == {"task_id": sub["task_id"], "status": "canceled", "canceled": False}


async def test_cancel_a_queued_task_means_it_never_runs() -> None:
    app, _, h = build_app(workers=1)
    async with lifespan(app), client_for(app) as c:
        await submit(c, "rpc.v2/T/block", {})
        await h.started.wait()
        queued = await submit(c, "rpc.v2/T/order", {"tag": "queued"})
        r = await c.post(TS + "Cancel", json={"task_id": queued["task_id"]})
        assert r.json()["canceled"] is True
        after = await submit(c, "rpc.v2/T/order", {"tag": "after"})
        h.gate.set()
        await wait_terminal(c, after["task_id"])
        assert (await query(c, queued["task_id"])).json()["task"]["status"] == "canceled"
    assert h.order == ["after"]


async def test_cancel_a_finished_task_is_not_canceled() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ok", {})
        await wait_terminal(c, sub["task_id"])
        r = await c.post(TS + "Cancel", json={"task_id": sub["task_id"]})
    assert r.json() == {"task_id": sub["task_id"], "status": "succeeded", "canceled": False}


async def test_priority_orders_the_run_queue() -> None:
    app, _, h = build_app(workers=1)
    async with lifespan(app), client_for(app) as c:
        await submit(c, "rpc.v2/T/block", {})
        await h.started.wait()
        ids = [(await submit(c, "rpc.v2/T/order", {"tag": f"p{p}"}, priority=p))["task_id"]
               for p in (0, 1, 3, 2, 1)]
        h.gate.set()
        for tid in ids:
            await wait_terminal(c, tid)
    assert h.order == ["p3", "p2", "p1", "p1", "p0"]


async def test_scheduled_at_ms_delays_the_start() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        at = int(time.time() * 1000) + 300
        sub = await submit(c, "rpc.v2/T/ok", {}, scheduled_at_ms=at)
        task = (await query(c, sub["task_id"])).json()["task"]
        assert task["status"] == "scheduled" and task["scheduled_at_ms"] == at
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"
    assert task["started_at_ms"] >= at


async def test_handler_sees_submitter_tenant_and_principal() -> None:
    app, _, _ = build_app()
    hdrs = {"X-Tenant-ID": "acme", "X-Test-Principal": "alice", "X-Test-Roles": "user"}
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/ctx", {}, headers=hdrs)
        task = await wait_terminal(c, sub["task_id"], headers={"X-Tenant-ID": "acme"})
    assert task["result"] == {"tenant_id": "acme", "principal": "alice", "roles": ["user"],
                              "task_id": sub["task_id"], "deadline_remaining_ms": None}
    assert task["tenant_id"] == "acme"


async def test_a_tenant_cannot_see_or_cancel_another_tenants_task(backend: str) -> None:
    app, _, h = build_app(backend)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {}, headers={"X-Tenant-ID": "a"})
        tid = sub["task_id"]
        for op in ("Query", "Cancel", "Subscribe"):
            r = await c.post(TS + op, json={"task_id": tid}, headers={"X-Tenant-ID": "b"})
            assert (r.status_code, r.json()["error"]["code"]) == (404, 4000), op
        r = await query(c, tid)  # no tenant: "default", not "a"
        assert r.status_code == 404
        await h.started.wait()
        assert (await query(c, tid, headers={"X-Tenant-ID": "a"})).status_code == 200
        h.gate.set()
        task = await wait_terminal(c, tid, headers={"X-Tenant-ID": "a"})
    assert task["status"] == "succeeded"


async def test_method_roles_apply_at_submit() -> None:
    app, _, _ = build_app()
    async with lifespan(app), client_for(app) as c:
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/admin"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, 3000)
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/admin"},
                         headers={"X-Test-Principal": "bob", "X-Test-Roles": "user"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, 3011)
        admin = {"X-Test-Principal": "root", "X-Test-Roles": "admin"}
        sub = await submit(c, "rpc.v2/T/admin", {}, headers=admin)
        done = await wait_terminal(c, sub["task_id"], headers=admin)
        assert done["result"] == {"secret": "ok"}


async def test_reading_or_cancelling_a_task_needs_the_methods_roles() -> None:
    """A task id alone does not give a same-tenant caller the result of a protected method."""
    app, _, _ = build_app()
    admin = {"X-Test-Principal": "root", "X-Test-Roles": "admin"}
    user = {"X-Test-Principal": "bob", "X-Test-Roles": "user"}
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/admin", {}, headers=admin)
        await wait_terminal(c, sub["task_id"], headers=admin)
        anon = await query(c, sub["task_id"])
        bob = await query(c, sub["task_id"], headers=user)
        cancel = await c.post(TS + "Cancel", json={"task_id": sub["task_id"]}, headers=user)
        subscribe = await c.post(TS + "Subscribe", json={"task_id": sub["task_id"]},
                                 headers=user)
    assert (anon.status_code, anon.json()["error"]["code"]) == (401, 3000)
    assert (bob.status_code, bob.json()["error"]["code"]) == (403, 3011)
    assert (cancel.status_code, cancel.json()["error"]["code"]) == (403, 3011)
    assert subscribe.status_code == 403


async def test_idempotency_key_returns_the_same_task(backend: str) -> None:
    app, _, _ = build_app(backend)
    async with lifespan(app), client_for(app) as c:
        a = await submit(c, "rpc.v2/T/ok", {}, idempotency_key="k1")
        b = await submit(c, "rpc.v2/T/ok", {}, idempotency_key="k1")
        other = await submit(c, "rpc.v2/T/ok", {}, idempotency_key="k1",
                             headers={"X-Tenant-ID": "t2"})
    assert a["task_id"] == b["task_id"]
    assert other["task_id"] != a["task_id"]


async def test_long_running_path_of_the_2_0_1_library() -> None:
    app, _, _ = build_app()
    params = {"aduib_rpc": "2.0", "id": None, "method": "rpc.v2/T/ok", "name": None,
              "data": {"msg": "hi"}, "meta": None,
              "metadata": {"long_task": True, "long_task_method": "task/submit"}, "qos": None}
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "task/submit", params, priority=[1])
        task = await wait_terminal(c, sub["task_id"])
        assert task["target_method"] == "rpc.v2/T/ok"
        assert task["result"] == {"echo": {"msg": "hi"}}
        r = await c.post(TS + "Submit", json={"target_method": "task/submit", "params": {}})
        assert (r.status_code, r.json()["error"]["code"]) == (400, 2003)


async def test_demo_serves_tasks_with_the_2_0_1_default_body() -> None:
    app = build_demo_app(DemoConfig(env="prod"))
    async with lifespan(app), client_for(app) as c:
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/Echo/sleep",
                                              "params": {"ms": 20}, "priority": [1]})
        assert r.status_code == 200, r.text
        task = await wait_terminal(c, r.json()["task_id"])
    assert task["status"] == "succeeded"
    assert task["result"] == {"slept_ms": 20}
    assert task["priority"] == 1


async def test_shutdown_hands_running_tasks_back_and_a_new_manager_reruns_them() -> None:
    from aduib_asgi.tasks import MemoryTaskStore

    store = MemoryTaskStore()
    app, _, h = build_app(store)
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/block", {"tag": "first"})
        await h.started.wait()
    assert h.cleaned == ["first"]  # stopped by the shutdown
    app2, _, h2 = build_app(store)
    h2.gate.set()
    async with lifespan(app2), client_for(app2) as c:
        task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"
    assert task["attempt"] == 1  # the interrupted attempt does not count


async def test_lifespan_startup_failure_is_reported() -> None:
    from contextlib import asynccontextmanager

    from aduib_asgi.dispatcher import RpcDispatcher

    d = RpcDispatcher()

    @asynccontextmanager
    async def broken():  # type: ignore[no-untyped-def]
        raise RuntimeError("no store")
        yield

    d.lifespan_hooks.append(broken)
    to_app, app_in = anyio.create_memory_object_stream[dict](2)
    app_out, from_app = anyio.create_memory_object_stream[dict](2)
    await to_app.send({"type": "lifespan.startup"})
    await d({"type": "lifespan"}, app_in.receive, app_out.send)
    msg = await from_app.receive()
    assert msg["type"] == "lifespan.startup.failed" and "no store" in msg["message"]


async def test_demo_task_runs_as_the_authenticated_submitter() -> None:
    app = build_demo_app(DemoConfig(env="prod"))
    hdrs = {"Authorization": "Bearer demo-user-token", "X-Tenant-ID": "acme"}
    async with lifespan(app), client_for(app) as c:
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/Echo/context"},
                         headers=hdrs)
        assert r.status_code == 200, r.text
        tid = r.json()["task_id"]
        task = await wait_terminal(c, tid, headers=hdrs)
        assert (await query(c, tid)).status_code == 404  # tenant "default" does not see it
        r = await c.post(TS + "Submit", json={"target_method": "rpc.v2/Admin/secret"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, 3000)
    result = task["result"]
    assert (result["tenant_id"], result["principal"], result["roles"]) == (
        "acme", "alice", ["user"])
    assert result["request_id"] == tid


@pytest.mark.parametrize("field", ["scheduled_at_ms", "timeout_ms"])
async def test_out_of_range_times_are_1002_and_workers_keep_running(field: str) -> None:
    # An integer past int64 (and past float range) must not reach the queue:
    # it used to kill every worker (OverflowError computing the wait).
    app, _, _ = build_app()
    raw = b'{"target_method": "rpc.v2/T/ok", "%s": 1%s}' % (field.encode(), b"0" * 400)
    with anyio.fail_after(15):
        async with lifespan(app), client_for(app) as c:
            r = await c.post(TS + "Submit", content=raw,
                             headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == 1002
            assert r.json()["error"]["details"][0]["field"] == field
            sub = await submit(c, "rpc.v2/T/ok", {"x": 1})
            task = await wait_terminal(c, sub["task_id"])
    assert task["status"] == "succeeded"



async def test_a_cancel_that_loses_the_race_leaves_no_cancel_reason_behind() -> None:
    # The handler ignores the cancel and succeeds: the recorded reason used to stay in
    # the manager's dict forever (one entry per such race).
    app, manager, h = build_app()

    async def stubborn(data: dict[str, Any]) -> dict[str, Any]:
        h.started.set()
        try:
            await anyio.sleep(math.inf)
        except anyio.get_cancelled_exc_class():
            return {"ignored": True}
        return {}  # pragma: no cover

    manager.registry.register("rpc.v2/T/stubborn", stubborn)
    with anyio.fail_after(15):
        async with lifespan(app), client_for(app) as c:
            sub = await submit(c, "rpc.v2/T/stubborn", {})
            await h.started.wait()
            r = await c.post(TS + "Cancel", json={"task_id": sub["task_id"], "reason": "x"})
            assert r.status_code == 200
            await wait_terminal(c, sub["task_id"])
            assert manager._cancel_reasons == {}


async def test_a_tenant_cannot_queue_unbounded_tasks() -> None:
    app, _, h = build_app(max_active_per_tenant=2, workers=1)
    async with lifespan(app), client_for(app) as c:
        first = await submit(c, "rpc.v2/T/block", {})
        await submit(c, "rpc.v2/T/block", {})
        over = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/block"})
        other = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/ok"},
                             headers={"X-Tenant-ID": "someone-else"})
        assert over.status_code == 429
        assert over.json()["error"]["code"] == 5021
        assert over.headers["retry-after"] == "1"
        assert other.status_code == 200  # another tenant has its own quota
        r = await c.post(TS + "Cancel", json={"task_id": first["task_id"]})
        assert r.json()["canceled"] is True
        again = await c.post(TS + "Submit", json={"target_method": "rpc.v2/T/ok"})
        assert again.status_code == 200
        h.gate.set()


async def test_task_handlers_see_the_tenant_contextvars() -> None:
    """get_tenant() and tenant_setting() work in a task as in the unary call."""
    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
    from aduib_asgi.middleware.content import ContentNegotiationMiddleware
    from aduib_asgi.middleware.errors import ErrorMappingMiddleware
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware, get_tenant, tenant_setting
    from aduib_asgi.stack import Layer, build_stack
    from aduib_asgi.tasks import install_task_service

    reg = MethodRegistry()

    async def who(data: dict[str, Any]) -> dict[str, Any]:
        return {"tenant": get_tenant(), "tier": tenant_setting("tier")}

    reg.register("rpc.v2/T/who", who)
    dispatcher = RpcDispatcher(reg)
    install_task_service(dispatcher)
    app = build_stack(dispatcher, [
        Layer.of(ErrorMappingMiddleware), Layer.of(ContentNegotiationMiddleware),
        Layer.of(TenantScopeMiddleware, overrides={"acme": {"tier": "gold"}})])
    hdr = {"X-Tenant-ID": "acme"}
    async with lifespan(app), client_for(app) as c:
        sub = await submit(c, "rpc.v2/T/who", {}, headers=hdr)
        task = await wait_terminal(c, sub["task_id"], headers=hdr)
    assert task["result"] == {"tenant": "acme", "tier": "gold"}
