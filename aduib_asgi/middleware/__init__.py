"""One pure-ASGI middleware per protocol concern; each also works alone."""

from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware

__all__ = [
    "ErrorMappingMiddleware",
    "IdempotencyMiddleware",
    "RateLimitMiddleware",
    "VersionNegotiationMiddleware",
]
