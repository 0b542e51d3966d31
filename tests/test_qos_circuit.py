"""CircuitBreakerMiddleware: opening on server failures, 5010, half-open probes, closing."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import CircuitBreakerMiddleware
from aduib_asgi.middleware.circuit import default_failure_codes
from aduib_asgi.qos import BreakerSettings
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for, envelope
from tests.qos_helpers import rpc_stack

pytestmark = pytest.mark.anyio

METHOD = "rpc.v2/Dep/call"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """A handler answering the code it is told to (0: success); can hold a call."""

    def __init__(self) -> None:
        self.code = 6000
        self.calls = 0
        self.hold: anyio.Event | None = None
        self.entered = anyio.Event()

    async def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.code:
            raise RpcError(self.code)
        return {"ok": True}


def _setup(**kwargs: Any) -> tuple[Any, Flaky, Clock, CircuitBreakerMiddleware]:
    clock = Clock()
    flaky = Flaky()
    registry = MethodRegistry()
    registry.register(METHOD, flaky.__call__)
    kwargs.setdefault("settings", BreakerSettings(min_requests=4, failure_rate=0.5,
                                                  open_s=30, window_s=10))
    app, _ = rpc_stack(registry, Layer.of(CircuitBreakerMiddleware, clock=clock, **kwargs))
    layer = app
    while not isinstance(layer, CircuitBreakerMiddleware):
        layer = layer.app
    return app, flaky, clock, layer


async def _call(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    return await client.post(RPC, json=envelope(METHOD, {}, **extra))


async def test_opens_after_configured_failures_and_rejects_with_5010(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, flaky, clock, layer = _setup()
    caplog.set_level(logging.WARNING, logger="aduib_asgi.qos.circuit")
    async with client_for(app) as client:
        for _ in range(3):
            assert (await _call(client)).json()["error"]["code"] == 6000
        assert layer.breaker(METHOD).state == "closed"  # type: ignore[union-attr]
        assert (await _call(client)).json()["error"]["code"] == 6000  # 4th: min reached
        assert layer.breaker(METHOD).state == "open"  # type: ignore[union-attr]
        calls = flaky.calls
        clock.now += 10.2
        r = await _call(client, id="rej-1")
    assert flaky.calls == calls  # rejected without running the handler
    assert r.status_code == 503
    body = r.json()
    assert body["error"]["code"] == 5010 and body["id"] == "rej-1"
    assert r.headers["retry-after"] == "20"  # ceil(30 - 10.2)
    assert "closed -> open" in caplog.text


async def test_client_errors_and_internal_errors_do_not_count() -> None:
    app, flaky, _, layer = _setup()
    async with client_for(app) as client:
        for code in (4001, 2003, 3011, 5000, 5001, 4001, 2000, 5000):
            flaky.code = code
            assert (await _call(client)).json()["error"]["code"] == code
    assert layer.breaker(METHOD).state == "closed"  # type: ignore[union-attr]
    assert 5000 not in default_failure_codes() and 5002 in default_failure_codes()


async def test_half_open_probe_then_close_on_success() -> None:
    app, flaky, clock, layer = _setup()
    breaker = None
    async with client_for(app) as client:
        for _ in range(4):
            await _call(client)
        breaker = layer.breaker(METHOD)
        assert breaker is not None and breaker.state == "open"
        clock.now += 31  # open time over: the next call is the one probe
        flaky.code = 0
        flaky.hold = anyio.Event()
        flaky.entered = anyio.Event()
        box: dict[str, httpx.Response] = {}
        async with anyio.create_task_group() as tg:

            async def probe() -> None:
                box["probe"] = await _call(client)

            tg.start_soon(probe)
            await flaky.entered.wait()
            assert breaker.state == "half_open"
            other = await _call(client)  # a second call while the probe runs
            assert other.status_code == 503 and other.json()["error"]["code"] == 5010
            flaky.hold.set()
        assert box["probe"].status_code == 200
        assert breaker.state == "closed"
        flaky.hold = None
        assert (await _call(client)).status_code == 200


async def test_failed_probe_reopens() -> None:
    app, _, clock, layer = _setup()
    async with client_for(app) as client:
        for _ in range(4):
            await _call(client)
        clock.now += 31
        assert (await _call(client)).json()["error"]["code"] == 6000  # the probe fails
        assert layer.breaker(METHOD).state == "open"  # type: ignore[union-attr]
        r = await _call(client)
    assert r.json()["error"]["code"] == 5010
    assert r.headers["retry-after"] == "30"


async def test_failure_rate_below_threshold_stays_closed() -> None:
    app, flaky, _, layer = _setup()
    async with client_for(app) as client:
        for i in range(12):
            flaky.code = 6000 if i % 3 == 2 else 0  # 33 % failures < 50 %
            await _call(client)
    assert layer.breaker(METHOD).state == "closed"  # type: ignore[union-attr]


async def test_old_failures_leave_the_window() -> None:
    app, _, clock, layer = _setup()
    async with client_for(app) as client:
        for _ in range(3):
            await _call(client)
        clock.now += 11  # the window is 10 s
        await _call(client)
    assert layer.breaker(METHOD).state == "closed"  # type: ignore[union-attr]


async def test_per_tenant_breakers_and_exempt_methods() -> None:
    app, _, _, layer = _setup(per_tenant=True)
    async with client_for(app) as client:
        for _ in range(4):
            await _call(client, metadata={"tenant_id": "a"})
        r = await _call(client, metadata={"tenant_id": "a"})
        assert r.json()["error"]["code"] == 5010
    # Without a tenant layer the tenant is unknown: the "default" breaker is separate.
    assert layer.breaker(f"{METHOD}\x00default") is not None

    app, _, _, layer = _setup(overrides={"Dep": None})
    async with client_for(app) as client:
        for _ in range(6):
            assert (await _call(client)).json()["error"]["code"] == 6000
    assert layer.breaker(METHOD) is None


async def test_alone_around_a_plain_app_counts_5xx_statuses() -> None:
    async def down(request: Request) -> JSONResponse:
        return JSONResponse({"down": True}, status_code=503)

    async def missing(request: Request) -> JSONResponse:
        return JSONResponse({}, status_code=404)

    app = CircuitBreakerMiddleware(Starlette(routes=[Route("/down", down),
                                                     Route("/missing", missing)]),
                                   settings=BreakerSettings(min_requests=2, open_s=5))
    async with client_for(app) as client:
        for _ in range(5):
            assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/down")).json() == {"down": True}
        assert (await client.get("/down")).json() == {"down": True}
        r = await client.get("/down")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == 5010
    assert r.headers["retry-after"] == "5"


@pytest.mark.parametrize("with_registry", [True, False])
async def test_made_up_method_names_cannot_exhaust_the_breakers(with_registry: bool) -> None:
    """Thousands of unknown method names never stop a real method's breaker from opening."""
    from aduib_asgi.middleware import circuit

    flaky = Flaky()
    registry = MethodRegistry()
    registry.register(METHOD, flaky.__call__)
    settings = BreakerSettings(min_requests=4, failure_rate=0.5, open_s=30, window_s=10)
    extra = {"registry": registry} if with_registry else {}
    app, _ = rpc_stack(registry, Layer.of(CircuitBreakerMiddleware, settings=settings, **extra))
    layer = app
    while not isinstance(layer, CircuitBreakerMiddleware):
        layer = layer.app
    async with client_for(app) as c:
        for i in range(circuit._MAX_BREAKERS + 10):
            await c.post(RPC, json=envelope(f"rpc.v2/Junk/m{i}", {}))
        if with_registry:
            assert len(layer._breakers) < 10  # unknown methods are accounted by path
        codes = [(await _call(c)).json()["error"]["code"] for _ in range(8)]
    assert codes[-1] == 5010  # the real method's breaker still opens
    assert flaky.calls < 8


def test_a_probe_from_an_earlier_half_open_period_does_not_count() -> None:
    """Stale probes neither close the breaker nor free a probe slot of the new period."""
    from aduib_asgi.qos.breaker import BreakerOpen, CircuitBreaker

    clock = Clock()
    b = CircuitBreaker("m", BreakerSettings(min_requests=1, failure_rate=0.5, open_s=10,
                                            half_open_probes=1, half_open_successes=1),
                       clock=clock)
    b.record(b.acquire(), True)  # opens
    clock.now += 11
    stale = b.acquire()  # the probe of the first half-open period, still running
    b._open()  # meanwhile the breaker re-opened (another probe failed)
    clock.now += 11
    fresh = b.acquire()  # the new period's only probe
    b.record(stale, False)  # the old probe finishes OK: must not close the breaker
    assert b.state == "half_open"
    with pytest.raises(BreakerOpen):  # nor free the new period's probe slot
        b.acquire()
    b.record(fresh, False)
    assert b.state == "closed"
