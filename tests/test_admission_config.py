"""Admission limits changed at run time: ``AdmissionMiddleware.configure`` and ``[admission]``.

Admitted work keeps its slot when a limit is lowered; a raised or removed limit
lets waiting work in at once; an invalid change is refused whole.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from aduib_asgi.config import ConfigManager, MemorySource, RuntimeConfig
from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.middleware import AdmissionMiddleware, DeadlineMiddleware, TenantScopeMiddleware
from aduib_asgi.qos import Bulkhead
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for, envelope
from tests.qos_helpers import rpc_stack, wait_until

pytestmark = pytest.mark.anyio

WORK = "rpc.v2/Slow/work"


class Holds:
    """A handler whose calls tagged ``hold-*`` block until released."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.done: list[str] = []
        self.release = anyio.Event()

    async def work(self, data: dict[str, Any]) -> dict[str, Any]:
        tag = data["tag"]
        self.running.add(tag)
        if tag.startswith("hold"):
            await self.release.wait()
        self.running.discard(tag)
        self.done.append(tag)
        return {"done": tag}


def _setup(**admission: Any) -> tuple[Any, Holds, AdmissionMiddleware]:
    holds = Holds()
    registry = MethodRegistry()
    registry.register(WORK, holds.work, idempotent=True)
    registry.register("rpc.v2/Other/work", holds.work)
    app, _ = rpc_stack(registry, Layer.of(TenantScopeMiddleware, default="default"),
                       Layer.of(DeadlineMiddleware),
                       Layer.of(AdmissionMiddleware, registry=registry, **admission))
    layer = app
    while not isinstance(layer, AdmissionMiddleware):
        layer = layer.app
    return app, holds, layer


def _body(tag: str, method: str = WORK) -> dict[str, Any]:
    return envelope(method, {"tag": tag})


def _queued(layer: AdmissionMiddleware) -> int:
    return sum(b.queued for b in layer._bulkheads())


async def test_a_raised_limit_admits_waiting_work_at_once() -> None:
    app, holds, layer = _setup(limits={WORK: 1})
    results: dict[str, httpx.Response] = {}
    async with client_for(app) as client:

        async def call(tag: str) -> None:
            results[tag] = await client.post(RPC, json=_body(tag))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hold-1")
            await wait_until(lambda: "hold-1" in holds.running)
            tg.start_soon(call, "hold-2")
            await wait_until(lambda: _queued(layer) == 1)
            assert "hold-2" not in holds.running  # limit 1: it waits
            layer.configure(limits={WORK: 2})
            # admitted while the first still holds its slot
            await wait_until(lambda: "hold-2" in holds.running, timeout=2)
            assert _queued(layer) == 0
            holds.release.set()
    assert {t: r.status_code for t, r in results.items()} == {"hold-1": 200, "hold-2": 200}


async def test_a_lowered_limit_keeps_admitted_work_and_admits_nobody_new_until_below() -> None:
    app, holds, layer = _setup(limits={WORK: 3}, max_queue=0)
    results: dict[str, httpx.Response] = {}
    async with client_for(app) as client:

        async def call(tag: str) -> None:
            results[tag] = await client.post(RPC, json=_body(tag))

        async with anyio.create_task_group() as tg:
            for tag in ("hold-1", "hold-2", "hold-3"):
                tg.start_soon(call, tag)
            await wait_until(lambda: len(holds.running) == 3)
            layer.configure(limits={WORK: 1}, max_queue=0)
            shed = await client.post(RPC, json=_body("new"))  # over the new limit, no queue
            assert shed.status_code == 429 and shed.json()["error"]["code"] == 5021
            assert holds.running == {"hold-1", "hold-2", "hold-3"}  # nothing cancelled
            holds.release.set()
        after = await client.post(RPC, json=_body("after"))
    assert [results[t].status_code for t in ("hold-1", "hold-2", "hold-3")] == [200] * 3
    assert after.status_code == 200


