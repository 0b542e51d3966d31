"""The demo's credentials and auth layer settings (DEMO.md: fixed contract)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aduib_asgi.auth import (
    ApiKeyAuthenticator,
    Authenticator,
    BearerAuthenticator,
    Identity,
    MtlsAuthenticator,
    static_verifier,
)

__all__ = ["DEMO_API_KEYS", "DEMO_TOKENS", "demo_auth_options"]

#: Bearer tokens: any other bearer token is 3001 INVALID_TOKEN.
DEMO_TOKENS = {
    "demo-admin-token": Identity("admin", ("admin",)),
    "demo-user-token": Identity("alice", ("user",)),
}
#: ``X-API-Key`` values.
DEMO_API_KEYS = {"demo-key": Identity("svc", ("service",))}


def demo_auth_options(
    registry: Any,
    *,
    mtls: bool = False,
    mtls_required: bool = False,
    mtls_roles: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of the demo's AuthMiddleware (roles come from the registry).

    ``mtls``: client certificates identify callers (``--tls-client-ca``), with
    roles from ``mtls_roles``; ``mtls_required``: a request without a verified
    certificate is 3000 (``--tls-require-client-cert``).
    """
    authenticators: list[Authenticator] = [BearerAuthenticator(static_verifier(DEMO_TOKENS)),
                                           ApiKeyAuthenticator(DEMO_API_KEYS)]
    if mtls or mtls_required:
        authenticators.append(MtlsAuthenticator(roles=mtls_roles, required=mtls_required))
    return {"authenticators": authenticators, "registry": registry}
