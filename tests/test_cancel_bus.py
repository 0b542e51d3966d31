"""The cancel bus on a real Redis, in-process: two registries as two instances."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.streaming.cancel_bus import RedisCancelBus
from aduib_asgi.streaming.inflight import InflightRegistry
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.anyio


class Call:
    def __init__(self) -> None:
        self.reasons: list[str | None] = []

    def cancel(self, reason: str | None = None) -> None:
        self.reasons.append(reason)


def ctx(principal: str | None = None, client: str = "127.0.0.1", rid: str = "r1",
        tenant: str = "t") -> RequestContext:
    c = RequestContext(request_id=rid)
    c.tenant_id = tenant
    c.principal = principal
    c.client = client
    return c


@asynccontextmanager
async def instances(url: str, n: int = 2) -> AsyncIterator[list[InflightRegistry]]:
    async with AsyncExitStack() as stack:
        registries = []
        for _ in range(n):
            reg = InflightRegistry()
            reg.bus = await stack.enter_async_context(
                RedisCancelBus.from_url(url, reg).running())
            registries.append(reg)
        yield registries


async def test_a_cancel_reaches_the_instance_that_runs_the_call(redis_url: str) -> None:
    async with instances(redis_url) as (a, b):
        call = Call()
        a.register(ctx("alice"), call)
        with anyio.fail_after(5):
            other = await b.cancel_anywhere(ctx("bob"), "r1", "no")
            anon = await b.cancel_anywhere(ctx(None), "r1", "no")
            t0 = time.monotonic()
            own = await b.cancel_anywhere(ctx("alice"), "r1", "stop")
            took = time.monotonic() - t0
    assert (other, anon, own) == (False, False, True)
    assert call.reasons == ["stop"]
    assert took < 1.0


async def test_anonymous_callers_are_told_apart_by_address_across_instances(
        redis_url: str) -> None:
    async with instances(redis_url) as (a, b):
        call = Call()
        a.register(ctx(None, "127.0.0.1"), call)
        with anyio.fail_after(5):
            other = await b.cancel_anywhere(ctx(None, "127.0.0.2"), "r1", "INJECTED")
            own = await b.cancel_anywhere(ctx(None, "127.0.0.1"), "r1", "mine")
    assert (other, own) == (False, True)
    assert call.reasons == ["mine"]


async def test_unknown_ids_answer_as_soon_as_every_instance_said_no(redis_url: str) -> None:
    async with instances(redis_url, 3) as (a, _, _c):
        with anyio.fail_after(5):
            t0 = time.monotonic()
            found = await a.cancel_anywhere(ctx("alice"), "nobody")
            took = time.monotonic() - t0
    assert found is False
    assert took < 0.9  # not the reply timeout: both others answered


async def test_waiting_cancels_are_bounded_per_tenant(redis_url: str) -> None:
    async with instances(redis_url) as (a, _):
        bus = a.bus
        assert isinstance(bus, RedisCancelBus)
        bus.max_pending_per_tenant = 0
        with pytest.raises(RpcError) as refused:
            await a.cancel_anywhere(ctx("alice"), "nobody")
        other_tenant_id = "x" * 2000  # too long to publish: local only, no error
        assert await a.cancel_anywhere(ctx("alice", tenant="u"), other_tenant_id) is False
    assert refused.value.code == 5021


@pytest.mark.redis
async def test_while_its_subscription_is_down_a_cancel_is_503_not_a_wrong_404(
        redis_url: str, redis_server: RedisServer) -> None:
    """Answers could not reach an instance whose subscription dropped (Redis restart,
    failover): it says 503 + Retry-After instead of "not found", and works again
    once resubscribed."""
    async with instances(redis_url) as (a, b):
        call = Call()
        a.register(ctx("alice"), call)
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")  # every subscriber
        bus = b.bus
        assert isinstance(bus, RedisCancelBus)
        with anyio.fail_after(10):
            while bus.listening:
                await anyio.sleep(0.01)
            with pytest.raises(RpcError) as down:
                await b.cancel_anywhere(ctx("alice"), "r1", "early")
            while not (bus.listening and getattr(a.bus, "listening", False)):
                await anyio.sleep(0.05)
            assert await b.cancel_anywhere(ctx("alice"), "r1", "stop")
    assert down.value.code == 5002 and down.value.headers["Retry-After"] == "1"
    assert call.reasons == ["stop"]
