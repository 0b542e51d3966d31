"""TenantRateLimitMiddleware: rate-limit policies with per-tenant limits.

``overrides = {"acme": {"limited": "1/10 seconds"}}`` gives tenant ``acme`` its
own limit for the policy named ``limited``; other tenants keep the policy's.
It is one :class:`~aduib_asgi.middleware.ratelimit.RateLimitMiddleware` per
overridden tenant plus one for everybody else, all on the same storage, chosen
by the request's tenant (``ctx.tenant_id``, else ``X-Tenant-ID``, else
``default``: the partition the rate-limit layer uses). A tenant's buckets under
an override are its own (the limit is part of a ``limits`` key): changing an
override starts that tenant's count afresh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from limits.aio.storage import Storage
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, RateLimitPolicy, make_limiter

__all__ = ["TenantRateLimitMiddleware"]

_X_TENANT = b"x-tenant-id"


class TenantRateLimitMiddleware:
    """Rate limiting like ``RateLimitMiddleware`` (same keyword arguments), plus
    ``overrides``: tenant -> {policy name -> limit}."""

    layer_name = "ratelimit"

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: Iterable[RateLimitPolicy] = (),
        overrides: Mapping[str, Mapping[str, str]] | None = None,
        storage: str | Storage = "memory://",
        **kwargs: Any,
    ) -> None:
        self.app = app
        policies = list(policies)
        names = {p.name for p in policies}
        if isinstance(storage, str):  # one storage for every tenant's layer
            opts = dict(kwargs.pop("storage_options", None) or {})
            timeout = kwargs.get("timeout", 0.5)
            if storage.startswith(("redis", "async+redis")):
                opts.setdefault("socket_timeout", timeout)
                opts.setdefault("socket_connect_timeout", timeout)
            storage = make_limiter(storage, **opts).storage
        self.default = RateLimitMiddleware(app, policies=policies, storage=storage, **kwargs)
        self.tenants: dict[str, RateLimitMiddleware] = {}
        for tenant, limits in (overrides or {}).items():
            unknown = sorted(set(limits) - names)
            if unknown:
                raise ValueError(f"tenants.{tenant}.ratelimit.{unknown[0]}: no rate-limit "
                                 f"policy named {unknown[0]!r} (policies: {sorted(names)})")
            mine = [dataclasses.replace(p, limit=limits[p.name]) if p.name in limits else p
                    for p in policies]
            self.tenants[tenant] = RateLimitMiddleware(app, policies=mine, storage=storage,
                                                       **kwargs)

    def for_tenant(self, tenant: str) -> RateLimitMiddleware:
        return self.tenants.get(tenant, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        layer = self.default
        if self.tenants and (scope["type"] == "http" or scope["type"] == "websocket"):
            ctx: RequestContext | None = scope.get(CONTEXT_KEY)
            tenant = ctx.tenant_id if ctx is not None else None
            if tenant is None:
                raw = dict(scope.get("headers") or ()).get(_X_TENANT)
                tenant = raw.decode("latin-1") if raw else "default"
            layer = self.tenants.get(tenant, self.default)
        await layer(scope, receive, send)
