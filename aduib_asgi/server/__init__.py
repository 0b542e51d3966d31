"""Serving the stack: uvicorn protocol classes with connection guards."""

from aduib_asgi.server.protocols import HeadGuard, http_protocol

__all__ = ["HeadGuard", "http_protocol"]
