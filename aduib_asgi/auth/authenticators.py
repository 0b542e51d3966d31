"""Pluggable authenticators: bearer (any verifier, JWT optional), API key, mTLS.

An authenticator turns :class:`Credentials` into an :class:`Identity` or raises
an :class:`~aduib_asgi.errors.RpcError` (3001 invalid, 3002 expired). A verifier
returning None means "not a valid credential" (3001). Credentials are secrets:
:class:`Credentials` hides them from ``repr`` and nothing here logs them.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import Scope

from aduib_asgi.auth.certificates import CertificateFacts, MtlsRoleRules, certificate_facts
from aduib_asgi.errors import RpcError
from aduib_asgi.extras import require

__all__ = [
    "ApiKeyAuthenticator",
    "Authenticator",
    "BearerAuthenticator",
    "Credentials",
    "Identity",
    "MtlsAuthenticator",
    "client_certificate",
    "jwt_verifier",
    "static_verifier",
    "verified_client_cert",
]

logger = logging.getLogger("aduib_asgi.auth")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the caller is: a principal, its roles and OAuth scopes, and its tenants.

    ``tenants`` None: any tenant; otherwise the only tenants this identity may
    act for (another one → 3010).
    """

    principal: str
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()
    tenants: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # A string is a space-separated list, never a sequence of characters
        # (else "notadmin" would grant "admin" by substring).
        for name in ("roles", "scopes", "tenants"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, _strings(value))


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A presented credential. ``secret`` is never logged or echoed."""

    scheme: str  # "bearer" | "api_key" | "mtls"
    secret: str | None
    source: str  # where it came from: "metadata.auth", "Authorization", "X-API-Key", "tls"

    def __repr__(self) -> str:
        return f"Credentials(scheme={self.scheme!r}, source={self.source!r}, secret=<redacted>)"


class Authenticator(Protocol):
    """Verifies one scheme's credentials."""

    #: "bearer", "api_key" or "mtls".
    scheme: str
    #: The ``WWW-Authenticate`` challenge for this scheme.
    challenge: str

    async def authenticate(self, credentials: Credentials, scope: Scope) -> Identity: ...


Verifier = Callable[[str], "Identity | Awaitable[Identity | None] | None"]


async def _verify(verify: Verifier, secret: str, what: str) -> Identity:
    try:
        result = verify(secret)
        if inspect.isawaitable(result):
            result = await result
    except RpcError:
        raise
    except Exception as exc:  # the message may quote the secret: log the type only
        logger.warning("%s verifier failed with %s", what, type(exc).__name__)
        raise RpcError(3001, f"Invalid {what}") from None
    if result is None:
        raise RpcError(3001, f"Invalid {what}")
    if not isinstance(result, Identity):
        raise TypeError(f"{what} verifier must return an Identity or None")
    return result


