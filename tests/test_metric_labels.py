"""Metric label sets are bounded: callers cannot create series (OPERATIONS.md section 5)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aduib_asgi.middleware import AdmissionMiddleware
from aduib_asgi.middleware import admission as admission_module
from aduib_asgi.observability.metrics import RpcMetrics
from tests.conftest import client_for
from tests.qos_helpers import wait_until

pytestmark = pytest.mark.anyio


def _series(reader: InMemoryMetricReader, name: str) -> list[dict[str, Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [dict(p.attributes) for rm in data.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics if m.name == name for p in m.data.data_points]


def _metrics(**kw: Any) -> tuple[RpcMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return RpcMetrics(MeterProvider(metric_readers=[reader]), **kw), reader


def test_codes_outside_the_error_table_collapse_to_other() -> None:
    m, reader = _metrics()
    for code in range(5100, 5400):  # a handler may raise any integer (Echo/fail)
        m.record(method="rpc.v2/Echo/fail", code=code, status=500, duration_ms=1.0)
    m.record(method="rpc.v2/Echo/fail", code=5003, status=504, duration_ms=1.0)
    m.record(method="rpc.v2/Echo/echo", code=0, status=200, duration_ms=1.0)
    for name in ("rpc.server.requests", "rpc.server.duration"):
        codes = sorted(str(a["rpc.aduib_rpc.code"]) for a in _series(reader, name))
        assert codes == ["0", "5003", "other"], name
    (other,) = [a for a in _series(reader, "rpc.server.requests")
                if a["rpc.aduib_rpc.code"] == "other"]
    assert other["rpc.method"] == "rpc.v2/Echo/fail"


def test_unknown_methods_and_statuses_collapse_to_other() -> None:
    m, reader = _metrics()
    m.record(method=None, code=4001, status=404, duration_ms=1.0)
    m.record(method="rpc.v2/X/y", code=4002, status=404, duration_ms=1.0)
    m.record(method="rpc.v2/T/ok", code=None, status=599, duration_ms=1.0)  # a plain app's
    got = {(a["rpc.method"], a.get("rpc.aduib_rpc.code"), a["http.response.status_code"])
           for a in _series(reader, "rpc.server.requests")}
    assert got == {("other", 4001, 404), ("other", 4002, 404), ("rpc.v2/T/ok", None, "other")}


def test_tenant_labels_are_bounded() -> None:
    m, reader = _metrics(tenant_attribute=True, max_tenants=3)
    for i in range(50):
        m.record(method="rpc.v2/T/ok", code=0, status=200, duration_ms=1.0, tenant=f"t{i}")
    m.record(method="rpc.v2/T/ok", code=0, status=200, duration_ms=1.0, tenant="t1")
    tenants = {a["aduib.tenant_id"] for a in _series(reader, "rpc.server.requests")}
    assert tenants == {"t0", "t1", "t2", "other"}


def test_past_max_series_new_label_sets_count_under_other() -> None:
    m, reader = _metrics(max_series=4)
    for status in (200, 201, 202, 203, 204, 205, 206):
        m.record(method="rpc.v2/T/ok", code=0, status=status, duration_ms=1.0)
    points = _series(reader, "rpc.server.requests")
    assert len(points) == 5  # 4 distinct sets, then one overflow series
    assert {"rpc.method": "other", "rpc.aduib_rpc.code": "other",
            "http.response.status_code": "other"} in points
    data = reader.get_metrics_data()
    assert data is not None
    total = sum(p.value for rm in data.resource_metrics for sm in rm.scope_metrics
                for mt in sm.metrics if mt.name == "rpc.server.requests"
                for p in mt.data.data_points)
    assert total == 7  # every request still counted


async def test_admission_rejections_of_a_tenant_limit_never_carry_the_tenant_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, str, int]] = []
    monkeypatch.setattr(admission_module, "record_rejection",
                        lambda limit, reason, priority: seen.append((limit, reason, priority)))
    release = anyio.Event()

    async def endpoint(request: Request) -> JSONResponse:
        if request.query_params.get("hold"):
            await release.wait()
        return JSONResponse({})

    async def tenant_app(scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette(routes=[Route("/w", endpoint)])(scope, receive, send)

    layer = AdmissionMiddleware(tenant_app, tenant_limit=1, max_queue=0)

    async def with_tenant(scope: Scope, receive: Receive, send: Send) -> None:
        from aduib_asgi.context import run_with_context

        async def h(scope: Scope, receive: Receive, send: Send, ctx: Any) -> None:
            ctx.tenant_id = ctx.header(b"x-tenant-id").decode()
            await layer(scope, receive, send)

        await run_with_context(h, scope, receive, send)

    async with client_for(with_tenant) as client, anyio.create_task_group() as tg:
        tg.start_soon(lambda: client.get("/w?hold=1", headers={"X-Tenant-ID": "acme-secret"}))
        await wait_until(lambda: "acme-secret" in layer._tenants)
        await wait_until(lambda: layer._tenants["acme-secret"].in_flight == 1)
        r = await client.get("/w", headers={"X-Tenant-ID": "acme-secret"})
        assert r.status_code == 429
        release.set()
    assert seen == [("tenant", "shed", 1)]
