"""Running calls by request id, for ``POST .../rpc/cancel``.

Entries are keyed by (tenant, principal, request id): a cancel request only
reaches calls of its own tenant and principal (another tenant's id is simply
unknown: 404). Every entry is removed when its call ends.
"""

from __future__ import annotations

from typing import Protocol

from aduib_asgi.context import RequestContext

__all__ = ["Cancellable", "InflightKey", "InflightRegistry"]

InflightKey = tuple[str | None, str | None, str]


class Cancellable(Protocol):
    """Anything :class:`InflightRegistry` can cancel (a stream run, a unary call)."""

    def cancel(self, reason: str | None = None) -> None: ...


class InflightRegistry:
    """Request id -> running call, scoped by tenant and principal."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[InflightKey, Cancellable] = {}

    def register(self, ctx: RequestContext, call: Cancellable) -> InflightKey:
        """Record ``call`` under the request's id; pass the key to :meth:`unregister`."""
        key = (ctx.tenant_id, ctx.principal, ctx.ensure_request_id())
        self._calls[key] = call
        return key

    def unregister(self, key: InflightKey, call: Cancellable) -> None:
        """Forget ``call`` (a later call that reused the id keeps its own entry)."""
        if self._calls.get(key) is call:
            del self._calls[key]

    def cancel(self, ctx: RequestContext, request_id: str, reason: str | None = None) -> bool:
        """Cancel the caller's own running call ``request_id``; False if there is none."""
        call = self._calls.get((ctx.tenant_id, ctx.principal, request_id))
        if call is None:
            return False
        call.cancel(reason)
        return True

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, request_id: object) -> bool:
        return any(k[2] == request_id for k in self._calls)
