"""Authentication and authorization building blocks for :class:`AuthMiddleware`."""

from aduib_asgi.auth.authenticators import (
    ApiKeyAuthenticator,
    Authenticator,
    BearerAuthenticator,
    Credentials,
    Identity,
    MtlsAuthenticator,
    client_certificate,
    jwt_verifier,
    static_verifier,
    verified_client_cert,
)
from aduib_asgi.auth.certificates import CertificateFacts, MtlsRoleRules, certificate_facts
from aduib_asgi.auth.rbac import PatternTable, roles_table

__all__ = [
    "ApiKeyAuthenticator",
    "Authenticator",
    "BearerAuthenticator",
    "CertificateFacts",
    "Credentials",
    "Identity",
    "MtlsAuthenticator",
    "MtlsRoleRules",
    "PatternTable",
    "certificate_facts",
    "client_certificate",
    "jwt_verifier",
    "roles_table",
    "static_verifier",
    "verified_client_cert",
]
