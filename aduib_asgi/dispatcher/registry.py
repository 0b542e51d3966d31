"""The method registry: ``rpc.v2/{service}/{handler}`` -> handler and its properties.

Method-name parsing and lookup live here, the same for every transport
(unary HTTP, SSE, WebSocket, tasks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from aduib_asgi.errors import RpcError, details_from_validation
from aduib_asgi.models import parse_method

__all__ = ["MethodRegistry", "MethodSpec", "service"]

Handler = Callable[..., Any]


@dataclass(slots=True)
class MethodSpec:
    """A registered method and everything the layers need to know about it."""

    method: str
    service: str
    handler: str
    func: Handler
    input_model: type[BaseModel] | None = None
    idempotent: bool = False
    streaming: bool = False
    #: Free-form per-method options other layers read (roles, limits...).
    options: dict[str, Any] = field(default_factory=dict)
    is_async: bool = False
    is_async_gen: bool = False
    is_sync_gen: bool = False
    takes_context: bool = False

    def parse_input(self, data: dict[str, Any] | None) -> Any:
        """``data`` as the handler receives it: the input model when declared (2001 if bad)."""
        if self.input_model is None:
            return data if data is not None else {}
        try:
            return self.input_model.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise RpcError(2001, f"Invalid params for {self.method}",
                           details=details_from_validation(exc, prefix="data")) from None


def _takes_context(func: Handler) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.kind == p.VAR_POSITIONAL
    ]
    return len(positional) >= 2


class MethodRegistry:
    """Holds the methods a dispatcher serves."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodSpec] = {}
        self._services: set[str] = set()

    def register(
        self,
        method: str,
        func: Handler,
        *,
        input_model: type[BaseModel] | None = None,
        idempotent: bool = False,
        streaming: bool | None = None,
        **options: Any,
    ) -> MethodSpec:
        """Register ``func`` as ``method`` (``rpc.v2/{service}/{handler}``).

        ``func(data)`` or ``func(data, ctx)``; sync or async; a (sync or async)
        generator is a streaming handler. ``data`` is the request's ``data``
        object, or an ``input_model`` instance when one is declared.
        """
        parts = parse_method(method)
        if parts is None:
            raise ValueError(f"method {method!r} is not rpc.v2/{{service}}/{{handler}}")
        if method in self._methods:
            raise ValueError(f"method {method!r} is already registered")
        is_async_gen = inspect.isasyncgenfunction(func)
        is_sync_gen = inspect.isgeneratorfunction(func)
        spec = MethodSpec(
            method=method,
            service=parts[0],
            handler=parts[1],
            func=func,
            input_model=input_model,
            idempotent=idempotent,
            streaming=(is_async_gen or is_sync_gen) if streaming is None else streaming,
            options=options,
            is_async=inspect.iscoroutinefunction(func),
            is_async_gen=is_async_gen,
            is_sync_gen=is_sync_gen,
            takes_context=_takes_context(func),
        )
        self._methods[method] = spec
        self._services.add(parts[0])
        return spec

    def method(self, method: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def deco(func: Handler) -> Handler:
            self.register(method, func, **kwargs)
            return func

        return deco

    def resolve(self, method: str) -> MethodSpec:
        """The spec for ``method``: 1002 malformed, 4002 unknown service, 4001 unknown handler."""
        spec = self._methods.get(method)
        if spec is not None:
            return spec
        parts = parse_method(method)
        if parts is None:
            raise RpcError(1002, "method must have the form rpc.v2/{service}/{handler}",
                           details=[{"type": "value_error", "field": "method",
                                     "reason": "bad method format"}])
        if parts[0] not in self._services:
            raise RpcError(4002, f"Service {parts[0]!r} not found")
        raise RpcError(4001, f"Method {method!r} not found")

    def get(self, method: str) -> MethodSpec | None:
        return self._methods.get(method)

    def __iter__(self) -> Any:
        return iter(self._methods.values())

    def __len__(self) -> int:
        return len(self._methods)

    def __contains__(self, method: object) -> bool:
        return method in self._methods


def service(registry: MethodRegistry, name: str, **defaults: Any) -> Callable[[type], type]:
    """Class decorator: register every public method of an instance of the class.

    ``@service(registry, "Echo")`` on ``class Echo`` registers ``rpc.v2/Echo/<name>``
    for each public method; per-method options go in ``defaults`` or in a
    ``__rpc_options__`` dict on the class keyed by handler name.
    """

    def deco(cls: type) -> type:
        instance = cls()
        per_method: dict[str, dict[str, Any]] = getattr(cls, "__rpc_options__", {})
        for attr in dir(cls):
            if attr.startswith("_"):
                continue
            func = getattr(instance, attr)
            if callable(func):
                opts = {**defaults, **per_method.get(attr, {})}
                registry.register(f"rpc.v2/{name}/{attr}", func, **opts)
        return cls

    return deco
