"""Who the client is: its address (through trusted proxies) and its caller scope.

Resolved once per request or WebSocket and kept on the request context, so
rate-limit keys, idempotency keys, task idempotency keys, ``rpc/cancel`` call
ids, audit events and logs all name the same client:

- :func:`client_address` — the peer address (``scope["client"]``); only when the
  peer is a trusted proxy, the client ``X-Forwarded-For`` (else RFC 7239
  ``Forwarded: for=``) names, read right to left skipping trusted hops.
  Cached in ``ctx.client``.
- :func:`caller_scope` — the string state is scoped by: tenant and principal,
  and for anonymous callers the client address instead of the (shared, absent)
  principal. Two anonymous clients on different addresses never share a scope.
- :func:`tenant_of` — the caller's tenant (the tenant layer's, else
  ``X-Tenant-ID``, else ``default``).

The trusted proxies are configured once, with :class:`ClientIdentityMiddleware`
(layer ``identity``, outermost but for error mapping), which publishes them in
the scope at :data:`TRUSTED_PROXIES_KEY`; nothing is parsed until a layer asks.
Without it the client is the peer (the safe default: a peer can never change
its address with headers). The same decision gives the client certificate: for
a request from a trusted proxy, the layer makes the ASGI ``tls`` extension the
certificate the proxy forwarded (``Client-Cert`` / ``X-Forwarded-Client-Cert``,
:mod:`aduib_asgi.auth.forwarded_cert`), or none; from any other peer those
headers are ignored. Other concerns take the decision with :func:`from_trusted_proxy`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.auth.forwarded_cert import use_forwarded_certificate
from aduib_asgi.context import RequestContext

__all__ = [
    "TRUSTED_PROXIES_KEY",
    "ClientIdentityMiddleware",
    "TrustedProxies",
    "caller_scope",
    "client_address",
    "forwarded_for",
    "from_trusted_proxy",
    "tenant_of",
]

#: Scope key of the :class:`TrustedProxies` in force for the request.
TRUSTED_PROXIES_KEY = "aduib.trusted_proxies"
_XFF = b"x-forwarded-for"
_FORWARDED = b"forwarded"
_X_TENANT = b"x-tenant-id"
_CACHE_MAX = 4096
_UNKNOWN = "unknown"


class TrustedProxies:
    """Trusted proxy networks (IPs or CIDRs), with a small cache of per-address answers."""

    __slots__ = ("_cache", "_nets")

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        self._nets = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __contains__(self, addr: object) -> bool:
        if not isinstance(addr, str):
            return False
        hit = self._cache.get(addr)
        if hit is not None:
            return hit
        try:
            ip = ipaddress.ip_address(addr)
            trusted = any(ip in net for net in self._nets)
        except ValueError:
            trusted = False
        if len(self._cache) < _CACHE_MAX:
            self._cache[addr] = trusted
        return trusted

    def resolve(self, peer: str, ctx: RequestContext) -> str:
        """The client behind ``peer``: ``peer`` itself unless it is a trusted proxy.

        ``X-Forwarded-For`` (else ``Forwarded``) is read right to left, skipping
        trusted proxies; the first untrusted hop is the client.
        """
        if not self._nets or peer not in self:
            return peer
        raw = ctx.header(_XFF)
        if raw is not None:
            hops = [h.strip() for h in raw.decode("latin-1").split(",") if h.strip()]
        else:
            fwd = ctx.header(_FORWARDED)
            hops = forwarded_for(fwd.decode("latin-1")) if fwd is not None else []
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0] if hops else peer


_NO_PROXIES = TrustedProxies()


def forwarded_for(value: str) -> list[str]:
    """The ``for=`` addresses of an RFC 7239 ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, v = pair.strip().partition("=")
            if name.lower() != "for":
                continue
            v = v.strip().strip('"')
            if v.startswith("["):  # "[2001:db8::1]:4711"
                v = v[1:v.find("]")] if "]" in v else v[1:]
            elif v.count(":") == 1:  # "192.0.2.1:8080"
                v = v.partition(":")[0]
            out.append(v)
    return out


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else _UNKNOWN


def from_trusted_proxy(scope: Scope, trusted: TrustedProxies | None = None) -> bool:
    """Whether the peer is a trusted proxy (its forwarding headers may be believed)."""
    if trusted is None:
        trusted = scope.get(TRUSTED_PROXIES_KEY) or _NO_PROXIES
    return bool(trusted) and _peer(scope) in trusted


def client_address(scope: Scope, ctx: RequestContext,
                   trusted: TrustedProxies | None = None) -> str:
    """The client's address, resolved once per request and kept in ``ctx.client``.

    ``trusted`` defaults to the proxies published in the scope
    (:class:`ClientIdentityMiddleware`); without any, the peer address.
    """
    addr = ctx.client
    if addr is None:
        if trusted is None:
            trusted = scope.get(TRUSTED_PROXIES_KEY)
        client = scope.get("client")
        addr = str(client[0]) if client else _UNKNOWN
        if trusted:
            addr = trusted.resolve(addr, ctx)
        ctx.client = addr
    return addr


def tenant_of(ctx: RequestContext | None) -> str:
    """The caller's tenant: the tenant layer's, else ``X-Tenant-ID``, else ``default``."""
    if ctx is None:
        return "default"
    if ctx.tenant_id:
        return ctx.tenant_id
    raw = ctx.header(_X_TENANT)
    return raw.decode("latin-1") if raw else "default"


def caller_scope(ctx: RequestContext | None, scope: Scope | None = None) -> str:
    """The scope a caller's state lives in: ``tenant`` + ``p:principal``, or, for an
    anonymous caller, ``tenant`` + ``a:client address``.

    Idempotency keys, task idempotency keys and ``rpc/cancel`` call ids are
    looked up under it, so one caller never reaches another's. Fields are
    separated by ``\\x1f`` (which no tenant or principal contains). Without the
    ASGI ``scope`` (a task run, a worker thread) the address is the one already
    resolved on the context.
    """
    tenant = tenant_of(ctx)
    if ctx is not None and ctx.principal is not None:
        return f"{tenant}\x1fp:{ctx.principal}"
    if ctx is None:
        return f"{tenant}\x1fa:{_UNKNOWN}"
    addr = ctx.client
    if addr is None:
        addr = client_address(scope, ctx) if scope is not None else _UNKNOWN
    return f"{tenant}\x1fa:{addr}"


class ClientIdentityMiddleware:
    """Configure who the client is for every later layer (layer ``identity``).

    ``trusted_proxies`` (IPs or CIDRs) are the only peers whose
    ``X-Forwarded-For`` / ``Forwarded`` headers name the client and whose
    ``Client-Cert`` / ``X-Forwarded-Client-Cert`` headers give its certificate
    (the request's ``tls`` extension). The layer publishes the proxies in the
    scope (:data:`TRUSTED_PROXIES_KEY`); the address is resolved lazily, once,
    by :func:`client_address`.
    """

    layer_name = "identity"
    #: runs no handler with the context; calls ``app`` for every scope (aduib_asgi.stack)
    context_methods: ClassVar[dict[str, str]] = {}

    def __init__(self, app: ASGIApp, *, trusted_proxies: Iterable[str] = ()) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" or scope["type"] == "websocket":
            scope[TRUSTED_PROXIES_KEY] = self.trusted
            if self.trusted and _peer(scope) in self.trusted:
                use_forwarded_certificate(scope)
        await self.app(scope, receive, send)
