"""Quality of service: deadlines, admission (bulkheads), circuit breakers, retry, shutdown.

The middlewares live in :mod:`aduib_asgi.middleware` (``DeadlineMiddleware``,
``AdmissionMiddleware``, ``CircuitBreakerMiddleware``); this package holds
their building blocks and the dispatcher's retry hook. See docs/qos.md.
"""

from aduib_asgi.qos.breaker import BreakerOpen, BreakerSettings, CircuitBreaker
from aduib_asgi.qos.bulkhead import Bulkhead, Rejected
from aduib_asgi.qos.deadline import remaining_ms, timeout_headers
from aduib_asgi.qos.retry import RetryingCall, RetryLimits, install_retry
from aduib_asgi.qos.shutdown import ShutdownController

__all__ = [
    "BreakerOpen",
    "BreakerSettings",
    "Bulkhead",
    "CircuitBreaker",
    "Rejected",
    "RetryLimits",
    "RetryingCall",
    "ShutdownController",
    "install_retry",
    "remaining_ms",
    "timeout_headers",
]
