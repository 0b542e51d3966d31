"""A cancel scope for requests that are almost never cancelled.

Entering and leaving an anyio ``CancelScope`` costs several µs per request on
asyncio; a layer that only needs to *be able to* end its request (shutdown after
the grace period) pays that on every request for the rare one it ends.
:class:`TaskCancelScope` costs about a tenth of that: on asyncio its ``cancel()``
cancels the running task natively (``task.cancel()``) and its exit takes that
cancellation back (``task.uncancel()``) when it was its own, so the enclosing
code carries on exactly as after an anyio scope that caught its cancellation. On
any other event loop (trio) it is an anyio ``CancelScope``.

anyio shields are honoured: while the task runs inside a shielded anyio
``CancelScope`` the cancellation waits (checked every few ms) until it has left
it. One difference from anyio's scopes remains: the cancellation is delivered
once (edge, not level). Code inside that catches ``CancelledError`` and goes on
awaiting is not cancelled again; a layer that must stop such code keeps its own
guard (the deadline layer lets nothing more be sent).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import anyio

try:  # anyio's record of each task's innermost cancel scope (to see shields)
    import anyio._backends._asyncio as _anyio_asyncio
except ImportError:  # pragma: no cover - another anyio layout: no shield check
    _anyio_asyncio = None  # type: ignore[assignment]
_task_states: Any = getattr(_anyio_asyncio, "_task_states", None)

__all__ = ["TaskCancelScope"]

#: Seconds between checks while a cancellation waits for a shielded scope to end.
SHIELD_RETRY_S = 0.005


def _shielded(task: asyncio.Task[object]) -> bool:
    """Whether ``task`` is inside a shielded anyio ``CancelScope`` right now."""
    state = _task_states.get(task) if _task_states is not None else None
    scope = getattr(state, "cancel_scope", None)
    while scope is not None:
        if getattr(scope, "_shield", False):
            return True
        scope = getattr(scope, "_parent_scope", None)
    return False


class TaskCancelScope:
    """``with TaskCancelScope() as cs: ...``; ``cs.cancel()`` from anywhere ends the body
    with ``CancelledError``, caught at the exit (``cs.cancelled_caught``)."""

    __slots__ = ("_delivered", "_exited", "_scope", "_task", "cancel_called",
                 "cancelled_caught")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._scope: anyio.CancelScope | None = None
        self._delivered = False  # task.cancel() was called
        self._exited = False
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
            self._deliver()
        return self

    def cancel(self) -> None:
        """Cancel the body (idempotent; effective once entered)."""
        if self.cancel_called:
            return
        self.cancel_called = True
        if self._task is not None:
            self._deliver()
        elif self._scope is not None:
            self._scope.cancel()

    def _deliver(self) -> None:
        task = self._task
        if task is None or self._exited or self._delivered or task.done():
            return
        if _shielded(task):  # as anyio would: after the shielded scope
            task.get_loop().call_later(SHIELD_RETRY_S, self._deliver)
            return
        self._delivered = True
        task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        scope = self._scope
        if scope is not None:
            suppress = bool(scope.__exit__(exc_type, exc, tb))
            self.cancelled_caught = scope.cancelled_caught
            return suppress
        self._exited = True
        task = self._task
        if not self._delivered or task is None:
            return False
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            # ours, and nobody else's: take it back and stop it here
            if task.uncancel() == 0:
                self.cancelled_caught = True
                return True
            return False
        task.uncancel()  # delivered too late, or swallowed inside
        return False
