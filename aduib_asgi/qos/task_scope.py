"""A cancel scope for requests that are almost never cancelled.

Entering and leaving an anyio ``CancelScope`` costs several µs per request on
asyncio; a layer that only needs to *be able to* end its request (shutdown after
the grace period) pays that on every request for the rare one it ends.
:class:`TaskCancelScope` costs about a tenth of that: on asyncio its ``cancel()``
cancels the running task natively (``task.cancel()``) and its exit takes that
cancellation back (``task.uncancel()``) when it was its own, so the enclosing
code carries on exactly as after an anyio scope that caught its cancellation. On
any other event loop (trio) it is an anyio ``CancelScope``.

One difference from anyio's scopes: the cancellation is delivered once (edge,
not level). Code inside that catches ``CancelledError`` and goes on awaiting is
not cancelled again; use anyio's scope where that matters.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import anyio

__all__ = ["TaskCancelScope"]


class TaskCancelScope:
    """``with TaskCancelScope() as cs: ...``; ``cs.cancel()`` from anywhere ends the body
    with ``CancelledError``, caught at the exit (``cs.cancelled_caught``)."""

    __slots__ = ("_scope", "_task", "cancel_called", "cancelled_caught")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._scope: anyio.CancelScope | None = None
        self.cancel_called = False
        self.cancelled_caught = False

    def __enter__(self) -> TaskCancelScope:
        try:
            self._task = asyncio.current_task()
        except RuntimeError:  # not asyncio
            self._task = None
        if self._task is None:
            self._scope = anyio.CancelScope()
            self._scope.__enter__()
            if self.cancel_called:
                self._scope.cancel()
        elif self.cancel_called:  # cancelled before it was entered
            self._task.cancel()
        return self

    def cancel(self) -> None:
        """Cancel the body (idempotent; effective once entered)."""
        if self.cancel_called:
            return
        self.cancel_called = True
        if self._task is not None:
            self._task.cancel()
        elif self._scope is not None:
            self._scope.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        scope = self._scope
        if scope is not None:
            suppress = bool(scope.__exit__(exc_type, exc, tb))
            self.cancelled_caught = scope.cancelled_caught
            return suppress
        task = self._task
        if not self.cancel_called or task is None:
            return False
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            # ours, and nobody else's: take it back and stop it here
            if task.uncancel() == 0:
                self.cancelled_caught = True
                return True
            return False
        task.uncancel()  # delivered too late, or swallowed inside
        return False