async def test_a_lowered_limit_hands_a_released_slot_on_only_once_below_it() -> None:
    b = Bulkhead("b", 3, max_queue=8)
    for _ in range(3):
        assert b.try_acquire()
    granted: list[int] = []

    async def waiter(n: int) -> None:
        await b.acquire(1, 10.0)
        granted.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 1)
        await wait_until(lambda: b.queued == 1)
        b.resize(1)
        b.release()  # 2 held, limit 1: the waiter keeps waiting
        b.release()  # 1 held
        await anyio.sleep(0.01)
        assert granted == [] and b.in_flight == 1
        b.release()  # below the limit: handed to the waiter
        await wait_until(lambda: granted == [1])
    assert b.in_flight == 1 and b.queued == 0


async def test_a_raised_limit_admits_the_highest_priorities_first() -> None:
    b = Bulkhead("b", 1, max_queue=8)
    assert b.try_acquire()
    granted: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await b.acquire(priority, 10.0)
        granted.append(name)

    async with anyio.create_task_group() as tg:
        for n, (name, priority) in enumerate([("low", 0), ("critical", 3), ("normal", 1)], 1):
            tg.start_soon(waiter, name, priority)
            await wait_until(lambda n=n: b.queued == n)
        b.resize(3)  # two new slots: the two best waiters, now
        await wait_until(lambda: len(granted) == 2)
        assert granted == ["critical", "normal"] and b.queued == 1
        b.release()
        await wait_until(lambda: len(granted) == 3)
    assert b.in_flight == 3


async def test_a_removed_limit_lets_its_waiters_through_and_counts_its_holders_again() -> None:
    app, holds, layer = _setup(limits={WORK: 1})
    async with client_for(app) as client:
        statuses: list[int] = []

        async def call(tag: str) -> None:
            statuses.append((await client.post(RPC, json=_body(tag))).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hold-1")
            await wait_until(lambda: "hold-1" in holds.running)
            tg.start_soon(call, "hold-2")
            await wait_until(lambda: _queued(layer) == 1)
            layer.configure()  # no limits at all
            await wait_until(lambda: "hold-2" in holds.running, timeout=2)
            # configured again while both still run: they count against it
            layer.configure(limits={WORK: 2}, max_queue=0)
            shed = await client.post(RPC, json=_body("third"))
            assert shed.status_code == 429
            holds.release.set()
    assert statuses == [200, 200]


async def test_a_configured_limit_takes_over_a_registered_one_with_its_holders() -> None:
    holds = Holds()
    registry = MethodRegistry()
    registry.register(WORK, holds.work, idempotent=True, concurrency=1)  # like the demo's
    app, _ = rpc_stack(registry, Layer.of(DeadlineMiddleware),
                       Layer.of(AdmissionMiddleware, registry=registry))
    layer = app
    while not isinstance(layer, AdmissionMiddleware):
        layer = layer.app
    statuses: dict[str, int] = {}
    async with client_for(app) as client:

        async def call(tag: str) -> None:
            statuses[tag] = (await client.post(RPC, json=_body(tag))).status_code

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "hold-1")
            await wait_until(lambda: "hold-1" in holds.running)
            tg.start_soon(call, "hold-2")
            await wait_until(lambda: _queued(layer) == 1)
            layer.configure(limits={WORK: 2})  # the waiter goes in now
            await wait_until(lambda: "hold-2" in holds.running, timeout=2)
            layer.configure(limits={WORK: 3}, max_queue=0)
            tg.start_soon(call, "hold-3")
            await wait_until(lambda: "hold-3" in holds.running, timeout=2)
            # removed: back to the registered 1, the three running calls still counted
            layer.configure(max_queue=0)
            shed = await client.post(RPC, json=_body("x"))
            assert shed.status_code == 429
            assert shed.json()["error"]["details"][0]["metadata"]["limit"] == WORK
            assert holds.running == {"hold-1", "hold-2", "hold-3"}
            holds.release.set()
        assert (await client.post(RPC, json=_body("after"))).status_code == 200
    assert statuses == {"hold-1": 200, "hold-2": 200, "hold-3": 200}
    assert layer._registered[WORK].limit == 1 and layer._registered[WORK].in_flight == 0


