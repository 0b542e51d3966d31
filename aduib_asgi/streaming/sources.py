"""Turning what a handler returns into the async iterator a stream runs on.

Async generators are used as they are; sync generators and iterables run in a
worker thread, one ``next()`` per hop (the event loop never blocks on them);
a unary result is a one-item stream.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["SyncIterator", "as_async_iterator", "single"]

_DONE = object()


class SyncIterator:
    """Iterate a blocking iterator from async code, each ``next()`` in a worker thread.

    ``aclose()`` closes a generator (its ``finally`` runs) once any pending
    ``next()`` returned; cancellation never waits for a blocked ``next()``.
    """

    __slots__ = ("_closed", "_it", "_lock")

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it
        self._lock = threading.Lock()
        self._closed = False

    def __aiter__(self) -> SyncIterator:
        return self

    def _step(self) -> Any:
        with self._lock:
            if self._closed:
                return _DONE
            return next(self._it, _DONE)

    async def __anext__(self) -> Any:
        item = await anyio.to_thread.run_sync(self._step, abandon_on_cancel=True)
        if item is _DONE:
            raise StopAsyncIteration
        return item

    def _close(self) -> None:
        with self._lock:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(5):
            await anyio.to_thread.run_sync(self._close, abandon_on_cancel=True)


async def single(value: Any) -> AsyncIterator[Any]:
    """A stream of exactly one item."""
    yield value


def as_async_iterator(obj: Any) -> AsyncIterator[Any]:
    """``obj`` (async iterable, sync iterable or generator) as an async iterator."""
    if hasattr(obj, "__anext__"):
        it: AsyncIterator[Any] = obj
        return it
    if hasattr(obj, "__aiter__"):
        ait: AsyncIterator[Any] = obj.__aiter__()
        return ait
    if hasattr(obj, "__iter__") and not isinstance(obj, str | bytes | dict):
        return SyncIterator(iter(obj))
    raise TypeError(f"a stream handler must return an (async) iterable, not {type(obj).__name__}")
