"""DeadlineMiddleware: a hard server-side deadline per request (PROTOCOL.md section 6).

The budget comes from ``qos.timeout_ms`` (and ``meta.timeout_ms`` of 2.0.1
clients) and the ``X-Timeout-Ms`` header — the smaller applies — else from the
configured default; it is capped by ``max_timeout_ms``. It becomes
``ctx.deadline`` (absolute, ``time.monotonic()``) and is enforced with an anyio
``CancelScope`` around everything inside this layer, cancelled at the deadline
by one shared loop timer (:class:`aduib_asgi.qos.timer.DeadlineTimer`; a
timer per request costs several µs on uvloop). The request's
:class:`DeadlineScope` is stored at ``ctx.extras["aduib.deadline_scope"]``: a
streaming endpoint that enforces the deadline in-band sets its ``deadline`` to
``math.inf``. On expiry before the response started the
client gets 504 with code 5003; a response already streaming is finished
in-band through ``scope["aduib.stream_abort"]`` (error 5003 + end frames) or by
ending its body.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.qos.interrupt import end_interrupted, note_progress
from aduib_asgi.qos.keys import lookup, method_spec
from aduib_asgi.qos.task_scope import TaskCancelScope
from aduib_asgi.qos.timer import DeadlineTimer, Timed
from aduib_asgi.responses import send_error

__all__ = ["DEADLINE_SCOPE_KEY", "DeadlineMiddleware", "DeadlineScope"]

#: ``ctx.extras`` key of the request's :class:`DeadlineScope` (streaming contract).
DEADLINE_SCOPE_KEY = "aduib.deadline_scope"
_TIMEOUT_HEADER = b"x-timeout-ms"


def _bad_header(value: bytes) -> RpcError:
    return RpcError(2003, "X-Timeout-Ms must be a non-negative number of milliseconds",
                    details=[{"type": "value_error", "field": "X-Timeout-Ms",
                              "reason": f"not a valid timeout: {value[:32].decode('latin-1')!r}"}])


def _header_timeout(value: bytes) -> float | None:
    try:
        ms = float(value)
    except ValueError:
        raise _bad_header(value) from None
    if not math.isfinite(ms) or ms < 0:
        raise _bad_header(value)
    return ms if ms > 0 else None


def _meta_timeout(payload: Any) -> float | None:
    """``meta.timeout_ms`` as 2.0.1 clients send it; a bad value is ignored (unknown member)."""
    if not isinstance(payload, dict):
        return None
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        return None
    v = meta.get("timeout_ms")
    if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf:
        return _as_ms(v)
    return None


def _as_ms(value: float) -> float:
    """A millisecond count as a float; beyond a float's range it is simply "forever"."""
    try:
        return float(value)
    except OverflowError:  # an int of hundreds of digits
        return math.inf


