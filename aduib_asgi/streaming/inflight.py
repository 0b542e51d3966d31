"""Running calls by request id, for ``POST .../rpc/cancel``.

A cancel request only reaches calls of the same caller
(:func:`aduib_asgi.identity.caller_scope`: tenant and principal, and for
anonymous callers their client address); any other call's id is simply unknown
(404). Entries are kept by request id; whose a call is (its tenant and caller
scope) is worked out only when a cancel asks, so registering a call costs a
dict insert. Every entry is removed when its call ends.

The registry is bounded: at most ``max_per_tenant`` running calls per tenant and
``max_total`` in all (defaults 10,000 and 100,000, roughly 300 bytes each); a
call past a bound is refused with 429 / 5021 and ``Retry-After`` before it runs,
and never displaces another caller's entry. Calls are counted per tenant only
while at least ``max_per_tenant`` calls run in all (below that no tenant can be
at its bound): the counts are taken from the entries when the total reaches it,
kept while it stays above half of it, and dropped below.

With a :class:`CancelBus` attached (:mod:`aduib_asgi.streaming.cancel_bus`), a
cancel for an id not running here is offered to the other instances sharing
the bus; a call that is never cancelled costs nothing beyond the local entry.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import Scope

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.identity import caller_scope, tenant_of

__all__ = [
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_INFLIGHT_PER_TENANT",
    "MAX_REASON",
    "CancelBus",
    "Cancellable",
    "InflightKey",
    "InflightRegistry",
]

#: What :meth:`InflightRegistry.register` returns for :meth:`~InflightRegistry.unregister`
#: (the request id).
InflightKey = str
DEFAULT_MAX_INFLIGHT = 100_000
DEFAULT_MAX_INFLIGHT_PER_TENANT = 10_000
#: A cancel reason longer than this is cut (it is echoed in the cancelled call's answer).
MAX_REASON = 256


class Cancellable(Protocol):
    """Anything :class:`InflightRegistry` can cancel (a stream run, a unary call)."""

    def cancel(self, reason: str | None = None) -> None: ...


class CancelBus(Protocol):
    """Reaches calls running on other instances (see :mod:`aduib_asgi.streaming.cancel_bus`)."""

    async def cancel_remote(self, tenant: str, owner: str, request_id: str,
                            reason: str | None) -> bool: ...


#: A running call: (call, its context, its ASGI scope, the next entry under the same
#: request id or None, its tenant while calls are counted per tenant, else None).
#: A tuple, not an object: registering is one tuple and one dict insert.
_Entry = tuple[Cancellable, RequestContext, "Scope | None", "_Entry | None", "str | None"]


def _without(entry: _Entry | None, call: Cancellable) -> tuple[_Entry | None, _Entry | None]:
    """The chain ``entry`` without ``call`` (rebuilt up to it), and the removed entry.
    Iterative: a chain is as long as the calls running under one id."""
    before: list[_Entry] = []
    e = entry
    while e is not None and e[0] is not call:
        before.append(e)
        e = e[3]
    if e is None:
        return entry, None
    rest = e[3]
    for p in reversed(before):
        rest = (p[0], p[1], p[2], rest, p[4])
    return rest, e


def _full(tenant: str | None, n: int, max_per_tenant: int) -> RpcError:
    return RpcError(5021, "Too many running calls"
                    + (f" for tenant {tenant!r}" if n >= max_per_tenant else ""),
                    headers={"Retry-After": "1"},
                    details=[{"type": "admission", "reason": "in-flight registry full",
                              "metadata": {"limit": "inflight", "retry_after_s": 1}}])


class InflightRegistry:
    """Request id -> running call, scoped by caller, bounded per tenant and in total."""

    __slots__ = ("_calls", "_size", "_tenants", "bus", "max_per_tenant", "max_total")

    def __init__(self, *, max_per_tenant: int = DEFAULT_MAX_INFLIGHT_PER_TENANT,
                 max_total: int = DEFAULT_MAX_INFLIGHT) -> None:
        # request id -> the calls running under that id (a chain, usually one)
        self._calls: dict[str, _Entry] = {}
        # tenant -> its running calls, while counted (see the module docstring), else None
        self._tenants: dict[str, int] | None = None
        self._size = 0
        self.max_per_tenant = max_per_tenant
        self.max_total = max_total
        #: Other instances' calls (set by ``install_cancel_bus``), or None.
        self.bus: CancelBus | None = None

    def register(self, ctx: RequestContext, call: Cancellable,
                 scope: Scope | None = None) -> InflightKey:
        """Record ``call`` under the request's id; pass the key to :meth:`unregister`.
        Raises 5021 (429) at a bound."""
        size = self._size
        counts = self._tenants
        tenant = None
        if counts is not None or size >= self.max_per_tenant:
            if counts is None:
                counts = self._count()
            tenant = ctx.tenant_id or tenant_of(ctx)
            n = counts.get(tenant, 0)
            if n >= self.max_per_tenant or size >= self.max_total:
                raise _full(tenant, n, self.max_per_tenant)
            counts[tenant] = n + 1
        elif size >= self.max_total:  # below max_per_tenant in all: no tenant is at its bound
            raise _full(None, 0, self.max_per_tenant)
        rid = ctx.request_id or ctx.ensure_request_id()  # "" stays ""
        calls = self._calls
        calls[rid] = (call, ctx, scope, calls.get(rid), tenant)
        self._size = size + 1
        return rid

    def _count(self) -> dict[str, int]:
        """Start counting calls per tenant: each entry's tenant, from its context."""
        counts: dict[str, int] = {}
        for rid, entry in list(self._calls.items()):
            chain: list[_Entry] = []
            e: _Entry | None = entry
            while e is not None:
                chain.append(e)
                e = e[3]
            rebuilt: _Entry | None = None
            for call, ctx, scope, _, tenant in reversed(chain):
                if tenant is None:
                    tenant = ctx.tenant_id or tenant_of(ctx)
                counts[tenant] = counts.get(tenant, 0) + 1
                rebuilt = (call, ctx, scope, rebuilt, tenant)
            assert rebuilt is not None
            self._calls[rid] = rebuilt
        self._tenants = counts
        return counts

    def unregister(self, key: InflightKey, call: Cancellable) -> None:
        """Forget ``call``."""
        calls = self._calls
        entry = calls.get(key)
        if entry is None:
            return
        removed: _Entry | None
        if entry[0] is call:  # the usual case: the only call under its id
            rest, removed = entry[3], entry
        else:
            rest, removed = _without(entry, call)
            if removed is None:
                return
        if rest is None:
            del calls[key]
        else:
            calls[key] = rest
        size = self._size = self._size - 1
        counts = self._tenants
        if counts is not None:
            if size < self.max_per_tenant // 2:
                self._tenants = None  # far from any tenant's bound: stop counting
                return
            tenant = removed[4]
            assert tenant is not None  # counted entries carry their tenant
            n = counts.get(tenant, 1) - 1
            if n > 0:
                counts[tenant] = n
            else:
                counts.pop(tenant, None)

    def cancel_local(self, tenant: str, owner: str, request_id: str,
                     reason: str | None = None) -> bool:
        """Cancel the calls ``request_id`` of caller scope ``owner`` in ``tenant`` running
        here."""
        entry = self._calls.get(request_id)
        found: list[Cancellable] = []
        while entry is not None:
            ctx = entry[1]
            if (entry[4] or tenant_of(ctx)) == tenant and caller_scope(ctx, entry[2]) == owner:
                found.append(entry[0])
            entry = entry[3]
        for call in found:
            call.cancel(reason[:MAX_REASON] if reason is not None else None)
        return bool(found)

    def cancel(self, ctx: RequestContext, request_id: str, reason: str | None = None,
               scope: Scope | None = None) -> bool:
        """Cancel the caller's own running call ``request_id`` here; False if there is none."""
        return self.cancel_local(tenant_of(ctx), caller_scope(ctx, scope), request_id, reason)

    async def cancel_anywhere(self, ctx: RequestContext, request_id: str,
                              reason: str | None = None, scope: Scope | None = None) -> bool:
        """Cancel the caller's own call wherever it runs: here first (no round trip),
        then through the bus on the other instances."""
        tenant = tenant_of(ctx)
        owner = caller_scope(ctx, scope)
        if self.cancel_local(tenant, owner, request_id, reason):
            return True
        bus = self.bus
        if bus is None:
            return False
        return await bus.cancel_remote(tenant, owner, request_id,
                                       reason[:MAX_REASON] if reason is not None else None)

    def __len__(self) -> int:
        return self._size

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and request_id in self._calls
