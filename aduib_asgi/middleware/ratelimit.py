"""RateLimitMiddleware: named policies on the ``limits`` package, IETF RateLimit headers.

Windows and storage are ``limits.aio``'s (fixed-window, moving-window,
sliding-window-counter; ``memory://``, ``redis://``...). This layer matches
policies to a request, builds the partition key (tenant, principal, method,
client address), consumes the request's cost, and reports the quota:
``RateLimit-Policy`` / ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10),
``metadata.rate_limit`` on the context, and on rejection 5020 (429) with
``Retry-After``. Headers go through ``ctx.add_response_header`` so they are on
the final response whether the handler succeeds or fails.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import ContextHandler, RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.extras import require
from aduib_asgi.gate import RATE, defer
from aduib_asgi.identity import TRUSTED_PROXIES_KEY, TrustedProxies, client_address
from aduib_asgi.logsafe import safe
from aduib_asgi.responses import refuse, refuse_websocket, send_error
from aduib_asgi.storage.budget import BudgetExceeded
from aduib_asgi.storage.ratelimit import BudgetedMemoryStorage, is_memory, quota_for
from aduib_asgi.storage.redis_url import is_redis_url, limits_storage
from aduib_asgi.storage.timeout import call_within

__all__ = [
    "PARTITION_KEYS",
    "RateLimitMiddleware",
    "RateLimitPolicy",
    "client_address",
    "policies_from_registry",
]

logger = logging.getLogger("aduib_asgi.ratelimit")

#: What a policy may partition its buckets by.
PARTITION_KEYS = frozenset({"tenant", "principal", "method", "client", "client_id"})

_RATELIMIT = b"ratelimit"
_RATELIMIT_POLICY = b"ratelimit-policy"
_LEGACY_LIMIT = b"ratelimit-limit"
_LEGACY_REMAINING = b"ratelimit-remaining"
_LEGACY_RESET = b"ratelimit-reset"
_X_TENANT = b"x-tenant-id"
_CACHE_MAX = 4096
_REMAINING = operator.itemgetter(1)
_ceil = math.ceil


@dataclass(frozen=True)
class RateLimitPolicy:
    """A named quota: ``limit`` in ``limits`` notation ("3/10 seconds", "100 per minute").

    It applies to requests whose method is in ``methods``, whose service is in
    ``services`` or whose path starts with one of ``paths`` (a policy with none
    of these applies to every request). Buckets are partitioned by ``key_by``
    (any of tenant, principal, method, client, and client_id: the client-asserted
    ``metadata.client_id``, ``anonymous`` without one); each request consumes ``cost``.
    """

    name: str
    limit: str | RateLimitItem
    methods: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    key_by: tuple[str, ...] = ("tenant",)
    cost: int = 1

    def __post_init__(self) -> None:
        if not self.name or '"' in self.name or "\\" in self.name:
            raise ValueError(f"bad policy name {self.name!r}")
        bad = set(self.key_by) - PARTITION_KEYS
        if bad:
            raise ValueError(f"unknown partition keys {sorted(bad)}; use {sorted(PARTITION_KEYS)}")
        if self.cost < 1:
            raise ValueError("cost must be >= 1")

    @property
    def item(self) -> RateLimitItem:
        return parse(self.limit) if isinstance(self.limit, str) else self.limit

    def matches(self, method: str | None, path: str) -> bool:
        if not (self.methods or self.services or self.paths):
            return True
        if method is not None:
            if method in self.methods:
                return True
            if self.services:
                parts = method.split("/")
                if len(parts) == 3 and parts[1] in self.services:
                    return True
        return any(path.startswith(p) for p in self.paths)


def policies_from_registry(registry: Iterable[Any], *,
                           key_by: tuple[str, ...] = ("tenant",)) -> list[RateLimitPolicy]:
    """Policies from the ``rate_limit`` option of registered methods.

    ``registry.register("rpc.v2/Limited/ping", f, rate_limit="3/10 seconds")``,
    or ``rate_limit={"limit": ..., "key_by": (...), "cost": n}``.
    """
    out: list[RateLimitPolicy] = []
    for spec in registry:
        opt = spec.options.get("rate_limit")
        if opt is None:
            continue
        if isinstance(opt, RateLimitPolicy):
            out.append(opt)
            continue
        cfg: Mapping[str, Any] = opt if isinstance(opt, Mapping) else {"limit": opt}
        out.append(RateLimitPolicy(
            name=str(cfg.get("name", f"{spec.service}.{spec.handler}")),
            limit=cfg["limit"],
            methods=(spec.method,),
            key_by=tuple(cfg.get("key_by", key_by)),
            cost=int(cfg.get("cost", 1)),
        ))
    return out


class _KeyedItem(RateLimitItem):
    """A ``limits`` item that remembers the storage keys its own ``key_for`` built.

    ``limits`` rebuilds the key string on every call (~0.9 µs each, and
    ``get_window_stats`` makes two); the keys are the same from request to request.
    """

    __slots__ = ("_expiry", "_keys")
    _keys: dict[tuple[Any, ...], str]
    _expiry: int

    def get_expiry(self) -> int:
        return self._expiry

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        key = self._keys.get(identifiers)
        if key is None:
            key = super().key_for(*identifiers)
            if len(self._keys) >= _CACHE_MAX:
                self._keys.clear()
            self._keys[identifiers] = key
        return key


_KEYED_CLASSES: dict[type[RateLimitItem], type[_KeyedItem]] = {}


def _keyed(item: RateLimitItem) -> RateLimitItem:
    """``item`` as a :class:`_KeyedItem` of the same granularity (same keys, same limit)."""
    base = type(item)
    cls = _KEYED_CLASSES.get(base)
    if cls is None:
        meta: Any = type(base)  # limits' item metaclass
        cls = meta(f"Keyed{base.__name__}", (_KeyedItem, base),
                   {"__slots__": (), "__module__": __name__})
        _KEYED_CLASSES[base] = cls
    keyed = cls(item.amount, item.multiples, item.namespace)
    keyed._keys = {}
    keyed._expiry = item.get_expiry()
    return keyed


class _Compiled:
    """A policy with everything precomputed for the hot path."""

    __slots__ = ("amount", "by_client_only", "by_tenant_only", "cost", "item", "key_by", "name",
                 "policy", "policy_field", "policy_header", "rl_prefix", "tenant_keys", "window")

    def __init__(self, policy: RateLimitPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.item = _keyed(policy.item)
        self.amount = self.item.amount
        self.window = int(self.item.get_expiry())
        self.cost = policy.cost
        self.key_by = policy.key_by
        self.by_client_only = policy.key_by == ("client",)
        self.by_tenant_only = policy.key_by == ("tenant",)
        self.policy_header = f'"{policy.name}";q={self.amount};w={self.window}'.encode("latin-1")
        self.policy_field = (_RATELIMIT_POLICY, self.policy_header)
        self.rl_prefix = f'"{policy.name}";r='.encode("latin-1")
        #: ``ctx.tenant_id`` (else the raw ``X-Tenant-ID``, or None) -> storage key, for a
        #: policy keyed by tenant alone
        self.tenant_keys: dict[str | bytes | None, str] = {}


def _escape(value: str) -> str:
    if "/" in value or "%" in value:
        return value.replace("%", "%25").replace("/", "%2F")
    return value


def _tenant(ctx: RequestContext) -> str:
    """The tenant partition: ``ctx.tenant_id``, else ``X-Tenant-ID``, else ``default``."""
    tenant = ctx.tenant_id
    if tenant is None:
        raw = ctx.header(_X_TENANT)
        if not raw:
            return "default"
        tenant = raw.decode("latin-1")
    return _escape(tenant)


def _client_id(ctx: RequestContext) -> str:
    """The ``metadata.client_id`` partition (client-asserted), else ``anonymous``."""
    env = ctx.envelope
    md = env.metadata if env is not None else None
    return (md.client_id if md is not None else None) or "anonymous"




def _client(scope: Scope | None, ctx: RequestContext) -> str:
    if scope is None:
        return ctx.client or "unknown"
    return client_address(scope, ctx)


class _RateCheck:
    """The layer's decision as a gate check (:mod:`aduib_asgi.gate`)."""

    __slots__ = ("layer",)
    stage = RATE

    def __init__(self, layer: RateLimitMiddleware) -> None:
        self.layer = layer

    async def enter(self, ctx: RequestContext, scope: Scope | None, method: str) -> None:
        await self.layer.check(ctx, scope, method)