class DeadlineMiddleware:
    """Enforce a per-request deadline with an anyio cancel scope.

    ``default_timeout_ms``: the budget of a request that names none (None: no
    deadline). ``max_timeout_ms``: the cap on any budget (None: uncapped).
    ``method_timeouts``: default budgets per method, service or path (see
    :mod:`aduib_asgi.qos.keys`); a registered method's ``timeout_ms`` option
    (``registry=`` given) counts too. A timeout of 0 means "none from this source".
    """

    layer_name = "deadline"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_timeout_ms: float | None = None,
        max_timeout_ms: float | None = 300_000,
        method_timeouts: Mapping[str, float] | None = None,
        registry: Any = None,
        header: str = "X-Timeout-Ms",
    ) -> None:
        self.app = app
        self.default_timeout_ms = default_timeout_ms
        self.max_timeout_ms = max_timeout_ms
        self.method_timeouts = dict(method_timeouts or {})
        self.registry = registry
        self._header = header.lower().encode("latin-1")
        self._timer: DeadlineTimer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await run_with_context(self._http, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _budget_ms(self, ctx: RequestContext, scope: Scope) -> float | None:
        budget: float | None = None
        env = ctx.envelope
        if env is not None:
            qos = env.qos
            if qos is not None and qos.timeout_ms:
                budget = _as_ms(qos.timeout_ms)
            payload = ctx.payload
            if isinstance(payload, dict) and "meta" in payload:  # a 2.0.1 client's
                meta = _meta_timeout(payload)
                if meta is not None and (budget is None or meta < budget):
                    budget = meta
        raw = ctx.header(self._header)
        if raw is not None:
            hdr = _header_timeout(raw)
            if hdr is not None and (budget is None or hdr < budget):
                budget = hdr
        if budget is None:
            budget = (self._default_for(ctx, scope) if self.method_timeouts or self.registry
                      is not None else self.default_timeout_ms)
        cap = self.max_timeout_ms
        if cap is not None and budget is not None and budget > cap:
            budget = cap
        if budget is not None and budget == math.inf:
            return None  # uncapped and beyond any clock: no deadline
        return budget

    def _default_for(self, ctx: RequestContext, scope: Scope) -> float | None:
        if self.method_timeouts:
            v = lookup(self.method_timeouts, ctx, scope)
            if v is not None:
                return float(v)
        if self.registry is not None:
            spec = method_spec(ctx, self.registry)
            if spec is not None:
                v = spec.options.get("timeout_ms")
                if v is not None:
                    return float(v)
        return self.default_timeout_ms

    def _http(self, scope: Scope, receive: Receive, send: Send,
              ctx: RequestContext) -> Awaitable[Any]:
        """The request's budget; the awaitable that runs the app under it (or answers).

        Not a coroutine itself: a request without a deadline costs the stack no
        frame here (the inner app's own awaitable is handed back).
        """
        try:
            budget = self._budget_ms(ctx, scope)
        except RpcError as exc:
            return send_error(scope, send, exc, ctx=ctx)
        if budget is not None:
            ctx.set_deadline_ms(budget)
        deadline = ctx.deadline
        if deadline is None:
            return self.app(scope, receive, send)
        return self._enforced(scope, receive, send, ctx, deadline)

    async def _enforced(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                        deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            await self._expired(scope, send, ctx, None)
            return
        timer = self._loop_timer()
        cancel_scope: anyio.CancelScope | TaskCancelScope
        if timer is None:  # not asyncio (trio): anyio's own deadline, on its clock
            cancel_scope = anyio.CancelScope(deadline=anyio.current_time() + left)
        else:  # the shared timer cancels the task natively (an anyio scope: several µs)
            cancel_scope = TaskCancelScope()
        responder = DeadlineScope(send, cancel_scope, timer)
        ctx.extras[DEADLINE_SCOPE_KEY] = responder
        if timer is None:
            with cancel_scope:
                await self.app(scope, receive, responder)
        else:
            try:
                with cancel_scope:
                    timer.add(responder, timer.loop.time() + left)
                    await self.app(scope, receive, responder)
            finally:
                timer.remove(responder)
                responder.guarded = False  # the layer's own 5003 / stream abort may send
        if cancel_scope.cancelled_caught:
            await self._expired(scope, send, ctx, responder)

    def _loop_timer(self) -> DeadlineTimer | None:
        """The shared deadline timer of the running asyncio loop (None on other loops)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        timer = self._timer
        if timer is None or timer.loop is not loop:
            timer = self._timer = DeadlineTimer(loop)
        return timer

    async def _expired(
        self, scope: Scope, send: Send, ctx: RequestContext, responder: DeadlineScope | None
    ) -> None:
        await end_interrupted(scope, send, ctx, RpcError(5003, "Deadline exceeded"), responder,
                              "deadline exceeded")


class DeadlineScope(Timed):
    """One request's deadline: its cancel scope, and whether the response started.

    Published at ``ctx.extras["aduib.deadline_scope"]``. ``deadline`` is on
    anyio's clock; setting it moves the deadline (``math.inf``: no deadline, as a
    streaming endpoint does once it enforces ``ctx.deadline`` in-band). It is
    also the request's ``send`` wrapper, recording whether the response
    started / finished (to answer 504 or end it).
    """

    __slots__ = ("_timer", "cancel_scope", "finished", "guarded", "send", "started")

    def __init__(self, send: Send, cancel_scope: anyio.CancelScope | TaskCancelScope,
                 timer: DeadlineTimer | None) -> None:
        super().__init__()
        self.send = send
        self.started = False
        self.finished = False
        self.cancel_scope = cancel_scope
        self._timer = timer
        #: While the app runs under a :class:`TaskCancelScope`: nothing goes out once
        #: it is cancelled (see ``__call__``).
        self.guarded = isinstance(cancel_scope, TaskCancelScope)

    @property
    def deadline(self) -> float:
        scope = self.cancel_scope
        return scope.deadline if isinstance(scope, anyio.CancelScope) else self.when

    @deadline.setter
    def deadline(self, value: float) -> None:
        scope = self.cancel_scope
        if isinstance(scope, anyio.CancelScope):
            scope.deadline = value
        elif self._timer is not None:
            self._timer.add(self, value)

    def cancel(self) -> None:
        """Cancel the request now (as the deadline would)."""
        self.cancel_scope.cancel()

    def expire(self) -> None:
        self.cancel_scope.cancel()

    async def __call__(self, message: Message) -> None:
        if self.guarded and self.cancel_scope.cancel_called:
            # past the deadline nothing more goes out, as under an anyio scope (whose
            # every await raises once cancelled): code that swallowed the task's
            # cancellation is stopped here, and the layer answers 5003
            raise asyncio.CancelledError
        note_progress(self, message)
        await self.send(message)
