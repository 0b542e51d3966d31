"""The gate: "may this call of method M, by this caller, in this tenant, proceed now?"

The HTTP layers decide per request, when the request passes them. Some entry
paths name their method only later — each WebSocket message, a
``TaskService/Submit`` naming a target method, an envelope the dispatcher
parses itself (no content layer in front) — so the same decisions are taken
again here, by the same objects the layers use:

====== ================================================================== ===========
stage  decision (owner)                                                   refusal
====== ================================================================== ===========
tenant the message's ``metadata.tenant_id`` resolved and *applied*          2002/2003
       (``TenantScopeMiddleware``; WebSockets only)
auth   roles, scopes, ``require_auth``, tenant binding (``AuthMiddleware``) 3000-3012
rate   the method's quotas (``RateLimitMiddleware``)                        5020 (429)
admit  the method's bulkheads, priority queue, draining                   5021 / 5002
       (``AdmissionMiddleware``), held until the call ends
====== ================================================================== ===========

How it fits together: a layer that passes a request whose method it could not
see (``ctx.method`` is None, or a WebSocket handshake) adds its decision to the
request's gate (:func:`defer`). The entry path, once it knows the method, runs
``async with admit(ctx, method, scope): ...`` around the call: every deferred
decision in stage order; the first refusal raises its :class:`RpcError` (the
same code, message, details and ``Retry-After`` as over HTTP), and whatever
was taken (bulkhead slots, tenant bindings) is given back when the block ends.
A request whose layers saw the method (a unary call with the content layer in
front: the usual case) has no gate, and ``admit`` costs a dictionary lookup.

Tasks: the tenant, auth and rate-limit decisions are taken at
``TaskService/Submit`` (a refused task is never stored); admission is taken
when the task *runs* (:meth:`Gate.admission`, kept by the task manager): a
running task holds a slot of its method's bulkheads like any HTTP call, so
``concurrency=1`` holds across HTTP, WebSocket and tasks alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from starlette.types import Scope

from aduib_asgi.auth.rbac import authorize_method
from aduib_asgi.context import RequestContext

__all__ = [
    "ADMISSION",
    "GATE_KEY",
    "RATE",
    "TENANT",
    "Check",
    "Gate",
    "Release",
    "admit",
    "defer",
    "gate_of",
    "lifespan_gate",
]

#: ``ctx.extras`` key of the request's :class:`Gate`.
GATE_KEY = "aduib.gate"
TENANT, AUTH, RATE, ADMISSION = 0, 1, 2, 3

#: Gives back what a check took (a bulkhead slot, a tenant binding).
Release = Callable[[], None]


class Check(Protocol):
    """One layer's decision for a method named after the layer ran."""

    #: :data:`TENANT`, :data:`RATE` or :data:`ADMISSION` (auth is the auth layer's late check).
    stage: int

    async def enter(self, ctx: RequestContext, scope: Scope | None,
                    method: str) -> Release | None:
        """Admit the call (returning what to release when it ends) or raise RpcError."""
        ...


class Gate:
    """The deferred decisions of one request, in stage order."""

    __slots__ = ("checks",)

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, check: Check) -> None:
        checks = self.checks
        if check in checks:
            return
        i = len(checks)
        while i and checks[i - 1].stage > check.stage:
            i -= 1
        checks.insert(i, check)

    def admission(self) -> Check | None:
        """The admission decision (a task manager keeps it to admit task runs)."""
        for c in self.checks:
            if c.stage == ADMISSION:
                return c
        return None

    async def enter(self, ctx: RequestContext, scope: Scope | None, method: str, *,
                    until: int = ADMISSION) -> list[Release]:
        """Run every check up to stage ``until``; on a refusal release what was taken."""
        releases: list[Release] = []
        authorized = False
        try:
            for check in self.checks:
                if check.stage > until:
                    break
                if not authorized and check.stage > TENANT:
                    authorize_method(ctx, method)
                    authorized = True
                release = await check.enter(ctx, scope, method)
                if release is not None:
                    releases.append(release)
            if not authorized:
                authorize_method(ctx, method)
        except BaseException:
            _release_all(releases)
            raise
        return releases


def _release_all(releases: list[Release]) -> None:
    for release in reversed(releases):
        release()


def gate_of(ctx: RequestContext) -> Gate:
    """The request's gate (created on first use)."""
    gate: Gate | None = ctx.extras.get(GATE_KEY)
    if gate is None:
        gate = ctx.extras[GATE_KEY] = Gate()
    return gate


def lifespan_gate(scope: Scope) -> Gate:
    """The gate of the app's lifespan scope: layers add the decisions that work
    outside any request needs (admission of task runs); the dispatcher keeps it."""
    gate: Gate | None = scope.get(GATE_KEY)
    if gate is None:
        gate = scope[GATE_KEY] = Gate()
    return gate


def defer(ctx: RequestContext, check: Check) -> None:
    """Ask for ``check`` to run where the request's method becomes known."""
    gate_of(ctx).add(check)


@contextlib.asynccontextmanager
async def admit(ctx: RequestContext, method: str, scope: Scope | None = None, *,
                until: int = ADMISSION) -> AsyncIterator[None]:
    """Pass the gate for ``method`` (tenant, auth, rate limit, admission) for the block.

    Raises the refusing layer's RpcError. ``until=RATE`` stops before admission
    (a task submission: admission applies when the task runs).
    """
    gate: Gate | None = ctx.extras.get(GATE_KEY)
    if gate is None:
        authorize_method(ctx, method)
        yield
        return
    releases = await gate.enter(ctx, scope, method, until=until)
    try:
        yield
    finally:
        _release_all(releases)
