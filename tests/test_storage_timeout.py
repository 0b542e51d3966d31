"""call_within: the storage-call bound used by the rate-limit and idempotency layers."""

from __future__ import annotations

import anyio
import pytest

from aduib_asgi.storage.timeout import call_within

pytestmark = pytest.mark.anyio


async def test_returns_the_result_in_time() -> None:
    async def add(a: int, b: int) -> int:
        await anyio.sleep(0)
        return a + b

    assert await call_within(1.0, add, 2, 3) == 5


async def test_a_hung_call_raises_timeout_error() -> None:
    hung = anyio.Event()
    with anyio.fail_after(5):  # generous outer bound: the test never hangs
        with pytest.raises(TimeoutError):
            await call_within(0.05, hung.wait)


async def test_an_outer_anyio_cancel_scope_still_cancels() -> None:
    hung = anyio.Event()
    with anyio.move_on_after(0.05) as outer:
        await call_within(30, hung.wait)
    assert outer.cancelled_caught  # cancelled by the outer scope, not a TimeoutError


async def test_errors_of_the_call_propagate() -> None:
    async def broken() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await call_within(1.0, broken)
