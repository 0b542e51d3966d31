"""Deadline helpers for handlers and the tasks they start.

The request's deadline is ``ctx.deadline`` (absolute, ``time.monotonic()``),
set by ``DeadlineMiddleware``. Tasks started in an anyio task group inside the
handler are cancelled with it; the contextvar carries the context into such
tasks and into worker threads, so these helpers work there too.
"""

from __future__ import annotations

from aduib_asgi.context import RequestContext, get_context

__all__ = ["remaining_ms", "timeout_headers"]


def remaining_ms(ctx: RequestContext | None = None) -> float | None:
    """Milliseconds left for the current request (None without a deadline)."""
    ctx = ctx if ctx is not None else get_context()
    return None if ctx is None else ctx.remaining_ms()


def timeout_headers(ctx: RequestContext | None = None) -> dict[str, str]:
    """``{"X-Timeout-Ms": "<remaining>"}`` to propagate the budget downstream ({} if none)."""
    left = remaining_ms(ctx)
    return {} if left is None else {"X-Timeout-Ms": str(int(left))}
