"""Bounding a storage call in time, at the lowest cost the event loop allows.

An anyio ``fail_after`` scope around a Redis round trip costs tens of µs per
request on asyncio; asyncio's own ``asyncio.timeout`` (Python 3.11+) bounds the
same call for about half of that. Other event loops (trio) keep anyio's scope.
Both raise ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["call_within"]

T = TypeVar("T")


async def call_within(seconds: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await fn(*args)``, or ``TimeoutError`` after ``seconds``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): anyio's cancel scope
        with anyio.fail_after(seconds):
            return await fn(*args)
    async with asyncio.timeout(seconds):
        return await fn(*args)