def make_limiter(storage: str | Storage = "memory://", strategy: str = "fixed-window",
                 **storage_options: Any) -> RateLimiter:
    """A ``limits.aio`` limiter: ``strategy`` over storage given as a URI or instance.

    URIs without the ``async+`` prefix get it; Redis uses the ``redis`` package's
    asyncio client, and takes every form of :mod:`aduib_asgi.storage.redis_url`
    (``limits``' own ``redis+sentinel://`` and ``redis+cluster://`` storages).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {sorted(STRATEGIES)}")
    budget = storage_options.pop("budget", None)
    if isinstance(storage, str) and storage.partition("://")[0] in ("memory", "async+memory"):
        # limits' memory storage, its buckets charged to a byte budget
        storage = BudgetedMemoryStorage(budget=budget)
    if isinstance(storage, str):
        uri = storage if storage.startswith("async+") else "async+" + storage
        scheme = uri.partition("://")[0]
        if scheme.startswith(("async+redis", "async+rediss")):
            storage_options.setdefault("implementation", "redispy")
            require("redis.asyncio", "redis", "A redis:// rate-limit storage")
            if is_redis_url(uri.removeprefix("async+")):  # one URL form for every store
                uri, extra = limits_storage(uri.removeprefix("async+"))
                storage_options = {**extra, **storage_options}
        storage = storage_from_string(uri, **storage_options)  # type: ignore[assignment]
    if not isinstance(storage, Storage):
        raise TypeError("storage must be an async limits storage (limits.aio.storage)")
    limiter_cls: Any = STRATEGIES[strategy]
    limiter: RateLimiter = limiter_cls(storage)
    return limiter


class RateLimitMiddleware:
    """Rate limiting per named policy; rejected requests get 5020 / 429.

    ``storage`` is a ``limits`` URI (``memory://`` default; ``redis://host:port``
    to share the limits between instances) or a ``limits.aio`` storage;
    ``strategy`` is ``fixed-window``, ``moving-window`` or
    ``sliding-window-counter``. ``trusted_proxies`` (IPs or CIDRs) are the only
    peers whose ``X-Forwarded-For`` / ``Forwarded`` is believed. Storage calls
    are bounded by ``timeout`` seconds (in-process memory storage never waits);
    on a storage failure ``fail_open=True`` admits the request (logged, counted
    in ``storage_errors`` and reported to ``on_storage_error``), else 5002 (503).
    ``legacy_headers`` adds ``RateLimit-Limit/Remaining/Reset``.
    """

    layer_name = "ratelimit"

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: Iterable[RateLimitPolicy] = (),
        storage: str | Storage = "memory://",
        strategy: str = "fixed-window",
        trusted_proxies: Iterable[str] = (),
        timeout: float = 0.5,
        fail_open: bool = True,
        legacy_headers: bool = False,
        on_storage_error: Callable[[BaseException], None] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        opts = dict(storage_options or {})
        if isinstance(storage, str) and storage.startswith(("redis", "async+redis")):
            opts.setdefault("socket_timeout", timeout)
            opts.setdefault("socket_connect_timeout", timeout)
        self.storage_timeout = timeout
        self.limiter = make_limiter(storage, strategy, **opts)  # sets quota and timeout
        self.policies = tuple(_Compiled(p) for p in policies)
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError("policy names must be unique")
        # kept for compatibility: the identity layer (aduib_asgi.identity) is the
        # place to configure proxies; a list given here is published the same way
        self.trusted = TrustedProxies(trusted_proxies)
        self._publish_trusted = bool(self.trusted)
        self.fail_open = fail_open
        self.legacy_headers = legacy_headers
        self.on_storage_error = on_storage_error
        self.storage_errors = 0
        self._degraded = False
        self._match: dict[tuple[str | None, str], tuple[_Compiled, ...]] = {}
        self._deferred_match: dict[tuple[str, str], tuple[_Compiled, ...]] = {}
        #: Some policy names methods: a request whose method the layer cannot see
        #: (a WebSocket handshake, a task submission) defers them to the gate.
        self._by_method = any(p.policy.methods or p.policy.services for p in self.policies)
        self._gate_check = _RateCheck(self)

    @property
    def limiter(self) -> RateLimiter:
        """The ``limits.aio`` limiter (assignable: the quota reader follows it)."""
        return self.quota.limiter

    @limiter.setter
    def limiter(self, limiter: RateLimiter) -> None:
        self.quota = quota_for(limiter)
        #: A fixed window's hit without a coroutine (None when it has none: await the hit)
        self._hit_now: Callable[..., tuple[bool, int, float, float] | None] | None = getattr(
            self.quota, "hit_now", None)
        # in-process storage cannot hang: no timeout scope on its hot path
        self.timeout: float | None = (
            None if is_memory(limiter.storage) else self.storage_timeout)

    def context_routes(self) -> dict[str, ContextHandler]:
        """What ``__call__`` runs with the context (aduib_asgi.stack fuses): nothing
        without policies, and ``__call__`` itself when it publishes trusted proxies."""
        if not self.policies or self._publish_trusted:
            return {}
        return {"http": self._handle, "websocket": self._handle}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if (t == "http" or t == "websocket") and self.policies:
            if self._publish_trusted:
                scope.setdefault(TRUSTED_PROXIES_KEY, self.trusted)
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _policies_for(self, method: str | None, path: str) -> tuple[_Compiled, ...]:
        key = (method, path)
        found = self._match.get(key)
        if found is None:
            found = tuple(p for p in self.policies if p.policy.matches(method, path))
            if len(self._match) < _CACHE_MAX:
                self._match[key] = found
        return found

    def _key(self, p: _Compiled, scope: Scope | None, ctx: RequestContext) -> str:
        """The storage key of ``p``'s bucket for this request (``item.key_for(*ids)``);
        for a policy partitioned by tenant alone, remembered per tenant (``ctx.tenant_id``,
        else the raw ``X-Tenant-ID``)."""
        if not p.by_tenant_only:
            return p.item.key_for(*self._identifiers(p, scope, ctx))
        tenant = ctx.tenant_id
        by = tenant if tenant is not None else ctx.header(_X_TENANT)
        keys = p.tenant_keys
        key = keys.get(by)
        if key is None:
            key = p.item.key_for(p.name, _tenant(ctx))
            if len(keys) >= _CACHE_MAX:
                keys.clear()
            keys[by] = key
        return key

    def _identifiers(self, p: _Compiled, scope: Scope | None, ctx: RequestContext,
                     method: str | None = None) -> tuple[str, ...]:
        if p.by_tenant_only:  # the default partition
            return (p.name, _tenant(ctx))
        if p.by_client_only:
            return (p.name, _escape(_client(scope, ctx)))
        ids = [p.name]
        for k in p.key_by:
            if k == "tenant":
                ids.append(_tenant(ctx))
            elif k == "principal":
                ids.append(_escape(ctx.principal or "anonymous"))
            elif k == "method":
                ids.append(_escape(method or ctx.method or (scope["path"] if scope else "")))
            elif k == "client_id":
                ids.append(_escape(_client_id(ctx)))
            else:
                ids.append(_escape(_client(scope, ctx)))
        return tuple(ids)

    async def _consume(
        self, policies: tuple[_Compiled, ...], scope: Scope | None, ctx: RequestContext,
        method: str | None = None,
    ) -> tuple[_Compiled | None, list[tuple[_Compiled, int, float]]]:
        """Hit every policy (stop at the first that refuses): (refusing policy, stats)."""
        quota = self.quota
        stats: list[tuple[_Compiled, int, float]] = []
        for p in policies:
            ok, remaining, reset = await quota.hit(
                p.item, self._identifiers(p, scope, ctx, method), p.cost)
            stats.append((p, remaining, reset))
            if not ok:
                return p, stats
        return None, stats

    # -- the decision for a method named later (aduib_asgi.gate) ---------------------------

    def _deferred_policies(self, method: str, path: str) -> tuple[_Compiled, ...]:
        """The policies ``method`` adds to those the request itself was charged for."""
        key = (method, path)
        found = self._deferred_match.get(key)
        if found is None:
            charged = self._policies_for(None, path)
            found = tuple(p for p in self._policies_for(method, path) if p not in charged)
            if len(self._deferred_match) < _CACHE_MAX:
                self._deferred_match[key] = found
        return found

    async def check(self, ctx: RequestContext, scope: Scope | None, method: str) -> None:
        """Charge the call of ``method`` to its quotas; raise 5020 (or 5002) when refused.

        The same decision as for an HTTP request of that method (metadata,
        headers, ``Retry-After``), for entry paths that name it later.
        """
        policies = self._deferred_policies(method, scope["path"] if scope is not None else "")
        if not policies:
            return
        try:
            if self.timeout is None:
                refused, stats = await self._consume(policies, scope, ctx, method)
            else:
                refused, stats = await call_within(self.timeout, self._consume,
                                                   policies, scope, ctx, method)
        except BudgetExceeded:  # no room for another bucket of this tenant: 429 / 5021
            raise
        except Exception as exc:
            if not self._storage_error(exc):
                raise self._unavailable() from None
            return
        if self._degraded:
            self._recovered()
        p, remaining, reset, after = self._report(ctx, stats, refused, time.time())
        ctx.rate_limit = {"limit": p.amount, "remaining": remaining,
                          "reset_at_ms": int(reset * 1000)}
        if refused is not None:
            raise self._refusal(refused, after)

    def _handle(self, scope: Scope, receive: Receive, send: Send,
                ctx: RequestContext) -> Awaitable[None]:
        """Charge the request; the awaitable that runs the app (or answers the refusal).

        Not a coroutine itself: a request no policy applies to, and one admitted
        by a ``memory://`` fixed window, cost the stack no frame here (the inner
        app's own awaitable is handed back); other storages are awaited.
        """
        if ctx.method is None and self._by_method:  # a method named later: the gate's turn
            defer(ctx, self._gate_check)
        policies = self._match.get((ctx.method, scope["path"]))
        if policies is None:
            policies = self._policies_for(ctx.method, scope["path"])
        if not policies:
            return self.app(scope, receive, send)
        hit_now = self._hit_now
        if hit_now is None or self.timeout is not None or len(policies) != 1:
            return self._charged(scope, receive, send, ctx, policies)
        p = policies[0]
        try:
            # memory:// fixed window: no coroutine, the bucket's key remembered
            done = hit_now(p.item, self._key(p, scope, ctx), p.cost, p.window)
        except BudgetExceeded as exc:  # no room for another bucket of this tenant
            return refuse(scope, send, exc, ctx=ctx)
        except Exception as exc:
            return self._storage_failed(exc, scope, receive, send, ctx)
        if done is None:  # not limits' synchronous memory storage (replaced): awaited
            return self._charged(scope, receive, send, ctx, policies)
        ok, remaining, reset, now = done
        if self._degraded:
            self._recovered()
        after = _ceil(reset - now)
        if after < 1:  # never invite a retry before the window resets
            after = 0 if ok else 1
        ctx.response_headers += (p.policy_field,
                                 (_RATELIMIT, b"%s%d;t=%d" % (p.rl_prefix, remaining, after)))
        ctx.rate_limit = {"limit": p.amount, "remaining": remaining,
                          "reset_at_ms": int(reset * 1000)}
        if self.legacy_headers:
            self._legacy(ctx, p, remaining, after)
        if ok:
            return self.app(scope, receive, send)
        return refuse(scope, send, self._refusal(p, after), ctx=ctx)

    async def _charged(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                       policies: tuple[_Compiled, ...]) -> None:
        """Charge ``policies`` through the limiter's coroutines (any storage, any strategy)."""
        try:
            if self.timeout is None:
                refused, stats = await self._consume(policies, scope, ctx)
            else:
                refused, stats = await call_within(self.timeout, self._consume,
                                                   policies, scope, ctx)
        except BudgetExceeded as exc:  # no room for another bucket of this tenant
            await refuse(scope, send, exc, ctx=ctx)
            return
        except Exception as exc:
            await self._storage_failed(exc, scope, receive, send, ctx)
            return
        if self._degraded:
            self._recovered()
        p, remaining, reset, after = self._report(ctx, stats, refused, time.time())
        ctx.rate_limit = {"limit": p.amount, "remaining": remaining,
                          "reset_at_ms": int(reset * 1000)}
        if self.legacy_headers:
            self._legacy(ctx, p, remaining, after)
        if refused is None:
            await self.app(scope, receive, send)
            return
        await refuse(scope, send, self._refusal(refused, after), ctx=ctx)

    @staticmethod
    def _legacy(ctx: RequestContext, p: _Compiled, remaining: int, after: int) -> None:
        """``RateLimit-Limit/Remaining/Reset`` of the reported policy ``p``."""
        ctx.add_response_header(_LEGACY_LIMIT, b"%d" % p.amount)
        ctx.add_response_header(_LEGACY_REMAINING, b"%d" % remaining)
        ctx.add_response_header(_LEGACY_RESET, b"%d" % after)

    @staticmethod
    def _refusal(refused: _Compiled, after: int) -> RpcError:
        return RpcError(
            5020, f"Rate limit {refused.name!r} exceeded; retry in {after} s",
            details=[{"type": "rate_limit", "reason": "quota exhausted",
                      "metadata": {"policy": refused.name, "limit": refused.amount,
                                   "window_s": refused.window, "retry_after_s": after}}],
            headers={"Retry-After": str(after)},
        )

    @staticmethod
    def _unavailable() -> RpcError:
        return RpcError(5002, "Rate limiting is unavailable", headers={"Retry-After": "1"})

    def _storage_error(self, exc: Exception) -> bool:
        """Count and report a storage failure; True when the request is admitted anyway."""
        self.storage_errors += 1
        if self.on_storage_error is not None:
            self.on_storage_error(exc)
        if not self._degraded:
            self._degraded = True
            logger.warning("rate-limit storage failed (%s: %s); %s", type(exc).__name__,
                           safe(str(exc)),
                           "admitting requests" if self.fail_open else "refusing requests")
        return self.fail_open

    def _recovered(self) -> None:
        self._degraded = False
        logger.warning("rate-limit storage is reachable again")

    @staticmethod
    def _report(
        ctx: RequestContext, stats: list[tuple[_Compiled, int, float]],
        refused: _Compiled | None, now: float,
    ) -> tuple[_Compiled, int, float, int]:
        """Headers for the applied policies; the policy reported in metadata and its ``t``.

        The refusing policy when there is one, else the one with the least left.
        """
        policy_items: list[bytes] = []
        rl_items: list[bytes] = []
        chosen = stats[-1] if refused is not None else min(stats, key=_REMAINING)
        chosen_after = 0
        for item in stats:
            p, remaining, reset = item
            after = max(0, math.ceil(reset - now))
            if p is refused:
                after = max(1, after)
            if item is chosen:
                chosen_after = after
            policy_items.append(p.policy_header)
            rl_items.append(b"%s%d;t=%d" % (p.rl_prefix, remaining, after))
        ctx.add_response_header(_RATELIMIT_POLICY, b", ".join(policy_items))
        ctx.add_response_header(_RATELIMIT, b", ".join(rl_items))
        return chosen[0], chosen[1], chosen[2], chosen_after

    async def _storage_failed(self, exc: Exception, scope: Scope, receive: Receive,
                              send: Send, ctx: RequestContext) -> None:
        if self._storage_error(exc):
            await self.app(scope, receive, send)
            return
        error = self._unavailable()
        if scope["type"] == "websocket":
            await refuse_websocket(scope, send, error, ctx=ctx, close_code=1013)
            return
        await send_error(scope, send, error, ctx=ctx)
