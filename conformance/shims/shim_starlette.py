"""pytest plugin: Starlette's ``GZipMiddleware``/``GZipResponder`` become our CompressionMiddleware.

Loaded with ``-p shim_starlette`` before Starlette's test module is imported, so
``from starlette.middleware.gzip import GZipMiddleware`` there gets the mapping
below. Only options are translated; the tests' assertions run unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import starlette.middleware.gzip as gzip_module

from aduib_asgi.middleware import CompressionMiddleware


def _compression(app: Any, minimum_size: int = 500, compresslevel: int = 9,
                 exclude_content_types: Iterable[str] | None = None,
                 thread_minimum_size: int | None = None) -> CompressionMiddleware:
    kwargs: dict[str, Any] = {"preference": ("gzip",), "minimum_size": minimum_size,
                              "levels": {"gzip": compresslevel}}
    if exclude_content_types is not None:
        kwargs["excluded_types"] = tuple(exclude_content_types)
    if thread_minimum_size is not None:
        kwargs["thread_threshold"] = thread_minimum_size
    return CompressionMiddleware(app, **kwargs)


def GZipMiddleware(app: Any, minimum_size: int = 500, compresslevel: int = 9,
                   **kwargs: Any) -> CompressionMiddleware:
    """Starlette's signature: (app, minimum_size=500, compresslevel=9, *, exclude_content_types,
    thread_minimum_size)."""
    return _compression(app, minimum_size, compresslevel, **kwargs)


def GZipResponder(app: Any, minimum_size: int, *, compresslevel: int = 9,
                  **kwargs: Any) -> CompressionMiddleware:
    """Starlette's responder is an ASGI app of its own in one test: the same mapping."""
    return _compression(app, minimum_size, compresslevel, **kwargs)


gzip_module.GZipMiddleware = GZipMiddleware  # type: ignore[assignment,misc]
gzip_module.GZipResponder = GZipResponder  # type: ignore[assignment,misc]
