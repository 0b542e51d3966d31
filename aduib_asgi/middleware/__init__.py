"""One pure-ASGI middleware per protocol concern; each also works alone."""

from aduib_asgi.middleware.errors import ErrorMappingMiddleware

__all__ = ["ErrorMappingMiddleware"]
