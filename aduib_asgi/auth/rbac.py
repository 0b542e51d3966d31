"""Method patterns for role rules and anonymous allowlists.

A pattern is one of: an exact method (``rpc.v2/Admin/secret``), a whole service
(``rpc.v2/Admin/*``), a path prefix for non-RPC apps (``/admin``), or ``*``
(everything). The most specific match wins: method, then service, then the
longest path prefix, then ``*``. Lookups are dictionary lookups; nothing is
compiled per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from aduib_asgi.errors import RpcError
from aduib_asgi.models import parse_method

__all__ = [
    "AUTHORIZE_KEY",
    "PatternTable",
    "authorize_method",
    "enforce_method_access",
    "enforce_method_roles",
    "insufficient_scope",
    "names",
    "roles_table",
]

T = TypeVar("T")

#: ``ctx.extras`` key of the auth layer's late check, ``check(ctx, method)``: run
#: where the method becomes known after the auth layer (a WebSocket's first
#: message, a task's target) so pattern rules and tenant binding hold there too.
AUTHORIZE_KEY = "aduib.authorize"
_AUTHORIZED_KEY = "aduib.authorized"  # the method the late check last admitted

# RFC 6750 scope-token characters (and the same for role names in challenges)
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\"}


def names(value: object, *, what: str = "scope") -> tuple[str, ...]:
    """Role or scope names as a tuple; a string is a space-separated list.

    Scope names must be RFC 6750 scope-tokens (no quotes, backslashes, spaces or
    controls: they are echoed in the ``WWW-Authenticate`` challenge); role names
    are free text but not empty. Raises ValueError otherwise.
    """
    items = value.split() if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    out = tuple(str(v) for v in items)
    for n in out:
        if not n or (what == "scope" and not set(n) <= _TOKEN_CHARS):
            raise ValueError(f"bad {what} name {n!r}" + (
                " (RFC 6750 scope-token characters only)" if what == "scope" else ""))
    return out


def authorize_method(ctx: object | None, method: str) -> None:
    """Run the auth layer's late check for ``method`` when the request went through one
    (once per method: the envelope parser and the gate may both ask)."""
    extras = getattr(ctx, "extras", None)
    check = extras.get(AUTHORIZE_KEY) if extras else None
    if check is not None and extras is not None and extras.get(_AUTHORIZED_KEY) != method:
        check(ctx, method)
        extras[_AUTHORIZED_KEY] = method


class PatternTable(Generic[T]):
    """Values keyed by method pattern (see the module docstring)."""

    __slots__ = ("_default", "_exact", "_paths", "_services")

    def __init__(self, entries: Mapping[str, T] | None = None) -> None:
        self._exact: dict[str, T] = {}
        self._services: dict[str, T] = {}
        self._paths: list[tuple[str, T]] = []
        self._default: T | None = None
        for pattern, value in (entries or {}).items():
            if pattern == "*":
                self._default = value
            elif pattern.startswith("/"):
                self._paths.append((pattern, value))
            elif pattern.endswith("/*"):
                parts = parse_method(pattern[:-1] + "x")
                if parts is None:
                    raise ValueError(f"bad service pattern {pattern!r}")
                self._services[parts[0]] = value
            elif parse_method(pattern) is not None:
                self._exact[pattern] = value
            else:
                raise ValueError(f"bad method pattern {pattern!r} "
                                 "(rpc.v2/S/h, rpc.v2/S/*, /path or *)")
        self._paths.sort(key=lambda item: len(item[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._exact or self._services or self._paths or self._default is not None)

    def get(self, method: str | None, service: str | None, path: str | None) -> T | None:
        """The value of the most specific pattern matching the request, or None."""
        if method is not None:
            v = self._exact.get(method)
            if v is not None:
                return v
            if service is not None:
                v = self._services.get(service)
                if v is not None:
                    return v
        elif path is not None:
            for prefix, value in self._paths:
                if path.startswith(prefix):
                    return value
        return self._default


def roles_table(rules: Mapping[str, Iterable[str]] | None, *,
                what: str = "role") -> PatternTable[tuple[str, ...]]:
    """A :class:`PatternTable` of required roles (any one grants access) or scopes."""
    return PatternTable({k: names(v, what=what) for k, v in (rules or {}).items()})


def enforce_method_roles(method: str, roles: Iterable[str] | None, ctx: object | None) -> None:
    """Refuse a caller who lacks every role a method was registered with.

    The last line of defence, applied wherever a method is resolved for a
    request (unary, streams, WebSocket, tasks), so a ``roles=[...]`` registration
    holds even in a stack without the auth layer: no identity → 3000 (401),
    an identity without the role → 3011 (403).
    """
    if not roles:
        return
    have = getattr(ctx, "roles", ()) or ()
    required = set(roles)
    if required.intersection(have):
        return
    if getattr(ctx, "principal", None) is None:
        raise RpcError(3000, f"{method} requires authentication",
                       headers={"WWW-Authenticate": 'Bearer realm="aduib_rpc"'})
    raise RpcError(3011, f"{method} requires one of the roles {sorted(required)}")


def insufficient_scope(method: str | None, required: tuple[str, ...],
                       realm: str = "aduib_rpc") -> RpcError:
    """3012 with the RFC 6750 challenge naming the scopes the request needs."""
    need = " ".join(required)
    return RpcError(3012, f"{method or 'This request'} requires the scopes {need!r}",
                    headers={"WWW-Authenticate": f'Bearer realm="{realm}", '
                                                 f'error="insufficient_scope", scope="{need}"'})


def enforce_method_access(method: str, options: Mapping[str, Any], ctx: object | None) -> None:
    """Apply a registration's ``roles=[...]`` (any one) and ``scopes=[...]`` (all of them).

    Like :func:`enforce_method_roles`, applied wherever a method is resolved, so
    both hold without the auth layer: no identity → 3000, missing role → 3011,
    missing scope → 3012.
    """
    roles = options.get("roles")
    if roles:  # normalised at registration (a tuple); anything else once more here
        enforce_method_roles(method, roles if isinstance(roles, tuple)
                             else names(roles, what="role"), ctx)
    scopes = options.get("scopes")
    if scopes:
        required = scopes if isinstance(scopes, tuple) else names(scopes)
        have = getattr(ctx, "scopes", ()) or ()
        if all(s in have for s in required):
            return
        if getattr(ctx, "principal", None) is None:
            raise RpcError(3000, f"{method} requires authentication",
                           headers={"WWW-Authenticate": 'Bearer realm="aduib_rpc"'})
        raise insufficient_scope(method, required)
