"""CircuitBreakerMiddleware: per-method (optionally per-tenant) circuit breakers.

Only server-side failures that are retryable per the error table count
(5002, 5003, 6000-6002 and unknown 6xxx by default; never 4xxx, and not the
layers' own refusals 5010/5020/5021). The outcome is read from the error code
the envelope renderer records on the context (``ctx.extras["aduib.error_code"]``),
from an exception escaping the inner app, or — around a plain app — from the
response status (502/503/504). An open breaker answers 503 (5010) with
``Retry-After`` = the time left before it lets a probe through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.errors import ERROR_TABLE, RpcError, error_spec
from aduib_asgi.qos.breaker import CALL, CLOSED, BreakerOpen, BreakerSettings, CircuitBreaker
from aduib_asgi.qos.keys import method_spec
from aduib_asgi.qos.metrics import record_transition, watch_breakers
from aduib_asgi.responses import send_error, to_rpc_error

__all__ = ["ERROR_CODE_KEY", "CircuitBreakerMiddleware", "default_failure_codes"]

#: ``ctx.extras`` key where :func:`aduib_asgi.responses.send_error` records the code.
ERROR_CODE_KEY = "aduib.error_code"
_NOT_COUNTED = frozenset({5010, 5020, 5021})
_FAILURE_STATUSES = frozenset({502, 503, 504})
_MAX_BREAKERS = 4096


def default_failure_codes() -> frozenset[int]:
    """The table's retryable server-side codes, minus the layers' own refusals."""
    return frozenset(c for c, s in ERROR_TABLE.items()
                     if c >= 5000 and s.retryable and c not in _NOT_COUNTED)


def _default_is_failure(code: int) -> bool:
    return 5000 <= code <= 6999 and code not in _NOT_COUNTED and error_spec(code).retryable


class CircuitBreakerMiddleware:
    """Reject calls to a failing method fast (503 5010) until it recovers.

    ``settings`` are the default :class:`BreakerSettings`; ``overrides`` maps a
    method, service or path to its own settings, or to None to exempt it (a
    registered method's ``circuit_breaker`` option — settings or False — counts
    too, with ``registry=``). ``per_tenant`` keeps one breaker per method and
    tenant. ``failure_codes`` replaces the default set of counted codes.
    """

    layer_name = "circuit"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_http"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: BreakerSettings | None = None,
        overrides: Mapping[str, BreakerSettings | None] | None = None,
        per_tenant: bool = False,
        failure_codes: Iterable[int] | None = None,
        registry: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.settings = settings or BreakerSettings()
        self.overrides = dict(overrides or {})
        self.per_tenant = per_tenant
        self.registry = registry
        self._clock = clock
        codes = frozenset(failure_codes) if failure_codes is not None else None
        self._is_failure: Callable[[int], bool] = (
            _default_is_failure if codes is None else codes.__contains__)
        self._breakers: dict[str, CircuitBreaker | None] = {}
        self._known: set[str] = set()  # methods found registered (bounded)
        watch_breakers(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await run_with_context(self._http, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def breaker(self, name: str) -> CircuitBreaker | None:
        """The breaker kept for ``name`` (method or path; ``method\\x00tenant`` per tenant)."""
        return self._breakers.get(name)

    def states(self) -> Iterator[tuple[str, str]]:
        for name, b in list(self._breakers.items()):
            if b is not None:
                yield name, b.state

    def _registered(self, method: str) -> bool:
        if self.registry.get(method) is None:
            return False
        if len(self._known) < _MAX_BREAKERS:
            self._known.add(method)
        return True

    def _new_breaker(self, name: str, ctx: RequestContext, scope: Scope) -> CircuitBreaker | None:
        settings = self._settings_for(ctx, scope)
        breaker = (None if settings is None else
                   CircuitBreaker(name, settings, clock=self._clock, listener=_on_transition))
        breakers = self._breakers
        if len(breakers) >= _MAX_BREAKERS:
            # full (client-chosen paths or tenants on a plain app): forget the closed
            # ones (their windows restart); open and half-open ones are kept
            for key in [k for k, b in breakers.items() if b is None or b.state == "closed"]:
                del breakers[key]
        if len(breakers) < _MAX_BREAKERS:
            breakers[name] = breaker
        return breaker

    def _settings_for(self, ctx: RequestContext, scope: Scope) -> BreakerSettings | None:
        if self.overrides:
            for k in (ctx.method, ctx.service, scope["path"]):
                if k is not None and k in self.overrides:
                    return self.overrides[k]
        spec = method_spec(ctx, self.registry) if self.registry is not None else None
        if spec is not None and "circuit_breaker" in spec.options:
            opt = spec.options["circuit_breaker"]
            if opt is False or opt is None:
                return None
            if isinstance(opt, BreakerSettings):
                return opt
        return self.settings

    async def _http(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        name = ctx.method
        if name is None or (self.registry is not None and name not in self._known
                            and not self._registered(name)):
            name = scope["path"]  # unknown methods are client-chosen names: one per endpoint
        if self.per_tenant:
            name = f"{name}\x00{ctx.tenant_id or 'default'}"
        try:
            breaker = self._breakers[name]
        except KeyError:
            breaker = self._new_breaker(name, ctx, scope)
        if breaker is None:
            await self.app(scope, receive, send)
            return
        if breaker.state == CLOSED:  # what acquire() answers when closed, without a call
            token = CALL
        else:
            try:
                token = breaker.acquire()
            except BreakerOpen as exc:
                retry_after = str(max(1, math.ceil(exc.retry_after)))
                await send_error(scope, send, RpcError(
                    5010, f"Circuit breaker open for {breaker.name.split(chr(0))[0]}",
                    headers={"Retry-After": retry_after}), ctx=ctx)
                return
        responder = _StatusResponder(send)
        try:
            await self.app(scope, receive, responder)
        except anyio.get_cancelled_exc_class():
            deadline = ctx.deadline
            timed_out = deadline is not None and time.monotonic() >= deadline
            breaker.record(token, True if timed_out else None)
            raise
        except BaseException as exc:
            breaker.record(token, self._is_failure(to_rpc_error(exc).code))
            raise
        code = ctx.extras.get(ERROR_CODE_KEY)
        if code is not None:
            breaker.record(token, self._is_failure(code))
        else:
            breaker.record(token, responder.status in _FAILURE_STATUSES)


def _on_transition(name: str, old: str, new: str) -> None:
    record_transition(name.split("\x00")[0], old, new)


class _StatusResponder:
    """Remembers the response status (the outcome of a plain app)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
