"""Server-side retry of idempotent methods: counts, backoff, deadline, never non-idempotent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import DeadlineMiddleware, ErrorMappingMiddleware
from aduib_asgi.qos import RetryLimits, install_retry
from aduib_asgi.stack import Layer
from tests.conftest import RPC, client_for, envelope
from tests.qos_helpers import rpc_stack

pytestmark = pytest.mark.anyio


class Failing:
    def __init__(self, codes: list[int]) -> None:
        self.codes = codes  # one per attempt; 0 = success; the last repeats
        self.calls = 0

    async def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        code = self.codes[min(self.calls, len(self.codes) - 1)]
        self.calls += 1
        if code:
            raise RpcError(code)
        return {"attempt": self.calls}


def _dispatcher(handler: Failing, *, idempotent: bool = True,
                limits: RetryLimits | None = None) -> tuple[RpcDispatcher, list[float]]:
    registry = MethodRegistry()
    registry.register("rpc.v2/R/op", handler.__call__, idempotent=idempotent)
    dispatcher = RpcDispatcher(registry)
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    install_retry(dispatcher, sleep=fake_sleep, limits=limits)
    return dispatcher, delays


def _retry(**cfg: Any) -> dict[str, Any]:
    return {"retry": {"max_attempts": 3, "initial_delay_ms": 100, "backoff_multiplier": 2.0,
                      **cfg}}


async def _post(app: Any, qos: dict[str, Any] | None) -> httpx.Response:
    async with client_for(ErrorMappingMiddleware(app)) as client:
        extra = {"qos": qos} if qos is not None else {}
        return await client.post(RPC, json=envelope("rpc.v2/R/op", {}, **extra))


async def test_idempotent_method_is_retried_with_exponential_backoff() -> None:
    handler = Failing([5002, 6000, 0])
    dispatcher, delays = _dispatcher(handler)
    r = await _post(dispatcher, _retry())
    assert r.status_code == 200
    assert r.json()["result"] == {"attempt": 3}
    assert handler.calls == 3
    assert delays == [0.1, 0.2]
    assert r.headers["aduib-retry-attempts"] == "3"


async def test_attempts_exhausted_answer_the_last_error() -> None:
    handler = Failing([6002])
    dispatcher, delays = _dispatcher(handler)
    r = await _post(dispatcher, _retry(max_attempts=4, initial_delay_ms=100,
                                       backoff_multiplier=10, max_delay_ms=1500))
    assert r.status_code == 503 and r.json()["error"]["code"] == 6002
    assert handler.calls == 4
    assert delays == [0.1, 1.0, 1.5]  # capped by max_delay_ms
    assert r.headers["aduib-retry-attempts"] == "4"


async def test_non_idempotent_method_is_never_retried() -> None:
    handler = Failing([5002, 0])
    dispatcher, delays = _dispatcher(handler, idempotent=False)
    r = await _post(dispatcher, _retry())
    assert r.json()["error"]["code"] == 5002
    assert handler.calls == 1 and delays == []
    assert "aduib-retry-attempts" not in r.headers


async def test_no_retry_without_qos_retry() -> None:
    handler = Failing([5002, 0])
    dispatcher, delays = _dispatcher(handler)
    r = await _post(dispatcher, {"priority": 1})
    assert r.json()["error"]["code"] == 5002
    assert handler.calls == 1 and delays == []


@pytest.mark.parametrize("code", [4001, 2003, 5000])
async def test_non_retryable_codes_are_not_retried(code: int) -> None:
    handler = Failing([code, 0])
    dispatcher, _ = _dispatcher(handler)
    r = await _post(dispatcher, _retry())
    assert r.json()["error"]["code"] == code
    assert handler.calls == 1
    assert r.headers["aduib-retry-attempts"] == "1"


async def test_retryable_codes_from_the_request_restrict_retries() -> None:
    handler = Failing([5002, 0])
    dispatcher, _ = _dispatcher(handler)
    r = await _post(dispatcher, _retry(retryable_codes=[6001]))
    assert r.json()["error"]["code"] == 5002 and handler.calls == 1

    handler = Failing([6001, 0])
    dispatcher, _ = _dispatcher(handler)
    r = await _post(dispatcher, _retry(retryable_codes=[6001]))
    assert r.status_code == 200 and handler.calls == 2


async def test_server_caps_the_attempts() -> None:
    handler = Failing([5002])
    dispatcher, _ = _dispatcher(handler, limits=RetryLimits(max_attempts=2))
    await _post(dispatcher, _retry(max_attempts=10))
    assert handler.calls == 2


async def test_never_retries_past_the_deadline() -> None:
    handler = Failing([5002, 0])
    registry = MethodRegistry()
    registry.register("rpc.v2/R/op", handler.__call__, idempotent=True)
    app, _ = rpc_stack(registry, Layer.of(DeadlineMiddleware))
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope(
            "rpc.v2/R/op", {}, qos={"timeout_ms": 300, **_retry(initial_delay_ms=1000)}))
    # The backoff would end past the deadline: the error is answered now, not a 504 later.
    assert r.json()["error"]["code"] == 5002
    assert handler.calls == 1
