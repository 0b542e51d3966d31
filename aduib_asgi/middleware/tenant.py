"""TenantScopeMiddleware: the request's tenant, validated and bound for its whole life.

The tenant comes from the envelope's ``metadata.tenant_id`` and/or the
``X-Tenant-ID`` header. When both are present they must agree, else 2003
(PROTOCOL.md section 2); a value that does not match the pattern is 2003; no
tenant at all is 2002 when ``required``, else ``default`` (possibly None).

The tenant is stored on the request context (``ctx.tenant_id``) and bound to
:data:`current_tenant` for the request's whole life: handler code, log filters,
streaming generators and sync handlers run in worker threads (anyio copies
contextvars into them) all see it; the binding is reset in ``finally``.
Per-tenant configuration overrides (``overrides={"acme": {"rate_limit": ...}}``)
are exposed as :func:`tenant_setting` and ``ctx.extras["aduib.tenant_config"]``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import CONTEXT_KEY, RequestContext, run_with_context
from aduib_asgi.errors import RpcError, detail
from aduib_asgi.gate import TENANT, defer
from aduib_asgi.responses import refuse

__all__ = [
    "DEFAULT_TENANT_PATTERN",
    "TENANT_CONFIG_KEY",
    "TenantScopeMiddleware",
    "bind_tenant",
    "current_tenant",
    "get_tenant",
    "tenant_setting",
    "unbind_tenant",
]

DEFAULT_TENANT_PATTERN = r"[A-Za-z0-9._-]{1,64}"
#: ``ctx.extras`` key of the current tenant's configuration overrides (a mapping).
TENANT_CONFIG_KEY = "aduib.tenant_config"

#: The tenant of the request being handled in this task/thread (None outside one).
current_tenant: ContextVar[str | None] = ContextVar("aduib_tenant", default=None)
_current_config: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "aduib_tenant_config", default=None
)
_EMPTY: Mapping[str, Any] = {}
#: Bounds of a layer's set of tenant ids known to match its pattern.
_MAX_VALID = 1024
_MAX_VALID_LENGTH = 256


def get_tenant() -> str | None:
    """The current request's tenant id, if any."""
    return current_tenant.get()


