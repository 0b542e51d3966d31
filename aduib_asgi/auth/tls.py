"""Filling the ASGI ``tls`` scope extension under uvicorn (which does not fill it).

``MtlsAuthenticator`` reads the peer certificate from ``scope["extensions"]["tls"]``
(ASGI TLS extension). uvicorn does not set it, so :func:`tls_protocol` builds a
uvicorn HTTP protocol class that reads the connection's ``ssl_object`` once per
connection and adds the extension to every HTTP scope on it::

    from uvicorn.protocols.http.h11_impl import H11Protocol
    uvicorn.run(app, http=tls_protocol(H11Protocol), ssl_certfile=..., ssl_keyfile=...,
                ssl_ca_certs="clients-ca.pem", ssl_cert_reqs=ssl.CERT_OPTIONAL)

With ``CERT_OPTIONAL``/``CERT_REQUIRED`` the handshake fails on a certificate
that does not verify, so a certificate that is present is a verified one. (The
WebSocket protocols uvicorn switches to on upgrade are not covered.)
"""

from __future__ import annotations

import ssl
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TlsExtensionApp", "tls_extension", "tls_protocol"]

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _rfc4514(subject: Any) -> str | None:
    if not subject:
        return None
    parts = []
    for rdn in reversed(subject):  # RFC 4514 lists the most specific RDN first
        parts.append("+".join(f"{_SHORT.get(k, k)}={v}" for k, v in rdn))
    return ",".join(parts)


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
          "domainComponent": "DC", "userId": "UID"}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI ``tls`` extension dict for a completed TLS connection."""
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    info = ssl_object.getpeercert() if der else None
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": _rfc4514(info.get("subject")) if info else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
    }


class TlsExtensionApp:
    """Adds a fixed ``tls`` extension to every HTTP/WebSocket scope (one per connection)."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.tls}
        await self.app(scope, receive, send)


def tls_protocol(base: type) -> type:
    """A subclass of a uvicorn HTTP protocol class that fills the ``tls`` extension."""

    class TlsScopeProtocol(base):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                inner: ASGIApp = getattr(self, "app")  # noqa: B009 (dynamic base class)
                self.app = TlsExtensionApp(inner, tls_extension(ssl_object))

    TlsScopeProtocol.__name__ = f"Tls{base.__name__}"
    return TlsScopeProtocol
