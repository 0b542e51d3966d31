"""The demo's credentials and auth layer settings (DEMO.md: fixed contract)."""

from __future__ import annotations

from typing import Any

from aduib_asgi.auth import ApiKeyAuthenticator, BearerAuthenticator, Identity, static_verifier

__all__ = ["DEMO_API_KEYS", "DEMO_TOKENS", "demo_auth_options"]

#: Bearer tokens: any other bearer token is 3001 INVALID_TOKEN.
DEMO_TOKENS = {
    "demo-admin-token": Identity("admin", ("admin",)),
    "demo-user-token": Identity("alice", ("user",)),
}
#: ``X-API-Key`` values.
DEMO_API_KEYS = {"demo-key": Identity("svc", ("service",))}


def demo_auth_options(registry: Any) -> dict[str, Any]:
    """Keyword arguments of the demo's AuthMiddleware (roles come from the registry)."""
    return {
        "authenticators": [BearerAuthenticator(static_verifier(DEMO_TOKENS)),
                           ApiKeyAuthenticator(DEMO_API_KEYS)],
        "registry": registry,
    }
