"""One pure-ASGI middleware per protocol concern; each also works alone."""

from aduib_asgi.middleware.admission import AdmissionMiddleware
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.circuit import CircuitBreakerMiddleware
from aduib_asgi.middleware.compression import CompressionMiddleware
from aduib_asgi.middleware.content import ContentNegotiationMiddleware
from aduib_asgi.middleware.deadline import DeadlineMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.middleware.metrics import MetricsMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware

__all__ = [
    "AdmissionMiddleware",
    "AuthMiddleware",
    "CircuitBreakerMiddleware",
    "CompressionMiddleware",
    "ContentNegotiationMiddleware",
    "DeadlineMiddleware",
    "ErrorMappingMiddleware",
    "IdempotencyMiddleware",
    "MetricsMiddleware",
    "RateLimitMiddleware",
    "RateLimitPolicy",
    "TenantScopeMiddleware",
    "TracePropagationMiddleware",
    "VersionNegotiationMiddleware",
]
