"""Serving the stack under uvicorn: protocol classes composed from mixins (connection
guards, the ASGI ``tls`` extension) and TLS settings."""

from aduib_asgi.server.protocols import HeadGuard, ParserRelease, http_protocol, ws_protocol
from aduib_asgi.server.tls import (
    TlsExtensionApp,
    TlsScopeMixin,
    TlsSettings,
    tls_extension,
)

__all__ = [
    "HeadGuard",
    "ParserRelease",
    "TlsExtensionApp",
    "TlsScopeMixin",
    "TlsSettings",
    "http_protocol",
    "tls_extension",
    "ws_protocol",
]