async def test_global_and_tenant_limits_are_configured_and_removed() -> None:
    app, holds, layer = _setup()
    async with client_for(app) as client:
        async def hold(tag: str, tenant: str = "default") -> None:
            r = await client.post(RPC, json=_body(tag), headers={"X-Tenant-ID": tenant})
            assert r.status_code == 200

        async with anyio.create_task_group() as tg:
            layer.configure(max_concurrency=1, max_queue=0)
            tg.start_soon(hold, "hold-1")
            await wait_until(lambda: "hold-1" in holds.running)
            r = await client.post(RPC, json=_body("x", "rpc.v2/Other/work"))
            assert r.status_code == 429
            assert r.json()["error"]["details"][0]["metadata"]["limit"] == "*"
            layer.configure(tenant_limit=1, max_queue=0, retry_after_s=7)
            tg.start_soon(hold, "hold-2")
            await wait_until(lambda: "hold-2" in holds.running)
            same = await client.post(RPC, json=_body("y"))
            assert same.status_code == 429 and same.headers["retry-after"] == "7"
            other = await client.post(RPC, json=_body("z"), headers={"X-Tenant-ID": "t2"})
            assert other.status_code == 200  # another tenant: its own limit
            layer.configure()
            assert (await client.post(RPC, json=_body("w"))).status_code == 200
            holds.release.set()


@pytest.mark.parametrize("kwargs", [
    {"limits": {WORK: 0}}, {"limits": {"": 1}}, {"max_queue": -1},
    {"queue_timeout_s": -1.0}, {"max_concurrency": -2},
])
async def test_an_invalid_change_raises_and_changes_nothing(kwargs: dict[str, Any]) -> None:
    _, _, layer = _setup(limits={WORK: 2}, max_queue=5)
    before = (dict(layer._static), layer.max_queue, layer.queue_timeout_s, layer._global)
    with pytest.raises(ValueError):
        layer.configure(**kwargs)
    assert (dict(layer._static), layer.max_queue, layer.queue_timeout_s, layer._global) == before
    assert layer._static[WORK].limit == 2


# -- [admission] in the runtime configuration (the demo, in-process) ----------------------


def _admission_of(app: Any) -> AdmissionMiddleware:
    layer = app.config_manager.app.app
    while not isinstance(layer, AdmissionMiddleware):
        layer = layer.app
    return layer


async def test_admission_section_is_applied_and_removing_it_restores_the_built_in() -> None:
    source = MemorySource({"admission": {"limits": {WORK: 3, "Echo": 2},
                                         "max_concurrency": 50, "max_queue": 4}})
    app = build_demo_app(DemoConfig(config_sources=[source]))
    layer = _admission_of(app)
    assert layer._static[WORK].limit == 3 and layer._static["Echo"].limit == 2
    assert layer._global is not None and layer._global.limit == 50
    version = app.config_manager.version
    source.set({"admission": {"limits": {WORK: 5}}})
    assert await app.config_manager.reload()
    assert app.config_manager.version != version
    assert layer._static[WORK].limit == 5 and "Echo" not in layer._static
    assert layer._global is None and layer.max_queue == 64
    source.set({})
    assert await app.config_manager.reload()
    assert layer._static == {}  # back to the registration: Slow/work, concurrency 1
    assert layer._known == {}  # removed and idle: nothing kept
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope(WORK, {"ms": 1, "tag": "a"}))
        assert r.status_code == 200
    assert layer._registered[WORK].limit == 1


@pytest.mark.parametrize("data, key", [
    ({"admission": {"limits": {WORK: 0}}}, f"admission.limits.{WORK}"),
    ({"admission": {"max_concurrency": 0}}, "admission.max_concurrency"),
    ({"admission": {"max_queue": -1}}, "admission.max_queue"),
    ({"admission": {"queue_timeout_s": "soon"}}, "admission.queue_timeout_s"),
    ({"admission": {"limit": {WORK: 1}}}, "admission.limit"),
    ({"admission": {"limits": {"": 1}}}, "admission.limits"),
])
async def test_an_invalid_admission_section_is_refused_and_the_old_limits_stay(
        data: dict[str, Any], key: str, caplog: pytest.LogCaptureFixture) -> None:
    source = MemorySource({"admission": {"limits": {WORK: 2}}})
    app = build_demo_app(DemoConfig(config_sources=[source]))
    manager: ConfigManager = app.config_manager
    layer = _admission_of(app)
    version = manager.version
    source.set({**data, "compression": {"minimum_size": 1}})  # valid parts are refused too
    assert not await manager.reload()
    assert manager.version == version
    assert layer._static[WORK].limit == 2
    refused = [r.getMessage() for r in caplog.records if "configuration refused" in r.getMessage()]
    assert any(key in line for line in refused), refused


