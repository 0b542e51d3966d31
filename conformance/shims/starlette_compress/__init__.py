"""Stand-in for ``starlette_compress``: ``CompressMiddleware`` maps to our CompressionMiddleware.

Put first on ``sys.path`` by the conformance runner, so the peer's tests import
this instead of the real package. Options are translated; internals the peer's
tests reach into (its content-type registry, responder, parsers) raise
:class:`NotApplicable`.
"""

from __future__ import annotations

from typing import Any

from shim_common import NotApplicable
from starlette.types import Receive, Scope, Send

from aduib_asgi.middleware import CompressionMiddleware

__all__ = ["CompressMiddleware", "add_compress_type", "remove_compress_type"]
__version__ = "aduib-asgi shim"


class _WithoutAcceptEncoding:
    """``remove_accept_encoding=True``: the app does not see Accept-Encoding."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [h for h in scope["headers"]
                                          if h[0].lower() != b"accept-encoding"]}
        await self.app(scope, receive, send)


def CompressMiddleware(
    app: Any, *, minimum_size: int = 500, zstd: bool = True, zstd_level: int = 4,
    brotli: bool = True, brotli_quality: int = 4, gzip: bool = True, gzip_level: int = 4,
    remove_accept_encoding: bool = False,
) -> CompressionMiddleware:
    """starlette-compress's options on CompressionMiddleware (its preference: zstd, br, gzip)."""
    enabled = {"zstd": zstd, "br": brotli, "gzip": gzip}
    inner = _WithoutAcceptEncoding(app) if remove_accept_encoding else app
    return CompressionMiddleware(
        inner, preference=tuple(n for n, on in enabled.items() if on), minimum_size=minimum_size,
        levels={"zstd": zstd_level, "br": brotli_quality, "gzip": gzip_level})


def add_compress_type(content_type: str) -> None:
    raise NotApplicable("starlette-compress's allowlist of compressible types")


def remove_compress_type(content_type: str) -> None:
    raise NotApplicable("starlette-compress's allowlist of compressible types")
