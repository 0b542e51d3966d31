"""One pure-ASGI middleware per protocol concern; each also works alone."""

from aduib_asgi.middleware.admission import AdmissionMiddleware
from aduib_asgi.middleware.circuit import CircuitBreakerMiddleware
from aduib_asgi.middleware.deadline import DeadlineMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware

__all__ = [
    "AdmissionMiddleware",
    "CircuitBreakerMiddleware",
    "DeadlineMiddleware",
    "ErrorMappingMiddleware",
    "IdempotencyMiddleware",
    "RateLimitMiddleware",
    "VersionNegotiationMiddleware",
]
