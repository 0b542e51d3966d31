"""HTTPS/mTLS under uvicorn: the server's TLS settings and the ASGI ``tls`` extension.

No common ASGI server fills the ``tls`` scope extension (asgiref's
``specs/tls.rst``). :class:`TlsScopeMixin`, mixed into uvicorn's HTTP and
WebSocket protocol classes (``http_protocol``/``ws_protocol`` in
:mod:`aduib_asgi.server.protocols`), reads the connection's ``ssl_object``
once, in ``connection_made`` (on asyncio and uvloop that runs after the
handshake), and gives every HTTP request and
WebSocket of the connection its own copy of the extension. With a client CA the
handshake refuses a certificate that does not verify, so a certificate that is
present is a verified one. Renegotiation is disabled: the identity is read once
per connection.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TlsExtensionApp", "TlsScopeMixin", "TlsSettings", "tls_extension"]

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)
_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
          "domainComponent": "DC", "userId": "UID"}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How the server speaks TLS (the demo's ``--tls-*`` flags).

    ``client_ca``: PEM bundle of the CAs whose client certificates are accepted;
    a presented certificate that does not verify fails the handshake.
    ``require_client_cert`` also refuses connections without one (needs
    ``client_ca``). ``min_version`` is ``"1.2"`` or ``"1.3"``; ``ciphers`` an
    OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults).
    """

    certfile: str
    keyfile: str | None = None
    client_ca: str | None = None
    require_client_cert: bool = False
    min_version: str = "1.2"
    ciphers: str | None = None
    keyfile_password: str | None = None

    def __post_init__(self) -> None:
        if self.min_version not in _MIN_VERSIONS:
            raise ValueError(f"min_version must be 1.2 or 1.3, not {self.min_version!r}")
        if self.require_client_cert and not self.client_ca:
            raise ValueError("require_client_cert needs client_ca (the CAs to verify against)")

    @property
    def verifies_clients(self) -> bool:
        """True when client certificates are requested (and verified)."""
        return self.client_ca is not None

    def server_context(self) -> ssl.SSLContext:
        """A server ``SSLContext``: HTTP/1.1 ALPN, no renegotiation, no compression."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _MIN_VERSIONS[self.min_version]
        password = self.keyfile_password
        ctx.load_cert_chain(self.certfile, self.keyfile, (lambda: password) if password else None)
        if self.client_ca:
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = (ssl.CERT_REQUIRED if self.require_client_cert
                               else ssl.CERT_OPTIONAL)
        if self.ciphers:
            ctx.set_ciphers(self.ciphers)
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        # only HTTP/1.1: the protocol classes that fill the tls extension speak nothing else
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def server_cert_pem(self) -> str | None:
        """The server's own (leaf) certificate as PEM (the extension's ``server_cert``)."""
        match = _PEM_BLOCK.search(Path(self.certfile).read_text("ascii", errors="replace"))
        return match.group(0).strip() + "\n" if match else None

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config`` that serve with this context.

        The files are read here (a bad certificate fails now); the factory is
        picklable, so worker processes build their own context.
        """
        self.server_context()
        return {"ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile,
                "ssl_context_factory": _ServerContextFactory(self)}


@dataclass(frozen=True)
class _ServerContextFactory:
    """uvicorn's ``ssl_context_factory``: :meth:`TlsSettings.server_context`."""

    settings: TlsSettings

    def __call__(self, _config: Any, _default: Any) -> ssl.SSLContext:
        return self.settings.server_context()


def _rfc4514(subject: Any) -> str | None:
    if not subject:
        return None
    # RFC 4514 lists the most specific RDN first
    return ",".join("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn)
                    for rdn in reversed(subject))


def _escape(value: str) -> str:
    out = "".join(f"\\{c}" if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") else out


_CIPHER_IDS: dict[str, int] = {}


def _cipher_id(ssl_object: Any) -> int | None:
    cipher = ssl_object.cipher()
    if not cipher:
        return None
    name = cipher[0]
    if name not in _CIPHER_IDS:
        for c in ssl_object.context.get_ciphers():
            _CIPHER_IDS[c["name"]] = c["id"] & 0xFFFF  # IANA code: the low 16 bits
    return _CIPHER_IDS.get(name)


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket,
                  server_cert: str | None = None) -> dict[str, Any]:
    """The ASGI ``tls`` extension for a completed TLS connection.

    ``client_cert_chain`` holds the verified leaf (PEM), and on Python 3.13+
    the whole verified chain; ``client_cert_error`` is None since an
    unverifiable certificate never completes the handshake.
    """
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    if der:
        verified = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+
        try:
            chain = [c.public_bytes() for c in verified()] if verified is not None else []
        except Exception:
            chain = []
        if not chain:
            chain = [ssl.DER_cert_to_PEM_cert(der)]
    info = ssl_object.getpeercert() if der else None
    return {
        "server_cert": server_cert,
        "client_cert_chain": chain,
        "client_cert_name": _rfc4514(info.get("subject")) if info else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_id(ssl_object),
    }


class TlsExtensionApp:
    """Gives every HTTP/WebSocket scope its own copy of one connection's ``tls`` extension."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            tls = self.tls.copy()
            tls["client_cert_chain"] = list(tls["client_cert_chain"])
            ext = scope.get("extensions")
            if ext:
                ext = ext.copy()
                ext["tls"] = tls
            else:
                ext = {"tls": tls}
            scope["extensions"] = ext
        await self.app(scope, receive, send)


class TlsScopeMixin:
    """Mixin for a uvicorn HTTP or WebSocket protocol class: fill the ``tls`` extension.

    Put it before the uvicorn class (``class P(TlsScopeMixin, H11Protocol)``);
    it composes with other mixins that extend ``connection_made``. On a plain
    TCP connection it does nothing.
    """

    #: PEM of the server's certificate for ``server_cert`` (set on composed classes).
    tls_server_cert: ClassVar[str | None] = None
    app: ASGIApp

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = TlsExtensionApp(self.app, tls_extension(ssl_object, self.tls_server_cert))
