"""The demo's credentials and auth layer settings (DEMO.md: fixed contract).

The credentials can be replaced through the environment (e.g. to run the demo
with secrets of your own, or with sentinels a test looks for in its output):
``ADUIB_DEMO_ADMIN_TOKEN``, ``ADUIB_DEMO_USER_TOKEN`` (bearer tokens of
``admin`` and ``alice``) and ``ADUIB_DEMO_API_KEY`` (``X-API-Key`` of ``svc``).
A configuration's ``[auth]`` section replaces the parts it names
(OPERATIONS.md section 2): ``api_keys`` / ``bearer_tokens`` present = exactly
those credentials; ``mtls_roles`` present = those role rules for certificate
callers (and the mTLS authenticator, if the flags did not add it).
"""

from __future__ import annotations

import os
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
from aduib_asgi.config.model import AuthSection, IdentitySpec

__all__ = ["CREDENTIAL_ENV", "DEMO_API_KEYS", "DEMO_TOKENS", "demo_auth_options"]

#: Bearer tokens: any other bearer token is 3001 INVALID_TOKEN.
DEMO_TOKENS = {
    "demo-admin-token": Identity("admin", ("admin",)),
    "demo-user-token": Identity("alice", ("user",)),
}
#: ``X-API-Key`` values.
DEMO_API_KEYS = {"demo-key": Identity("svc", ("service",))}


#: Environment variables that replace the default credentials (read at app build).
CREDENTIAL_ENV = ("ADUIB_DEMO_ADMIN_TOKEN", "ADUIB_DEMO_USER_TOKEN", "ADUIB_DEMO_API_KEY")


def _identities(specs: Mapping[str, IdentitySpec]) -> dict[str, Identity]:
    return {secret: Identity(s.principal, tuple(s.roles)) for secret, s in specs.items()}


def _default_credentials() -> tuple[dict[str, Identity], dict[str, Identity]]:
    """DEMO.md's bearer tokens and API keys, with :data:`CREDENTIAL_ENV` replacements."""
    tokens, keys = DEMO_TOKENS, DEMO_API_KEYS
    admin, user, key = (os.environ.get(name) for name in CREDENTIAL_ENV)
    if admin or user:
        tokens = {admin or "demo-admin-token": DEMO_TOKENS["demo-admin-token"],
                  user or "demo-user-token": DEMO_TOKENS["demo-user-token"]}
    if key:
        keys = {key: DEMO_API_KEYS["demo-key"]}
    return tokens, keys


def demo_auth_options(
    registry: Any,
    auth: AuthSection | None = None,
    *,
    mtls: bool = False,
    mtls_required: bool = False,
    mtls_roles: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of the demo's AuthMiddleware (roles come from the registry).

    ``auth``: the configuration's ``[auth]`` section (None: the defaults).
    ``mtls``: client certificates identify callers (``--tls-client-ca``), with
    roles from ``mtls_roles`` (``[auth] mtls_roles`` replaces them);
    ``mtls_required``: a request without a verified certificate is 3000
    (``--tls-require-client-cert``).
    """
    tokens, keys = _default_credentials()
    if auth is not None and auth.bearer_tokens is not None:
        tokens = _identities(auth.bearer_tokens)
    if auth is not None and auth.api_keys is not None:
        keys = _identities(auth.api_keys)
    authenticators: list[Authenticator] = [BearerAuthenticator(static_verifier(tokens)),
                                           ApiKeyAuthenticator(keys)]
    roles = auth.mtls_roles if auth is not None and auth.mtls_roles is not None else mtls_roles
    if mtls or mtls_required or (auth is not None and auth.mtls_roles is not None):
        authenticators.append(MtlsAuthenticator(roles=roles, required=mtls_required))
    options: dict[str, Any] = {"authenticators": authenticators, "registry": registry}
    if auth is not None:
        options["require_auth"] = auth.require_auth
        options["anonymous_methods"] = auth.anonymous_methods
    return options
