"""Per-method / per-service / per-path configuration lookup shared by the QoS layers.

A configuration table is keyed by one of:

- a full method name, ``"rpc.v2/Slow/work"``;
- a service name, ``"Slow"`` (every method of that service);
- an HTTP path starting with ``/``, ``"/reports"`` (for plain ASGI apps with no envelope).

The most specific key wins (method, then service, then path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from starlette.types import Scope

from aduib_asgi.context import RequestContext

__all__ = ["METHOD_SPEC_KEY", "lookup", "method_spec", "target_key"]

T = TypeVar("T")

#: Where a layer that resolved the method stores its ``MethodSpec`` (common contract).
METHOD_SPEC_KEY = "aduib.method_spec"


def lookup(table: Mapping[str, T], ctx: RequestContext, scope: Scope) -> T | None:
    """The most specific entry of ``table`` for this request, or None."""
    if not table:
        return None
    if ctx.method is not None:
        v = table.get(ctx.method)
        if v is not None:
            return v
        if ctx.service is not None:
            v = table.get(ctx.service)
            if v is not None:
                return v
    return table.get(scope.get("path", ""))


def target_key(ctx: RequestContext, scope: Scope) -> str:
    """The name a request is accounted under: its method, else its HTTP path."""
    return ctx.method if ctx.method is not None else scope.get("path", "")


def method_spec(ctx: RequestContext, registry: Any) -> Any:
    """The request's ``MethodSpec``: from the context, else looked up in ``registry``.

    Returns None when the method is unknown or no registry was given. The spec
    is not stored at ``METHOD_SPEC_KEY``: that key belongs to the registry's
    ``resolve`` (which announces deprecations the first time it records a spec).
    """
    spec = ctx.extras.get(METHOD_SPEC_KEY)
    if spec is not None or registry is None or ctx.method is None:
        return spec
    return registry.get(ctx.method)
