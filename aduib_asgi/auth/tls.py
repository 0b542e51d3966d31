"""Compatibility names: the ``tls`` extension under uvicorn now lives in :mod:`aduib_asgi.server`.

:func:`tls_protocol` still builds one subclass of a given uvicorn protocol
class; :func:`aduib_asgi.server.http_protocol` and :func:`~aduib_asgi.server.ws_protocol`
build them from uvicorn's names, composed with other mixins.
"""

from __future__ import annotations

from aduib_asgi.server.tls import TlsExtensionApp, TlsScopeMixin, tls_extension

__all__ = ["TlsExtensionApp", "tls_extension", "tls_protocol"]


def tls_protocol(base: type) -> type:
    """A subclass of a uvicorn HTTP or WebSocket protocol class that fills ``tls``."""
    return type(f"Tls{base.__name__}", (TlsScopeMixin, base), {})
