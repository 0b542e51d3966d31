"""The demo's credentials and auth layer settings (DEMO.md: fixed contract).

The credentials can be replaced through the environment (e.g. to run the demo
with secrets of your own, or with sentinels a test looks for in its output):
``ADUIB_DEMO_ADMIN_TOKEN``, ``ADUIB_DEMO_USER_TOKEN`` (bearer tokens of
``admin`` and ``alice``) and ``ADUIB_DEMO_API_KEY`` (``X-API-Key`` of ``svc``).
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


def demo_auth_options(
    registry: Any,
    *,
    mtls: bool = False,
    mtls_required: bool = False,
    mtls_roles: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of the demo's AuthMiddleware (roles come from the registry).

    Credentials from :data:`CREDENTIAL_ENV` replace the defaults. ``mtls``: client
    certificates identify callers (``--tls-client-ca``), with roles from
    ``mtls_roles``; ``mtls_required``: a request without a verified certificate is
    3000 (``--tls-require-client-cert``).
    """
    tokens, keys = DEMO_TOKENS, DEMO_API_KEYS
    admin, user, key = (os.environ.get(name) for name in CREDENTIAL_ENV)
    if admin or user:
        tokens = {admin or "demo-admin-token": DEMO_TOKENS["demo-admin-token"],
                  user or "demo-user-token": DEMO_TOKENS["demo-user-token"]}
    if key:
        keys = {key: DEMO_API_KEYS["demo-key"]}
    authenticators: list[Authenticator] = [BearerAuthenticator(static_verifier(tokens)),
                                           ApiKeyAuthenticator(keys)]
    if mtls or mtls_required:
        authenticators.append(MtlsAuthenticator(roles=mtls_roles, required=mtls_required))
    return {"authenticators": authenticators, "registry": registry}
