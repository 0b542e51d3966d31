"""AdmissionMiddleware: bulkheads with priority queues, load shedding, draining.

Concurrency limits apply per method, per service, per HTTP path (``limits``),
per registered method (``registry.register(..., concurrency=N)``), per tenant
(``tenant_limit``) and globally (``max_concurrency``). A request takes a slot in
every bulkhead that applies (most specific first). When one is full it waits in
a queue ordered by ``qos.priority`` (CRITICAL first, FIFO within a priority),
bounded by ``max_queue`` and ``queue_timeout_s`` and by the request's deadline
(queue time counts against it). Shed or timed-out requests answer 429 (5021)
with ``Retry-After``; while draining for shutdown, 503 (5002).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.gate import ADMISSION, defer, lifespan_gate
from aduib_asgi.models import parse_method
from aduib_asgi.qos.bulkhead import UNBOUNDED, Bulkhead, Rejected
from aduib_asgi.qos.interrupt import end_interrupted, note_progress
from aduib_asgi.qos.keys import METHOD_SPEC_KEY, method_spec
from aduib_asgi.qos.metrics import record_rejection
from aduib_asgi.qos.shutdown import ShutdownController
from aduib_asgi.qos.task_scope import TaskCancelScope
from aduib_asgi.responses import refuse_websocket, send_error

__all__ = ["AdmissionMiddleware"]

logger = logging.getLogger("aduib_asgi.qos.admission")

DEADLINE_SCOPE_KEY = "aduib.deadline_scope"
_PRIORITY_NAMES = {b"low": 0, b"normal": 1, b"high": 2, b"critical": 3,
                   b"0": 0, b"1": 1, b"2": 2, b"3": 3}
_MAX_PLANS = 4096
_NO_PLAN: tuple[Bulkhead, ...] = ()


class AdmissionMiddleware:
    """Bulkheads (concurrency limits) with a priority-ordered wait queue and shedding.

    ``limits`` maps a method (``"rpc.v2/Slow/work"``), a service (``"Slow"``) or an
    HTTP path (``"/reports"``) to its concurrency limit. With ``registry=`` a
    method's ``concurrency`` (and ``max_queue``) registration options apply too.
    ``tenant_limit`` caps each tenant's concurrent requests. ``shutdown`` is the
    :class:`ShutdownController` to drain with: pass one (as the demo CLI does) to
    have in-flight requests cancelled when its grace period ends; without one, a
    controller that drains on ``lifespan.shutdown`` but never cancels is created
    (and requests skip the per-request cancel scope). ``priority_header`` is read when
    there is no envelope (``0``-``3`` or ``low``/``normal``/``high``/``critical``).
    """

    layer_name = "admission"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrency: int | None = None,
        limits: Mapping[str, int] | None = None,
        tenant_limit: int | None = None,
        max_queue: int = 64,
        queue_timeout_s: float = 10.0,
        retry_after_s: int = 1,
        registry: Any = None,
        shutdown: ShutdownController | None = None,
        priority_header: str = "X-Priority",
    ) -> None:
        self.app = app
        self.registry = registry
        # Without a controller from the app owner nothing will cancel in-flight
        # requests after a grace period, so none pays for a cancel scope.
        self.shutdown = (shutdown if shutdown is not None
                         else ShutdownController(cancel_after_grace=False))
        self.shutdown.add_listener(self._on_drain)
        self._priority_header = priority_header.lower().encode("latin-1")
        #: The bulkheads of ``limits`` / ``max_concurrency`` by key ("" for the global
        #: one), and removed ones still held: configured again, they count their holders.
        self._known: dict[str, Bulkhead] = {}
        self._registered: dict[str, Bulkhead] = {}
        self._tenants: dict[str, Bulkhead] = {}
        self._ws_check = _AdmissionCheck(self, _NO_PLAN)
        self.configure(max_concurrency=max_concurrency, limits=limits,
                       tenant_limit=tenant_limit, max_queue=max_queue,
                       queue_timeout_s=queue_timeout_s, retry_after_s=retry_after_s)

    def configure(
        self,
        *,
        max_concurrency: int | None = None,
        limits: Mapping[str, int] | None = None,
        tenant_limit: int | None = None,
        max_queue: int = 64,
        queue_timeout_s: float = 10.0,
        retry_after_s: int = 1,
    ) -> None:
        """Apply new limits to the running layer (runtime configuration), in one step.

        Arguments as the constructor's; every one left out returns to its default.
        Nothing is applied when one is invalid (``ValueError``). Requests already
        holding slots keep them: a lowered limit admits nobody new until enough of
        them finished; a raised one admits waiting requests at once; a removed one
        lets its waiters through. A request is admitted under the limits in force
        when it reaches this layer. Synchronous (no await): no request sees half a
        change; the hot path reads the same attributes as before.
        """
        limits = dict(limits or {})
        for key, value in limits.items():
            if not key or int(value) < 1:
                raise ValueError(f"admission limit {key!r}: must be at least 1")
        if max_concurrency is not None and max_concurrency < 0:
            raise ValueError("max_concurrency must not be negative")
        if tenant_limit is not None and tenant_limit < 0:
            raise ValueError("tenant_limit must not be negative")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        if not queue_timeout_s >= 0:
            raise ValueError("queue_timeout_s must not be negative")
        # valid: from here on nothing raises
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._retry_after = str(max(0, int(retry_after_s)))
        wanted = {k: int(v) for k, v in limits.items()}
        if max_concurrency:
            wanted[""] = max_concurrency
        for key, b in list(self._known.items()):
            if key not in wanted:
                self._retire(key, b, max_queue)
        for key, limit in wanted.items():
            # a method's registered bulkhead becomes its configured one: same holders
            known = self._known.get(key) or self._registered.pop(key, None)
            if known is None:
                self._known[key] = Bulkhead(key or "*", limit, max_queue=max_queue)
            else:
                known.resize(limit, max_queue)
                self._known[key] = known
        self._global: Bulkhead | None = self._known[""] if max_concurrency else None
        self._static: dict[str, Bulkhead] = {k: self._known[k] for k in limits}
        for name, b in self._registered.items():
            spec = self.registry.get(name) if self.registry is not None else None
            queue = spec.options.get("max_queue") if spec is not None else None
            b.resize(b.limit, int(queue) if queue is not None else max_queue)
        self.tenant_limit = tenant_limit or None
        for b in self._tenants.values():
            b.resize(tenant_limit or UNBOUNDED, max_queue)
        # derived tables: new ones (a request that already looked one up keeps it)
        self._plans: dict[tuple[str | None, str], tuple[Bulkhead, ...]] = {}
        #: Bulkheads that depend on the method: a request whose method the layer
        #: cannot see (a task submission, a dispatcher-parsed envelope) defers them.
        self._by_method = (self.registry is not None
                           or any(not k.startswith("/") for k in self._static))
        # the gate checks: per plan a request may hold, and one holding nothing
        self._checks: dict[tuple[str | None, str], _AdmissionCheck] = {}

    # -- ASGI --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t == "http":
            await run_with_context(self._http, scope, receive, send)
        elif t == "websocket":
            if self.shutdown.draining:
                record_rejection("*", "draining", 1)  # normal priority: a WebSocket has no envelope
                await refuse_websocket(scope, send, self._draining_error(), close_code=1012)
                return
            # each message's method is admitted by the gate (aduib_asgi.gate)
            await run_with_context(self._websocket, scope, receive, send)
        elif t == "lifespan":
            # the app's bulkheads for work that runs outside any request (task runs)
            lifespan_gate(scope).add(self._ws_check)
            await self.app(scope, self._lifespan_receive(receive), send)
        else:
            await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.shutdown.start_draining()
            return message

        return wrapped

    async def _websocket(self, scope: Scope, receive: Receive, send: Send,
                         ctx: RequestContext) -> None:
        defer(ctx, self._ws_check)
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        shutdown = self.shutdown
        if shutdown.draining:
            await self._reject_draining(scope, send, ctx)
            return
        # per method *and* path: a path limit (e.g. on /v1/rpc) applies whichever
        # endpoint the method was first seen on
        key = (ctx.method, scope["path"])
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(key, ctx, scope)
        if ctx.method is None and self._by_method:  # a method named later: the gate's turn
            check = self._checks.get(key)
            if check is None:
                check = _AdmissionCheck(self, plan, holds_tenant=bool(self.tenant_limit))
                if len(self._checks) < _MAX_PLANS:
                    self._checks[key] = check
            defer(ctx, check)
        tenant = None
        if self.tenant_limit:
            tenant = self._tenant_bulkhead(ctx)
            plan = (*plan[:-1], tenant, plan[-1]) if self._global is not None else (*plan, tenant)
        if plan:
            try:
                await self._acquire(plan, ctx)
            except Rejected as exc:
                await self._reject(scope, send, ctx, exc)
                return
            except RpcError as exc:
                await send_error(scope, send, exc, ctx=ctx)
                return
        if not shutdown.cancel_after_grace:
            shutdown._counted += 1  # shutdown.begin(), without a call
            try:
                await self.app(scope, receive, send)
            finally:
                shutdown.end()
                if plan:  # the tenant's bulkhead is in the plan when there is one
                    self._release(plan, tenant)
            return
        try:
            responder = _AdmissionResponder(send)
            with responder:
                shutdown.enter(responder)
                try:
                    await self.app(scope, receive, responder)
                finally:
                    shutdown.exit(responder)
            if responder.cancelled_caught:
                await self._aborted(scope, send, ctx, responder)
        finally:
            if plan:
                self._release(plan, tenant)

    def _release(self, plan: tuple[Bulkhead, ...], tenant: Bulkhead | None) -> None:
        for b in plan:
            b.release()
        if tenant is not None and tenant.idle and len(self._tenants) > 1024:
            self._tenants.pop(tenant.name, None)

    # -- admission -----------------------------------------------------------------------

    async def _acquire(self, plan: tuple[Bulkhead, ...], ctx: RequestContext) -> None:
        """Take a slot in every bulkhead of ``plan`` (all, or none and raise)."""
        priority = self._priority(ctx) if ctx.envelope is None else ctx.priority
        n = 0
        for b in plan:  # not saturated: no awaits, no clock reads
            if not b.try_acquire():
                break
            n += 1
        else:
            return
        await self._wait_for_slots(plan, n, priority, ctx)

    async def _wait_for_slots(self, plan: tuple[Bulkhead, ...], n: int, priority: int,
                              ctx: RequestContext) -> None:
        """Queue for ``plan[n:]`` holding ``plan[:n]``; release them all on failure."""
        give_up = time.monotonic() + self.queue_timeout_s
        # With DeadlineMiddleware outside, its cancel scope ends the wait (504);
        # alone, the wait is bounded by ctx.deadline here.
        deadline = None if DEADLINE_SCOPE_KEY in ctx.extras else ctx.deadline
        for i in range(n, len(plan)):
            now = time.monotonic()
            limit = give_up
            if deadline is not None and deadline < limit:
                limit = deadline
            try:
                await plan[i].acquire(priority, max(0.0, limit - now))
            except Rejected as exc:
                for b in plan[:i]:
                    b.release()
                if (exc.reason == "timeout" and deadline is not None
                        and time.monotonic() >= deadline):
                    raise RpcError(5003, "Deadline exceeded while queued") from None
                raise
            except BaseException:
                for b in plan[:i]:
                    b.release()
                raise

    def _priority(self, ctx: RequestContext) -> int:
        if ctx.envelope is None:
            raw = ctx.header(self._priority_header)
            if raw is not None:
                p = _PRIORITY_NAMES.get(raw.strip().lower())
                if p is None:
                    raise RpcError(2003, "X-Priority must be 0-3 or low|normal|high|critical",
                                   details=[{"type": "value_error", "field": "X-Priority",
                                             "reason": "unknown priority"}])
                ctx.priority = p
        return ctx.priority

    def _plan(self, key: tuple[str | None, str], ctx: RequestContext,
              scope: Scope | None) -> tuple[Bulkhead, ...]:
        """The bulkheads of a method/path, most specific first, then the global one
        (cached per key)."""
        method, path = key
        found: list[Bulkhead] = []
        static = self._static
        if method is not None:
            b = static.get(method)
            if b is None:
                b = self._registered_bulkhead(ctx, method)
            if b is not None:
                found.append(b)
            service = ctx.service if method == ctx.method else _service_of(method)
            if service is not None and service in static:
                found.append(static[service])
        if path in static:
            found.append(static[path])
        if self._global is not None:  # last: the tenant's bulkhead goes before it
            found.append(self._global)
        plan = tuple(found) if found else _NO_PLAN
        if len(self._plans) < _MAX_PLANS:
            self._plans[key] = plan
        return plan

    def _registered_bulkhead(self, ctx: RequestContext, method: str) -> Bulkhead | None:
        spec = method_spec(ctx, self.registry) if method == ctx.method else None
        if spec is None or spec.method != method:
            spec = ctx.extras.get(METHOD_SPEC_KEY)
            if (spec is None or spec.method != method) and self.registry is not None:
                spec = self.registry.get(method)
        if spec is None:
            return None
        limit = spec.options.get("concurrency")
        if not limit:
            return None
        b = self._registered.get(spec.method)
        if b is None:
            b = Bulkhead(spec.method, int(limit),
                         max_queue=int(spec.options.get("max_queue", self.max_queue)))
            self._registered[spec.method] = b
        return b

    def _tenant_bulkhead(self, ctx: RequestContext) -> Bulkhead:
        tenant = ctx.tenant_id or "default"
        b = self._tenants.get(tenant)
        if b is None:
            assert self.tenant_limit
            b = Bulkhead(tenant, self.tenant_limit, max_queue=self.max_queue)
            self._tenants[tenant] = b
        return b

    def _retire(self, key: str, b: Bulkhead, max_queue: int) -> None:
        """A configured limit removed: back to the method's registered ``concurrency``
        (its holders still counted), else no limit (its waiters go through)."""
        spec = (self.registry.get(key) if self.registry is not None and key
                and not key.startswith("/") else None)
        limit = spec.options.get("concurrency") if spec is not None else None
        if spec is not None and limit and spec.method not in self._registered:
            queue = spec.options.get("max_queue")
            b.resize(int(limit), int(queue) if queue is not None else max_queue)
            self._registered[spec.method] = b
            del self._known[key]
            return
        b.resize(UNBOUNDED)
        if b.idle:  # nobody to count again if it comes back
            del self._known[key]

    def _bulkheads(self) -> list[Bulkhead]:
        """Every bulkhead (those of removed limits too: a request may still hold one)."""
        return [*self._known.values(), *self._registered.values(), *self._tenants.values()]

    def _on_drain(self) -> None:
        for b in self._bulkheads():
            b.drain()

    # -- rejections ----------------------------------------------------------------------

    async def _reject(self, scope: Scope, send: Send, ctx: RequestContext,
                      exc: Rejected) -> None:
        if exc.reason == "draining":
            await self._reject_draining(scope, send, ctx)
            return
        await send_error(scope, send, self._rejection(exc, ctx), ctx=ctx)

    def _rejection(self, exc: Rejected, ctx: RequestContext) -> RpcError:
        """5021 for a shed or timed-out request (5002 while draining); counted."""
        if exc.reason == "draining":
            record_rejection("*", "draining", ctx.priority)
            return self._draining_error()
        b = exc.bulkhead  # a per-tenant limit is labelled "tenant": never a client's name
        record_rejection("tenant" if self._tenants.get(b.name) is b else b.name, exc.reason,
                         ctx.priority)
        message = ("Queue full: request shed" if exc.reason == "shed"
                   else "Timed out waiting for a concurrency slot")
        return RpcError(
            5021, message, headers={"Retry-After": self._retry_after},
            details=[{"type": "admission", "reason": exc.reason,
                      "metadata": {"limit": exc.bulkhead.name, "priority": ctx.priority,
                                   "retry_after_s": int(self._retry_after)}}],
        )

    # -- the decision for a method named later (aduib_asgi.gate) ---------------------------

    async def hold(self, ctx: RequestContext, scope: Scope | None, method: str,
                   held: tuple[Bulkhead, ...] = (), *, holds_tenant: bool = False,
                   refuse_draining: bool = True) -> Callable[[], None]:
        """Take a slot in every bulkhead a call of ``method`` needs (but those in
        ``held``, and the tenant's when the request ``holds_tenant`` already),
        queueing by priority; returns the release. Raises 5021 / 5002 / 5003.

        The same bulkheads, queue and refusals as an HTTP request of that method:
        WebSocket messages and task runs share one concurrency limit with it.
        ``refuse_draining=False`` (task runs: the task manager hands unfinished
        tasks back when it stops) lets the call run while the server drains.
        """
        if self.shutdown.draining:
            if not refuse_draining:
                return _nothing
            record_rejection("*", "draining", ctx.priority)
            raise self._draining_error()
        path = scope.get("path", "") if scope is not None else ""
        key = (method, path)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(key, ctx, scope)
        if held:
            plan = tuple(b for b in plan if b not in held)
        tenant = None
        if self.tenant_limit and not holds_tenant:
            tenant = self._tenant_bulkhead(ctx)
            plan = (*plan[:-1], tenant, plan[-1]) if self._global is not None else (*plan, tenant)
        if plan:
            try:
                await self._acquire(plan, ctx)
            except Rejected as exc:
                if exc.reason == "draining" and not refuse_draining:
                    return _nothing
                raise self._rejection(exc, ctx) from None
        return partial(self._release, plan, tenant)

    async def _reject_draining(self, scope: Scope, send: Send, ctx: RequestContext) -> None:
        record_rejection("*", "draining", ctx.priority)
        await send_error(scope, send, self._draining_error(), ctx=ctx)

    def _draining_error(self) -> RpcError:
        return RpcError(5002, "Server is shutting down",
                        headers={"Retry-After": self._retry_after, "Connection": "close"})

    async def _aborted(self, scope: Scope, send: Send, ctx: RequestContext,
                       responder: _AdmissionResponder) -> None:
        """The grace period ended while this request was still running."""
        await end_interrupted(scope, send, ctx, RpcError(5002, "Server is shutting down"),
                              responder, "server shutting down")


class _AdmissionCheck:
    """The layer's decision as a gate check: ``held`` are the bulkheads the request
    itself already holds (never taken twice). Without a scope (a task run, another
    context) nothing is held."""

    __slots__ = ("held", "holds_tenant", "layer")
    stage = ADMISSION

    def __init__(self, layer: AdmissionMiddleware, held: tuple[Bulkhead, ...], *,
                 holds_tenant: bool = False) -> None:
        self.layer = layer
        self.held = held
        self.holds_tenant = holds_tenant

    async def enter(self, ctx: RequestContext, scope: Scope | None,
                    method: str) -> Callable[[], None]:
        if scope is None:  # a task run, outside any request
            return await self.layer.hold(ctx, None, method, refuse_draining=False)
        return await self.layer.hold(ctx, scope, method, self.held,
                                     holds_tenant=self.holds_tenant)


def _nothing() -> None:
    return None


def _service_of(method: str) -> str | None:
    parts = parse_method(method)
    return parts[0] if parts is not None else None


class _AdmissionResponder(TaskCancelScope):
    """An in-flight request: its cancel scope (for shutdown aborts: native task
    cancellation on asyncio, as an anyio ``CancelScope`` per request costs several µs
    for the rare request a shutdown ends), and whether the response started / finished."""

    __slots__ = ("finished", "send", "started")

    def __init__(self, send: Send) -> None:
        TaskCancelScope.__init__(self)
        self.send = send
        self.started = False
        self.finished = False

    async def __call__(self, message: Message) -> None:
        note_progress(self, message)
        await self.send(message)
