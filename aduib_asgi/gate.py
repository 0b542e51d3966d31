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
request's gate (:func:`defer`, kept in ``ctx.deferred``). The entry path, once
it knows the method, runs ``async with admit(ctx, method, scope): ...`` around
the call: every deferred decision in stage order; the first refusal raises its
:class:`RpcError` (the same code, message, details and ``Retry-After`` as over
HTTP), and whatever was taken (bulkhead slots, tenant bindings) is given back
when the block ends. A request whose layers saw the method (a unary call with
the content layer in front: the usual case) has no gate (``ctx.deferred`` is
None): entry paths test that attribute and go on.

Tasks: the tenant, auth and rate-limit decisions are taken at
``TaskService/Submit`` (a refused task is never stored); admission is taken
when the task *runs* (the admission layer's decision, offered on the app's
lifespan scope and kept by the task manager): a running task holds a slot of
its method's bulkheads like any HTTP call, so ``concurrency=1`` holds across
HTTP, WebSocket and tasks alike.
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
    "admission_of",
    "admit",
    "defer",
    "lifespan_gate",
]

#: Scope key of the lifespan's :class:`Gate` (decisions for work outside requests).
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


def _ordered(checks: list[Check]) -> list[Check]:
    """Stage order, each check once (layers add theirs outermost first)."""
    seen: list[Check] = []
    for c in checks:
        if c not in seen:
            seen.append(c)
    seen.sort(key=_stage)
    return seen


def _stage(check: Check) -> int:
    return check.stage


class Gate:
    """Decisions kept for later, in stage order: the lifespan's (task runs)."""

    __slots__ = ("checks",)

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, check: Check) -> None:
        self.checks = _ordered([*self.checks, check])

    def admission(self) -> Check | None:
        """The admission decision (a task manager keeps it to admit task runs)."""
        for c in self.checks:
            if c.stage == ADMISSION:
                return c
        return None


async def _enter(checks: list[Check], ctx: RequestContext, scope: Scope | None, method: str,
                 until: int) -> list[Release]:
    """Run ``checks`` up to stage ``until``; on a refusal release what was taken."""
    releases: list[Release] = []
    authorized = False
    try:
        for check in _ordered(checks):
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


def lifespan_gate(scope: Scope) -> Gate:
    """The gate of the app's lifespan scope: layers add the decisions that work
    outside any request needs (admission of task runs); the dispatcher keeps it."""
    gate: Gate | None = scope.get(GATE_KEY)
    if gate is None:
        gate = scope[GATE_KEY] = Gate()
    return gate


def defer(ctx: RequestContext, check: Check) -> None:
    """Ask for ``check`` to run where the request's method becomes known
    (kept in ``ctx.deferred``: one list per request that needs one)."""
    deferred = ctx.deferred
    if deferred is None:
        ctx.deferred = [check]
    else:
        deferred.append(check)


def admission_of(ctx: RequestContext) -> Check | None:
    """The admission decision the request's layers deferred, if any."""
    for c in ctx.deferred or ():
        if c.stage == ADMISSION:
            return c
    return None


@contextlib.asynccontextmanager
async def admit(ctx: RequestContext, method: str, scope: Scope | None = None, *,
                until: int = ADMISSION) -> AsyncIterator[None]:
    """Pass the gate for ``method`` (tenant, auth, rate limit, admission) for the block.

    Raises the refusing layer's RpcError. ``until=RATE`` stops before admission
    (a task submission: admission applies when the task runs).
    """
    checks = ctx.deferred
    if not checks:
        authorize_method(ctx, method)
        yield
        return
    releases = await _enter(checks, ctx, scope, method, until)
    try:
        yield
    finally:
        _release_all(releases)
