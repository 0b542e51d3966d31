"""AuthMiddleware: pluggable authentication, per-method role rules, audit events.

Credentials are read from the envelope's ``metadata.auth`` {scheme, credentials}
(when a layer in front decoded the envelope) or else from ``Authorization:
Bearer``, the API-key header, or the connection's verified client certificate
(ASGI ``tls`` extension), in that order; a header counts only when an
authenticator for its scheme is configured. Client-asserted ``metadata.auth.principal``
and ``roles`` are never trusted. ``metadata.auth.scheme = mtls`` without a verified
client certificate is 3000.

Role rules (any one listed role grants access) come from the method's
registration options (``registry.register(..., roles=["admin"])``, read from
``ctx.extras["aduib.method_spec"]`` or the ``registry`` given here) and, for
methods without that option, from ``rules`` keyed by pattern (exact method,
``rpc.v2/Service/*``, ``/path-prefix`` for plain apps, ``*``).

Anonymous callers are allowed unless ``require_auth`` (with ``anonymous_methods``
as an allowlist) or the method requires roles: then 3000 (401 with
``WWW-Authenticate``). An authenticated caller without a required role gets 3011
(403). Every decision that matters (a credential was presented, or roles were
required) is sent to the ``audit`` sink; credentials never reach a response, an
error detail, debug info, a log record or an audit event.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.auth.authenticators import (
    Authenticator,
    Credentials,
    Identity,
    client_certificate,
    verified_client_cert,
)
from aduib_asgi.auth.rbac import (
    AUTHORIZE_KEY,
    PatternTable,
    insufficient_scope,
    roles_table,
)
from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.identity import client_address
from aduib_asgi.models import parse_method
from aduib_asgi.observability.audit import AuditEvent, AuditSink, LoggingAuditSink, now_ms
from aduib_asgi.responses import refuse

__all__ = ["CLIENT_CERT_KEY", "METHOD_SPEC_KEY", "AuthMiddleware"]

logger = logging.getLogger("aduib_asgi.auth")

METHOD_SPEC_KEY = "aduib.method_spec"
#: ``ctx.extras`` key: the :class:`CertificateFacts` of the caller's verified certificate.
CLIENT_CERT_KEY = "aduib.client_cert"
REDACTED = "[REDACTED]"
_AUTHORIZATION = b"authorization"
_X_TENANT = b"x-tenant-id"
_BEARER = b"bearer"


class AuthMiddleware:
    """Authenticate with the configured authenticators, then apply role rules."""

    layer_name = "auth"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_handle", "websocket": "_handle"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticators: Sequence[Authenticator] = (),
        require_auth: bool = False,
        anonymous_methods: Iterable[str] = (),
        rules: Mapping[str, Iterable[str]] | None = None,
        scope_rules: Mapping[str, Iterable[str]] | None = None,
        registry: Any = None,
        audit: AuditSink | None = None,
        realm: str = "aduib_rpc",
    ) -> None:
        self.app = app
        self.authenticators: dict[str, Authenticator] = {a.scheme: a for a in authenticators}
        self.require_auth = require_auth
        self._anonymous: PatternTable[bool] = PatternTable(dict.fromkeys(anonymous_methods, True))
        self._rules = roles_table(rules)
        self._scope_rules = roles_table(scope_rules, what="scope")
        # the tables as the hot path tests them: None when empty (no __bool__ call)
        self._role_table = self._rules if self._rules else None
        self._scope_table = self._scope_rules if self._scope_rules else None
        self.registry = registry
        self.audit: AuditSink = audit if audit is not None else LoggingAuditSink()
        api = self.authenticators.get("api_key")
        header = getattr(api, "header", "X-API-Key")
        self._api_key_header = str(header).lower().encode("latin-1")
        mtls = self.authenticators.get("mtls")
        self._mtls = mtls is not None
        self._mtls_required = bool(getattr(mtls, "required", False))
        self._bearer = "bearer" in self.authenticators
        self._api_key = api is not None
        challenges = [a.challenge for a in self.authenticators.values()] or [
            f'Bearer realm="{realm}"']
        self._challenge_all = ", ".join(challenges)
        self._realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- request --------------------------------------------------------------------

    def _handle(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> Awaitable[None]:
        """Read the credentials; the awaitable that authenticates them and runs the app
        (or answers the refusal).

        Not a coroutine itself: a caller presenting no credentials costs the stack
        no frame here (the inner app's own awaitable is handed back).
        """
        creds: Credentials | None = None
        payload = ctx.payload
        if isinstance(payload, dict) and "metadata" in payload:
            _redact_payload(ctx)  # credentials are read from the envelope (a SecretStr)
        try:
            if self._mtls:
                cert = client_certificate(scope)
                if cert is not None:
                    ctx.extras[CLIENT_CERT_KEY] = cert
                elif self._mtls_required:
                    raise RpcError(3000, "A verified client certificate is required")
            creds = self._credentials(ctx, scope)
            if creds is not None:
                return self._authenticated(scope, receive, send, ctx, creds)
            required, scopes = self._decide(
                None, ctx, ctx.method, ctx.service, scope.get("path"),
                tenants=scope["type"] == "http" or ctx.header(_X_TENANT) is not None)
        except RpcError as exc:
            return self._denied(scope, send, ctx, exc, creds)
        self._admitted(scope, ctx, None, None, required, scopes)
        return self.app(scope, receive, send)

    async def _authenticated(self, scope: Scope, receive: Receive, send: Send,
                             ctx: RequestContext, creds: Credentials) -> None:
        try:
            authenticator = self.authenticators.get(creds.scheme)
            if authenticator is None:
                raise RpcError(3000, f"Authentication scheme {creds.scheme!r} is not accepted")
            identity = await authenticator.authenticate(creds, scope)
            if identity is not None:
                ctx.principal = identity.principal
                ctx.roles = identity.roles
                ctx.scopes = identity.scopes
                ctx.auth_scheme = creds.scheme
            # a WebSocket whose handshake names no tenant (browsers cannot set
            # headers) is checked on its message, once the tenant it names applies
            required, scopes = self._decide(
                identity, ctx, ctx.method, ctx.service, scope.get("path"),
                tenants=scope["type"] == "http" or ctx.header(_X_TENANT) is not None)
        except RpcError as exc:
            await self._denied(scope, send, ctx, exc, creds)
            return
        self._admitted(scope, ctx, identity, creds, required, scopes)
        await self.app(scope, receive, send)

    def _denied(self, scope: Scope, send: Send, ctx: RequestContext, exc: RpcError,
                creds: Credentials | None) -> Awaitable[None]:
        """Audit the refusal; the awaitable that answers it."""
        error = _scrub(exc, creds)
        self._audit(ctx, "deny", error.code, error.message, creds, scope=scope)
        return self._reject(scope, send, ctx, error, creds)

    def _admitted(self, scope: Scope, ctx: RequestContext, identity: Identity | None,
                  creds: Credentials | None, required: tuple[str, ...] | None,
                  scopes: tuple[str, ...] | None) -> None:
        if identity is not None or self._role_table is not None \
                or self._scope_table is not None or self.require_auth:
            # checked again where a method is named later (WebSocket message, task
            # target, an envelope the dispatcher parses)
            ctx.extras[AUTHORIZE_KEY] = partial(self._authorize, identity, creds)
        if creds is not None or required or scopes:
            self._audit(ctx, "allow", 0, "", creds, scope=scope)

    def _credentials(self, ctx: RequestContext, scope: Scope) -> Credentials | None:
        env = ctx.envelope
        auth = env.metadata.auth if env is not None and env.metadata is not None else None
        if auth is not None and (auth.scheme is not None or auth.credentials is not None):
            scheme = auth.scheme.value if auth.scheme is not None else "bearer"
            if scheme == "mtls":
                if verified_client_cert(scope) is None:
                    raise RpcError(3000, "mTLS requires a verified client certificate")
                return Credentials("mtls", None, "metadata.auth")
            secret = auth.credentials.get_secret_value() if auth.credentials else ""
            if not secret:
                raise RpcError(3000, "metadata.auth.credentials is missing")
            return Credentials(scheme, secret, "metadata.auth")
        # Headers count only for the schemes an authenticator is configured for.
        value = ctx.header(_AUTHORIZATION) if self._bearer else None
        if value is not None:
            kind, _, token = value.partition(b" ")
            token = token.strip()
            if kind.lower() != _BEARER or not token:
                raise RpcError(3000, "Only the Bearer authorization scheme is accepted")
            return Credentials("bearer", token.decode("latin-1"), "Authorization")
        key = ctx.header(self._api_key_header) if self._api_key else None
        if key is not None:
            return Credentials("api_key", key.decode("latin-1"), "X-API-Key")
        if self._mtls and verified_client_cert(scope) is not None:
            return Credentials("mtls", None, "tls")
        return None

    def _decide(self, identity: Identity | None, ctx: RequestContext, method: str | None,
                service: str | None, path: str | None, *, tenants: bool = True,
                ) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        """The one authorization decision, for the request (``method`` as the layer saw
        it, and its path) or for a method named later: registration options before
        pattern rules, ``require_auth`` with its anonymous allowlist, tenant binding,
        roles, scopes. Raises the refusal; returns the (roles, scopes) required."""
        options: Mapping[str, Any] | None = None
        if method is not None:  # the method's registration options, when known
            spec = ctx.extras.get(METHOD_SPEC_KEY)
            if (spec is None or spec.method != method) and self.registry is not None:
                spec = self.registry.get(method)
            if spec is not None:
                options = getattr(spec, "options", None)
        roles = scopes = None
        if options:  # registration options before pattern rules
            value = options.get("roles")
            if value is not None:
                roles = tuple(value)
            value = options.get("scopes")
            if value is not None:
                scopes = tuple(value)
        if roles is None and self._role_table is not None:
            roles = self._role_table.get(method, service, path)
        if scopes is None and self._scope_table is not None:
            scopes = self._scope_table.get(method, service, path)
        if identity is None:
            if roles or scopes or (self.require_auth and not self._anonymous.get(
                    method, service, path)):
                raise RpcError(3000, "Authentication required")
            return roles, scopes
        if tenants and identity.tenants is not None:
            _check_tenants(identity, ctx)
        if roles and not _has_any(identity.roles, roles):
            raise RpcError(3011, "Permission denied: a required role is missing")
        if scopes and not all(s in identity.scopes for s in scopes):
            raise insufficient_scope(method, scopes, self._realm)
        return roles, scopes

    def _authorize(self, identity: Identity | None, creds: Credentials | None,
                   ctx: RequestContext, method: str) -> None:
        """The late check (``AUTHORIZE_KEY``, the gate's auth stage) for a method named
        after the layer ran: :meth:`_decide` for it, the envelope's tenant included;
        denials are audited."""
        try:
            parts = parse_method(method)
            self._decide(identity, ctx, method, parts[0] if parts is not None else None, None)
        except RpcError as exc:
            if exc.code == 3000 and "WWW-Authenticate" not in exc.headers:
                exc.headers["WWW-Authenticate"] = self._challenge_all
            self._audit(ctx, "deny", exc.code, exc.message, creds, method=method)
            raise

    # -- outcome --------------------------------------------------------------------

    def _audit(self, ctx: RequestContext, outcome: str, code: int, reason: str,
               creds: Credentials | None, *, method: str | None = None,
               scope: Scope | None = None) -> None:
        cert = ctx.extras.get(CLIENT_CERT_KEY)
        try:
            self.audit(AuditEvent(
                outcome=outcome, code=code, request_id=ctx.request_id,
                method=method or ctx.method,
                tenant_id=ctx.tenant_id, principal=ctx.principal,
                scheme=creds.scheme if creds is not None else None, reason=reason,
                timestamp_ms=now_ms(),
                client=client_address(scope, ctx) if scope is not None else ctx.client,
                **(cert.audit_fields() if cert is not None else {}),
            ))
        except Exception:
            logger.exception("audit sink failed")

    async def _reject(self, scope: Scope, send: Send, ctx: RequestContext, error: RpcError,
                      creds: Credentials | None) -> None:
        if 3000 <= error.code < 3010 and "WWW-Authenticate" not in error.headers:
            error.headers["WWW-Authenticate"] = self._challenge(error, creds)
        await refuse(scope, send, error, ctx=ctx)

    def _challenge(self, error: RpcError, creds: Credentials | None) -> str:
        if error.code == 3000 or creds is None:
            return self._challenge_all
        authenticator = self.authenticators.get(creds.scheme)
        base = authenticator.challenge if authenticator else f'Bearer realm="{self._realm}"'
        if error.code == 3002:
            return f'{base}, error="invalid_token", error_description="token expired"'
        return f'{base}, error="invalid_token"'


def _named_tenants(ctx: RequestContext) -> set[str]:
    """Every tenant the request names: the tenant layer's, the envelope's, the header's.

    Each is checked, so no source can disagree with the one that was checked.
    """
    named: set[str] = set()
    if ctx.tenant_id is not None:
        named.add(ctx.tenant_id)
    env = ctx.envelope
    md = env.metadata if env is not None else None
    if md is not None and md.tenant_id is not None:
        named.add(md.tenant_id)
    raw = ctx.header(_X_TENANT)
    if raw is not None:
        named.add(raw.decode("latin-1"))
    return named


def _check_tenants(identity: Identity, ctx: RequestContext) -> None:
    """3010 unless every tenant the request names is one the identity may act for.

    A request naming none acts for the implicit ``default`` tenant.
    """
    allowed = identity.tenants or ()
    for tenant in sorted(_named_tenants(ctx) or ("default",)):
        if tenant not in allowed:
            raise RpcError(3010, f"{identity.principal!r} may not act for tenant {tenant!r}")


def _has_any(have: tuple[str, ...], need: tuple[str, ...]) -> bool:
    return any(r in have for r in need)


def _scrub(error: RpcError, creds: Credentials | None) -> RpcError:
    """The error without any trace of the presented secret (message and details).

    Only the secret as itself is replaced — not where its characters happen to
    occur inside other words ("tok" in "Invalid token" stays).
    """
    secret = creds.secret if creds is not None else None
    if not secret or (secret not in error.message and secret not in repr(error.details)):
        return error
    alone = re.compile(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])")

    def redact(text: str) -> str:
        return alone.sub(REDACTED, text)

    message = redact(error.message)
    details = [{k: (redact(v) if isinstance(v, str) else v) for k, v in d.items()}
               for d in error.details]
    if message == error.message and details == error.details:
        return error
    return RpcError(error.code, message, details=details, headers=error.headers,
                    http_status=error.http_status)


def _redact_payload(ctx: RequestContext) -> None:
    """Blank ``metadata.auth.credentials`` in the decoded body kept on the context."""
    payload = ctx.payload
    if isinstance(payload, dict):
        meta = payload.get("metadata")
        if isinstance(meta, dict):
            auth = meta.get("auth")
            if isinstance(auth, dict) and auth.get("credentials"):
                auth["credentials"] = REDACTED


def identity_of(ctx: RequestContext) -> Identity | None:
    """The authenticated identity of a request (None when anonymous)."""
    if ctx.principal is None:
        return None
    return Identity(ctx.principal, ctx.roles)