def bind_tenant(tenant: str | None, config: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """Bind the tenant contextvars outside a request (a task run); undo: :func:`unbind_tenant`."""
    return current_tenant.set(tenant), _current_config.set(config or _EMPTY)


def unbind_tenant(tenant_token: Any, config_token: Any) -> None:
    _current_config.reset(config_token)
    current_tenant.reset(tenant_token)


def tenant_setting(key: str, default: Any = None) -> Any:
    """A per-tenant configuration override for the current request, or ``default``."""
    config = _current_config.get()
    if config is None:
        return default
    return config.get(key, default)


class TenantScopeMiddleware:
    """Resolve, validate and bind the tenant of each request.

    Precedence: ``metadata.tenant_id`` and the header must agree when both are
    given (else 2003); either one alone is used; neither → ``default``, or 2002
    when ``required``. ``pattern`` is matched in full (2003 when it fails).
    """

    layer_name = "tenant"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_handle", "websocket": "_handle"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "X-Tenant-ID",
        pattern: str = DEFAULT_TENANT_PATTERN,
        required: bool = False,
        default: str | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.header_name = header
        self._header = header.lower().encode("latin-1")
        self._pattern = pattern
        self._match = re.compile(pattern).fullmatch
        self.required = required
        if default is not None and not self._match(default):
            raise ValueError(f"default tenant {default!r} does not match {pattern!r}")
        self.default = default
        self.overrides: dict[str, Mapping[str, Any]] = dict(overrides or {})
        self._gate_check = _TenantCheck(self)
        #: Tenant ids that matched ``pattern`` (bounded: past the bound, or for a value
        #: longer than 256 characters, the pattern is matched every time).
        self._valid: set[str] = set()

    def bind(self, ctx: RequestContext, tenant: str | None) -> Callable[[], None]:
        """Make ``tenant`` the request's tenant (context, contextvars, overrides) until
        the returned release is called (in the same task)."""
        token, ctoken = self._set(ctx, tenant)

        def release() -> None:
            _unset(token, ctoken)

        return release

    def _set(self, ctx: RequestContext, tenant: str | None) -> tuple[Any, Any]:
        """Bind ``tenant``; the tokens that undo it (:func:`_unset`)."""
        ctx.tenant_id = tenant
        config = self.overrides.get(tenant, _EMPTY) if tenant is not None else _EMPTY
        if config:
            ctx.extras[TENANT_CONFIG_KEY] = config
        elif TENANT_CONFIG_KEY in ctx.extras:
            del ctx.extras[TENANT_CONFIG_KEY]
        token = current_tenant.set(tenant)
        if config is _EMPTY:
            outer = _current_config.get()
            if outer is None or outer is _EMPTY:  # no overrides either way: nothing to set
                return token, None
        return token, _current_config.set(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t != "http" and t != "websocket":
            await self.app(scope, receive, send)
            return
        ctx = scope.get(CONTEXT_KEY)  # run_with_context, without its call when it exists
        if ctx is not None:
            await self._handle(scope, receive, send, ctx)
        else:
            await run_with_context(self._handle, scope, receive, send)

    def resolve(self, ctx: RequestContext) -> str | None:
        """The tenant of the request (raises RpcError 2002/2003)."""
        env = ctx.envelope
        from_env = env.metadata.tenant_id if env is not None and env.metadata else None
        raw = ctx.header(self._header)
        from_header = None if raw is None else raw.decode("latin-1")
        if from_env is not None:
            self._check(from_env, "metadata.tenant_id")
            if from_header is not None and from_header != from_env:
                raise RpcError(2003, f"metadata.tenant_id and {self.header_name} disagree",
                               details=[detail("must equal the header", field="metadata.tenant_id",
                                               type="value_error"),
                                        detail("must equal metadata.tenant_id",
                                               field=self.header_name, type="value_error")])
            return from_env
        if from_header is not None:
            self._check(from_header, self.header_name)
            return from_header
        if self.required:
            raise RpcError(2002, "A tenant id is required",
                           details=[detail("missing", field="metadata.tenant_id",
                                           type="missing")])
        return self.default

    def _check(self, value: str, field: str) -> None:
        if value in self._valid:
            return
        if not self._match(value):
            raise RpcError(2003, "Invalid tenant id",
                           details=[detail(f"must match {self._pattern}", field=field,
                                           type="value_error")])
        if len(self._valid) < _MAX_VALID and len(value) <= _MAX_VALID_LENGTH:
            self._valid.add(value)

    def _handle(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> Awaitable[None]:
        """Resolve the tenant; the awaitable that runs the app with it bound (or refuses).

        Not a coroutine itself: with nothing to bind the layer adds no frame.
        """
        env = ctx.envelope
        md = env.metadata if env is not None else None
        if (md is None or md.tenant_id is None) and not self.required \
                and ctx.header(self._header) is None:
            tenant = self.default  # nothing named: resolve's last step, without its call
        else:
            try:
                tenant = self.resolve(ctx)
            except RpcError as exc:
                return refuse(scope, send, exc, ctx=ctx)
        if scope["type"] == "websocket":  # each message may name its tenant: the gate applies it
            defer(ctx, self._gate_check)
        if tenant is None and current_tenant.get() is None and _current_config.get() is None:
            ctx.tenant_id = None
            return self.app(scope, receive, send)  # nothing to bind
        return self._bound(scope, receive, send, ctx, tenant)

    async def _bound(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext,
                     tenant: str | None) -> None:
        token, ctoken = self._set(ctx, tenant)
        try:
            await self.app(scope, receive, send)
        finally:  # _unset(token, ctoken), without its call
            if ctoken is not None:
                _current_config.reset(ctoken)
            current_tenant.reset(token)


def _unset(token: Any, ctoken: Any) -> None:
    if ctoken is not None:
        _current_config.reset(ctoken)
    current_tenant.reset(token)


class _TenantCheck:
    """The layer's decision as a gate check: a WebSocket message's ``metadata.tenant_id``
    is resolved like a request's (agreeing with the handshake's header, matching the
    pattern) and applied to the call."""

    __slots__ = ("layer",)
    stage = TENANT

    def __init__(self, layer: TenantScopeMiddleware) -> None:
        self.layer = layer

    async def enter(self, ctx: RequestContext, scope: Scope | None,
                    method: str) -> Callable[[], None] | None:
        tenant = self.layer.resolve(ctx)
        if tenant == ctx.tenant_id:
            return None
        return self.layer.bind(ctx, tenant)