def static_verifier(table: Mapping[str, Identity]) -> Callable[[str], Identity | None]:
    """A verifier over a fixed secret → identity table (demos, tests, service keys).

    Constant time in the presented secret: the table is keyed by an HMAC of each
    secret under a key drawn at construction, and a presented secret is looked up
    by its HMAC, so how long a lookup takes says nothing about any stored secret
    (a plain dict lookup compares the strings and stops at the first difference).
    """
    key = secrets.token_bytes(32)

    def digest(secret: str) -> bytes:
        return hmac.new(key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    known = {digest(secret): ident for secret, ident in table.items()}

    def verify(secret: str) -> Identity | None:
        return known.get(digest(secret))

    return verify


class BearerAuthenticator:
    """``Authorization: Bearer <token>`` or ``metadata.auth`` scheme ``bearer``.

    ``verify(token)`` (sync or async) returns an :class:`Identity`, None (→ 3001)
    or raises ``RpcError(3002)`` for an expired token. Use :func:`jwt_verifier`
    for JWTs (extra ``jwt``).
    """

    scheme = "bearer"

    def __init__(self, verify: Verifier, *, realm: str = "aduib_rpc") -> None:
        self.verify = verify
        self.challenge = f'Bearer realm="{realm}"'

    async def authenticate(self, credentials: Credentials, scope: Scope) -> Identity:
        return await _verify(self.verify, credentials.secret or "", "token")


class ApiKeyAuthenticator:
    """``X-API-Key`` (configurable header) or ``metadata.auth`` scheme ``api_key``."""

    scheme = "api_key"

    def __init__(
        self,
        verify: Verifier | Mapping[str, Identity],
        *,
        header: str = "X-API-Key",
        realm: str = "aduib_rpc",
    ) -> None:
        self.verify: Verifier = static_verifier(verify) if isinstance(verify, Mapping) else verify
        self.header = header
        self.challenge = f'ApiKey realm="{realm}", header="{header}"'

    async def authenticate(self, credentials: Credentials, scope: Scope) -> Identity:
        return await _verify(self.verify, credentials.secret or "", "API key")


def verified_client_cert(scope: Scope) -> dict[str, Any] | None:
    """The ASGI TLS extension of the connection when it has a verified client cert."""
    ext = scope.get("extensions")
    tls = ext.get("tls") if ext else None
    if not tls or not tls.get("client_cert_chain") or tls.get("client_cert_error") is not None:
        return None
    return tls


def client_certificate(scope: Scope) -> CertificateFacts | None:
    """Facts of the connection's verified client certificate (None without one).

    Raises :class:`RpcError` 3001 for a certificate that cannot be read.
    """
    tls = verified_client_cert(scope)
    if tls is None:
        return None
    try:
        return certificate_facts(tls["client_cert_chain"][0])
    except ImportError:
        raise
    except Exception:
        logger.debug("could not read the client certificate", exc_info=True)
        raise RpcError(3001, "Client certificate could not be read") from None


class MtlsAuthenticator:
    """The verified client certificate of the connection (ASGI ``tls`` extension).

    The principal is the first SAN URI (e.g. a SPIFFE ID), else the first SAN
    DNS name, else the subject CN (or what ``identify`` returns); roles come
    from the rule table ``roles`` (``{principal or SAN: [roles]}``, the
    ``[auth.mtls_roles]`` table; exact matches, all matches count), else
    ``default_roles``. ``required``: every request must come with a verified
    client certificate (3000 otherwise), whatever other credential it carries,
    so a server that does not fill the ``tls`` extension fails closed.
    ``roles`` may be replaced at run time (:meth:`set_roles`). Needs
    ``cryptography`` (extra ``tls``).
    """

    scheme = "mtls"

    def __init__(
        self,
        *,
        roles: Mapping[str, Iterable[str]] | MtlsRoleRules | None = None,
        default_roles: Iterable[str] = (),
        identify: Callable[[Mapping[str, Any]], Identity | None] | None = None,
        required: bool = False,
    ) -> None:
        if identify is None:  # certificates are read with `cryptography`
            require("cryptography.x509", "tls", "MtlsAuthenticator")
        self.roles = roles if isinstance(roles, MtlsRoleRules) else MtlsRoleRules(roles)
        self.default_roles = tuple(default_roles)
        self.identify = identify
        self.required = required
        self.challenge = 'Mutual realm="tls"'

    def set_roles(self, table: Mapping[str, Iterable[str]] | MtlsRoleRules) -> None:
        """Swap the role rule table (a configuration reload)."""
        self.roles = table if isinstance(table, MtlsRoleRules) else MtlsRoleRules(table)

    async def authenticate(self, credentials: Credentials, scope: Scope) -> Identity:
        tls = verified_client_cert(scope)
        if tls is None:
            raise RpcError(3000, "mTLS requires a verified client certificate")
        if self.identify is not None:
            ident = self.identify(tls)
            if ident is None:
                raise RpcError(3001, "Client certificate not accepted")
            return ident
        facts = client_certificate(scope)
        principal = facts.principal if facts is not None else None
        if facts is None or not principal:
            raise RpcError(3001, "Client certificate has no SAN or subject name")
        rules = self.roles  # one table for the whole decision
        return Identity(principal, rules.roles_for(facts) or self.default_roles,
                        claims=facts.claims())


def _strings(value: Any) -> tuple[str, ...]:
    """A claim as a tuple of strings: a space-separated string or a list."""
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    return (str(value),)


def jwt_verifier(
    key: Any,
    *,
    algorithms: Iterable[str] = ("HS256",),
    audience: str | None = None,
    issuer: str | None = None,
    principal_claim: str = "sub",
    roles_claim: str = "roles",
    scopes_claim: str = "scope",
    tenants_claim: str | None = None,
    leeway: float = 0,
    require_exp: bool = True,
) -> Callable[[str], Identity | None]:
    """A bearer verifier for JWTs (PyJWT, extra ``jwt``): expired → 3002, invalid → 3001.

    A token must carry ``exp`` (else 3001) unless ``require_exp=False``: a token
    that never expires cannot be revoked by waiting.

    Scopes come from ``scopes_claim`` (RFC 9068 ``scope``: space-separated), else
    ``scp`` (a list, as some issuers send). With ``tenants_claim`` (e.g. ``"tid"``)
    the identity is bound to the tenant(s) in that claim (a string or a list); a
    token without the claim is bound to none, i.e. refused for every tenant.
    """
    jwt = require("jwt", "jwt", "jwt_verifier")

    algs = list(algorithms)
    required = [principal_claim, "exp"] if require_exp else [principal_claim]

    def verify(token: str) -> Identity | None:
        try:
            claims = jwt.decode(token, key, algorithms=algs, audience=audience, issuer=issuer,
                                leeway=leeway, options={"require": required})
        except jwt.ExpiredSignatureError:
            raise RpcError(3002, "Token expired") from None
        except jwt.InvalidTokenError:
            return None
        tenants = None if tenants_claim is None else _strings(claims.get(tenants_claim))
        scopes = claims.get(scopes_claim)
        if scopes is None:
            scopes = claims.get("scp")
        return Identity(str(claims[principal_claim]), _strings(claims.get(roles_claim)), claims,
                        scopes=_strings(scopes), tenants=tenants)

    return verify
