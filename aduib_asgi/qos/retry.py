"""Server-side retry of idempotent methods (``qos.retry``), hooked into the dispatcher.

Retries happen around the handler call only (``RpcDispatcher.call_unary``),
not around the middleware stack: auth, rate limits, idempotency and admission
run once per request, nothing is buffered or replayed, and streams are never
retried. A call is retried only when the method is registered
``idempotent=True`` and the request carries ``qos.retry``; only on the codes in
``qos.retry.retryable_codes`` (default: the table's retryable codes); with
exponential backoff (``initial_delay_ms`` x ``backoff_multiplier`` per attempt,
at most ``max_delay_ms``) within ``max_attempts``; never past the request's
deadline. The number of attempts made is in the ``Aduib-Retry-Attempts``
response header.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from aduib_asgi.context import RequestContext
from aduib_asgi.qos.metrics import record_retry
from aduib_asgi.responses import to_rpc_error

__all__ = ["RetryLimits", "RetryingCall", "install_retry"]

UnaryCall = Callable[[Any, Any, RequestContext], Awaitable[Any]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryLimits:
    """Server-side bounds on what a request's ``qos.retry`` may ask for."""

    enabled: bool = True
    max_attempts: int = 5
    max_delay_ms: int = 10_000
    header: str = "Aduib-Retry-Attempts"


class RetryingCall:
    """Wraps a dispatcher's ``call_unary`` with the retry policy."""

    __slots__ = ("_header", "call", "limits", "sleep")

    def __init__(self, call: UnaryCall, limits: RetryLimits | None = None,
                 sleep: Sleep | None = None) -> None:
        self.call = call
        self.limits = limits or RetryLimits()
        self.sleep: Sleep = sleep or anyio.sleep
        self._header = self.limits.header.lower().encode("latin-1")

    def __call__(self, spec: Any, env: Any, ctx: RequestContext) -> Awaitable[Any]:
        qos = env.qos
        if qos is None or qos.retry is None or not spec.idempotent or not self.limits.enabled:
            return self.call(spec, env, ctx)  # no retry: no extra coroutine frame
        return self._retrying(spec, env, ctx, qos.retry)

    async def _retrying(self, spec: Any, env: Any, ctx: RequestContext, cfg: Any) -> Any:
        limits = self.limits
        max_attempts = max(1, min(cfg.max_attempts, limits.max_attempts))
        max_delay = min(cfg.max_delay_ms, limits.max_delay_ms) / 1000.0
        codes = frozenset(cfg.retryable_codes) if cfg.retryable_codes else None
        delay = cfg.initial_delay_ms / 1000.0
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self.call(spec, env, ctx)
            except Exception as exc:
                error = to_rpc_error(exc)
                retryable = error.code in codes if codes is not None else error.retryable
                wait = min(delay, max_delay)
                if (not retryable or attempt >= max_attempts
                        or (ctx.deadline is not None
                            and time.monotonic() + wait >= ctx.deadline)):
                    self._report(ctx, attempt)
                    if attempt > 1:
                        record_retry(spec.method, "failed")
                    raise
                record_retry(spec.method, "retry")
                await self.sleep(wait)
                delay *= cfg.backoff_multiplier
            else:
                self._report(ctx, attempt)
                if attempt > 1:
                    record_retry(spec.method, "recovered")
                return result

    def _report(self, ctx: RequestContext, attempts: int) -> None:
        ctx.add_response_header(self._header, str(attempts).encode("latin-1"))


def install_retry(dispatcher: Any, *, limits: RetryLimits | None = None,
                  sleep: Sleep | None = None) -> RetryingCall:
    """Hook the retry policy into ``dispatcher.call_unary`` (reconfigures if installed)."""
    current = dispatcher.__dict__.get("call_unary")
    if isinstance(current, RetryingCall):
        if limits is not None:
            current.limits = limits
            current._header = limits.header.lower().encode("latin-1")
        if sleep is not None:
            current.sleep = sleep
        return current
    hook = RetryingCall(dispatcher.call_unary, limits, sleep)
    dispatcher.call_unary = hook
    return hook
