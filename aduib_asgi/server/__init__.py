"""Running the stack under uvicorn: TLS settings and protocol classes (mixins that compose)."""

from aduib_asgi.server.protocols import protocol_classes
from aduib_asgi.server.tls import (
    TlsExtensionApp,
    TlsScopeMixin,
    TlsSettings,
    tls_extension,
)

__all__ = [
    "TlsExtensionApp",
    "TlsScopeMixin",
    "TlsSettings",
    "protocol_classes",
    "tls_extension",
]
