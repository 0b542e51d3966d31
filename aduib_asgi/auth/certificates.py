"""What a client certificate says: its names (for identity) and facts (for audit).

Parsing needs ``cryptography`` (extra ``tls``). Results are cached per
certificate (the same connection's certificate is read on every request), so a
request pays a dictionary lookup, not a parse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aduib_asgi.extras import require

__all__ = ["CertificateFacts", "MtlsRoleRules", "certificate_facts"]


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """A client certificate's identity-relevant fields; never the certificate itself."""

    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    serial: str  # hex, upper case
    sha256: str  # fingerprint of the DER bytes, hex, lower case
    common_name: str | None
    san_uris: tuple[str, ...]
    san_dns: tuple[str, ...]

    @property
    def principal(self) -> str | None:
        """The first SAN URI (e.g. a SPIFFE ID), else the first SAN DNS name, else the CN."""
        if self.san_uris:
            return self.san_uris[0]
        if self.san_dns:
            return self.san_dns[0]
        return self.common_name

    @property
    def sans(self) -> tuple[str, ...]:
        return self.san_uris + self.san_dns

    def audit_fields(self) -> dict[str, str]:
        return {"cert_subject": self.subject, "cert_issuer": self.issuer,
                "cert_serial": self.serial, "cert_sha256": self.sha256}

    def claims(self) -> dict[str, Any]:
        return {**self.audit_fields(), "san_uris": list(self.san_uris),
                "san_dns": list(self.san_dns)}


def certificate_facts(cert: str | bytes) -> CertificateFacts:
    """Facts of a certificate given as PEM text or DER bytes (ValueError if unreadable)."""
    return _facts(cert)


@lru_cache(maxsize=1024)
def _facts(cert: str | bytes) -> CertificateFacts:
    require("cryptography.x509", "tls", "Reading client certificates")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    if isinstance(cert, str):
        parsed = x509.load_pem_x509_certificate(cert.encode("ascii"))
    else:
        parsed = x509.load_der_x509_certificate(cert)
    der = parsed.public_bytes(Encoding.DER)
    cn = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris = dns = ()
    return CertificateFacts(
        subject=parsed.subject.rfc4514_string(),
        issuer=parsed.issuer.rfc4514_string(),
        serial=f"{parsed.serial_number:X}",
        sha256=hashlib.sha256(der).hexdigest(),
        common_name=str(cn[0].value) if cn else None,
        san_uris=uris,
        san_dns=dns,
    )


class MtlsRoleRules:
    """Roles of certificate callers: ``{principal or SAN: [roles]}`` (``[auth.mtls_roles]``).

    A key matches exactly the principal or any SAN URI/DNS name of the
    certificate; the roles of every matching key are granted. Immutable: a
    configuration reload builds a new table.
    """

    __slots__ = ("_table",)

    def __init__(self, table: Mapping[str, Iterable[str] | str] | None = None) -> None:
        rules: dict[str, tuple[str, ...]] = {}
        for key, roles in (table or {}).items():
            rules[str(key)] = (tuple(roles.split()) if isinstance(roles, str)
                               else tuple(str(r) for r in roles))
        self._table = rules

    def __bool__(self) -> bool:
        return bool(self._table)

    def roles_for(self, facts: CertificateFacts, principal: str | None = None) -> tuple[str, ...]:
        """The granted roles, in rule order of first match, without duplicates."""
        if not self._table:
            return ()
        found: dict[str, None] = {}
        for name in (principal or facts.principal, *facts.sans):
            if name is not None:
                for role in self._table.get(name, ()):
                    found[role] = None
        return tuple(found)