def test_environment_and_file_combine_in_the_admission_section(tmp_path: Any) -> None:
    from aduib_asgi.config import EnvSource, FileSource

    path = tmp_path / "demo.toml"
    path.write_text('[admission]\nmax_queue = 3\n[admission.limits]\n"Echo" = 4\n')
    env = {"ADUIB_ADMISSION__MAX_CONCURRENCY": "8",  # a path or method key needs JSON:
           "ADUIB_ADMISSION__LIMITS": '{"rpc.v2/Slow/work": 2}'}
    app = build_demo_app(DemoConfig(config_sources=[FileSource(path), EnvSource(environ=env)]))
    layer = _admission_of(app)
    assert layer._global is not None and layer._global.limit == 8
    assert layer.max_queue == 3
    assert {k: b.limit for k, b in layer._static.items()} == {WORK: 2}  # env's table wins


def test_the_documented_admission_example_is_valid() -> None:
    import tomllib

    text = """
[admission]
max_concurrency = 256
tenant_limit = 64
max_queue = 64
queue_timeout_s = 10.0
retry_after_s = 1
[admission.limits]
"rpc.v2/Slow/work" = 1
"Echo" = 32
"/aduib_rpc/v1/rpc" = 16
"""
    config = RuntimeConfig.model_validate(tomllib.loads(text))
    assert config.admission is not None
    assert config.admission.limits == {WORK: 1, "Echo": 32, "/aduib_rpc/v1/rpc": 16}
    assert config.admission.tenant_limit == 64


async def test_websocket_calls_are_admitted_under_the_limits_in_force() -> None:
    """A WebSocket opened before a change: its next call meets the new limit."""
    from aduib_asgi.dispatcher import RpcDispatcher
    from aduib_asgi.middleware import ErrorMappingMiddleware
    from aduib_asgi.stack import build_stack
    from tests.stream_harness import WS, WsClient
    from tests.test_gate import registry, ws_frames

    gate = anyio.Event()
    reg = registry(gate)
    app = build_stack(RpcDispatcher(reg), [Layer.of(ErrorMappingMiddleware),
                                           Layer.of(AdmissionMiddleware, registry=reg)])
    layer = app
    while not isinstance(layer, AdmissionMiddleware):
        layer = layer.app
    first = WsClient(app, WS, [])
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await first.accept()  # opened before the change
            layer.configure(limits={"rpc.v2/G/block": 1}, max_queue=0)
            await first.send_json(envelope("rpc.v2/G/block", {}, id="b1"))
            await wait_until(lambda: layer._static["rpc.v2/G/block"].in_flight == 1)
            refused = await ws_frames(app, envelope("rpc.v2/G/block", {}, id="b2"))
            layer.configure(limits={"rpc.v2/G/block": 2}, max_queue=0)
            admitted: list[dict[str, Any]] = []

            async def second() -> None:
                admitted.extend(await ws_frames(app, envelope("rpc.v2/G/block", {}, id="b3")))

            tg.start_soon(second)
            # raised: admitted while b1 still holds its slot
            await wait_until(lambda: layer._static["rpc.v2/G/block"].in_flight == 2)
            gate.set()
            done = await first.rest()
            await wait_until(lambda: bool(admitted))
            tg.cancel_scope.cancel()
    assert [f["type"] for f in refused] == ["error", "end"]
    assert refused[0]["payload"]["error"]["code"] == 5021
    assert admitted[0]["type"] == "data"
    assert done[0]["type"] == "data"
