"""The demo's credentials and auth layer settings (DEMO.md: fixed contract).

The credentials can be replaced through the environment (e.g. to run the demo
with secrets of your own, or with sentinels a test looks for in its output):
``ADUIB_DEMO_ADMIN_TOKEN``, ``ADUIB_DEMO_USER_TOKEN`` (bearer tokens of
``admin`` and ``alice``) and ``ADUIB_DEMO_API_KEY`` (``X-API-Key`` of ``svc``).
"""

from __future__ import annotations

import os
from typing import Any

from aduib_asgi.auth import ApiKeyAuthenticator, BearerAuthenticator, Identity, static_verifier

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


def demo_auth_options(registry: Any) -> dict[str, Any]:
    """Keyword arguments of the demo's AuthMiddleware (roles come from the registry)."""
    tokens, keys = DEMO_TOKENS, DEMO_API_KEYS
    admin, user, key = (os.environ.get(name) for name in CREDENTIAL_ENV)
    if admin or user:
        tokens = {admin or "demo-admin-token": DEMO_TOKENS["demo-admin-token"],
                  user or "demo-user-token": DEMO_TOKENS["demo-user-token"]}
    if key:
        keys = {key: DEMO_API_KEYS["demo-key"]}
    return {
        "authenticators": [BearerAuthenticator(static_verifier(tokens)),
                           ApiKeyAuthenticator(keys)],
        "registry": registry,
    }
