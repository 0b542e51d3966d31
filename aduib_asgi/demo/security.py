"""The demo's credentials and auth layer settings (DEMO.md: fixed contract).

A configuration's ``[auth]`` section replaces the parts it names
(OPERATIONS.md section 2): ``api_keys`` / ``bearer_tokens`` present = exactly
those credentials; ``mtls_roles`` present adds the mTLS authenticator with
those role rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aduib_asgi.auth import (
    ApiKeyAuthenticator,
    BearerAuthenticator,
    Identity,
    MtlsAuthenticator,
    static_verifier,
)
from aduib_asgi.config.model import AuthSection, IdentitySpec

__all__ = ["DEMO_API_KEYS", "DEMO_TOKENS", "demo_auth_options"]

#: Bearer tokens: any other bearer token is 3001 INVALID_TOKEN.
DEMO_TOKENS = {
    "demo-admin-token": Identity("admin", ("admin",)),
    "demo-user-token": Identity("alice", ("user",)),
}
#: ``X-API-Key`` values.
DEMO_API_KEYS = {"demo-key": Identity("svc", ("service",))}


def _identities(specs: Mapping[str, IdentitySpec]) -> dict[str, Identity]:
    return {secret: Identity(s.principal, tuple(s.roles)) for secret, s in specs.items()}


def demo_auth_options(registry: Any, auth: AuthSection | None = None) -> dict[str, Any]:
    """Keyword arguments of the demo's AuthMiddleware (roles come from the registry)."""
    tokens = DEMO_TOKENS if auth is None or auth.bearer_tokens is None else _identities(
        auth.bearer_tokens)
    keys = DEMO_API_KEYS if auth is None or auth.api_keys is None else _identities(
        auth.api_keys)
    authenticators: list[Any] = [BearerAuthenticator(static_verifier(tokens)),
                                 ApiKeyAuthenticator(keys)]
    if auth is not None and auth.mtls_roles is not None:
        authenticators.append(MtlsAuthenticator(roles=auth.mtls_roles))
    options: dict[str, Any] = {"authenticators": authenticators, "registry": registry}
    if auth is not None:
        options["require_auth"] = auth.require_auth
        options["anonymous_methods"] = auth.anonymous_methods
    return options
