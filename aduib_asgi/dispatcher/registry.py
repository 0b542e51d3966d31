"""The method registry: ``rpc.v2/{service}/{handler}`` -> handler and its properties.

Method-name parsing and lookup live here (names are normalised by
:func:`aduib_asgi.versioning.methods.normalize_method`), the same for every
transport (unary HTTP, SSE, WebSocket, tasks): they all call
:meth:`MethodRegistry.resolve`.

A method may be registered for a range of protocol versions (``since``
inclusive, ``removed_in`` exclusive), several times with disjoint ranges, and
may be ``deprecated`` (optionally with a ``sunset`` date). Resolution uses the
request's negotiated version (``ctx.negotiated_version``; without the version
layer, the envelope's own ``aduib_rpc``): a method removed in that version is
4020 GONE, one not yet available is 4001. A deprecated method still runs and
its response carries ``Deprecation`` (RFC 9745) and ``Sunset`` (RFC 8594)
headers; each call logs a warning.
"""

from __future__ import annotations

import calendar
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from aduib_asgi.auth.rbac import enforce_method_access, names
from aduib_asgi.context import RequestContext, current_context
from aduib_asgi.errors import RpcError, details_from_validation
from aduib_asgi.logsafe import safe
from aduib_asgi.models import parse_method
from aduib_asgi.versioning import VersionKey, parse_version
from aduib_asgi.versioning.methods import normalize_method, split_method

__all__ = ["METHOD_SPEC_KEY", "MethodRegistry", "MethodSpec", "normalize_method", "service",
           "split_method"]

Handler = Callable[..., Any]

#: ``ctx.extras`` key holding the spec resolved for the request.
METHOD_SPEC_KEY = "aduib.method_spec"

logger = logging.getLogger("aduib_asgi.versioning")

DateLike = date | datetime | str | int | float


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
    output_model: type[BaseModel] | None = None
    #: First protocol version the method exists in (None: all).
    since: str | None = None
    #: First protocol version the method no longer exists in (None: never removed).
    removed_in: str | None = None
    deprecated: bool = False
    #: When the method was deprecated (UTC), if known.
    deprecated_at: datetime | None = None
    #: When the method will stop working (UTC), if announced.
    sunset: datetime | None = None
    #: Precomputed ``Deprecation``/``Sunset``/``Link`` response headers.
    deprecation_headers: tuple[tuple[bytes, bytes], ...] = ()
    since_key: VersionKey | None = None
    removed_key: VersionKey | None = None

    def parse_input(self, data: dict[str, Any] | None) -> Any:
        """``data`` as the handler receives it: the input model when declared (2001 if bad)."""
        if self.input_model is None:
            return data if data is not None else {}
        try:
            return self.input_model.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise RpcError(2001, f"Invalid params for {self.method}",
                           details=details_from_validation(exc, prefix="data")) from None

    @property
    def versioned(self) -> bool:
        return self.since_key is not None or self.removed_key is not None

    def available_in(self, key: VersionKey) -> int:
        """0 available, -1 not yet (before ``since``), 1 removed (at or after ``removed_in``)."""
        if self.since_key is not None and key < self.since_key:
            return -1
        if self.removed_key is not None and key >= self.removed_key:
            return 1
        return 0

    def overlaps(self, other: MethodSpec) -> bool:
        lo = max(self.since_key or (0, 0), other.since_key or (0, 0))
        hi_a, hi_b = self.removed_key, other.removed_key
        hi = hi_a if hi_b is None else hi_b if hi_a is None else min(hi_a, hi_b)
        return hi is None or lo < hi


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


def _as_utc(value: DateLike, what: str) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return _as_utc(datetime.fromisoformat(value), what)
        except ValueError:
            pass
    raise ValueError(f"{what} must be a date, datetime, ISO 8601 string or Unix timestamp")


def _deprecation_headers(
    deprecated_at: datetime | None, deprecated: bool, sunset: datetime | None, link: str | None
) -> tuple[tuple[bytes, bytes], ...]:
    out: list[tuple[bytes, bytes]] = []
    if deprecated:
        # RFC 9745: a Structured Field Date; "@0" when no date was given
        # ("deprecated since an unspecified past date").
        ts = calendar.timegm(deprecated_at.utctimetuple()) if deprecated_at is not None else 0
        out.append((b"deprecation", f"@{ts}".encode("ascii")))
    if sunset is not None:
        out.append((b"sunset", format_datetime(sunset, usegmt=True).encode("ascii")))
    if link is not None:
        out.append((b"link", f'<{link}>; rel="deprecation"'.encode("latin-1")))
    return tuple(out)


def _check_output(model: type[BaseModel], func: Handler, is_async: bool) -> Handler:
    """Wrap a unary handler so its result is validated as ``model`` (a bad result is 5000)."""

    def coerce(result: Any) -> Any:
        if isinstance(result, model):
            return result
        try:
            return model.model_validate(result)
        except ValidationError as exc:
            raise RuntimeError(f"handler result does not match {model.__name__}: {exc}") from exc

    if is_async:
        @functools.wraps(func)
        async def async_wrapper(*args: Any) -> Any:
            return coerce(await func(*args))

        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any) -> Any:
        return coerce(func(*args))

    return wrapper


class MethodRegistry:
    """Holds the methods a dispatcher serves."""

    def __init__(self) -> None:
        # Canonical name -> its registrations (several only with disjoint version ranges).
        self._variants: dict[str, list[MethodSpec]] = {}
        self._methods: dict[str, MethodSpec] = {}
        self._services: set[str] = set()

    def register(
        self,
        method: str,
        func: Handler,
        *,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        idempotent: bool = False,
        streaming: bool | None = None,
        since: str | None = None,
        removed_in: str | None = None,
        deprecated: bool | DateLike = False,
        sunset: DateLike | None = None,
        deprecation_link: str | None = None,
        **options: Any,
    ) -> MethodSpec:
        """Register ``func`` as ``method`` (``rpc.v2/{service}/{handler}``).

        ``func(data)`` or ``func(data, ctx)``; sync or async; a (sync or async)
        generator is a streaming handler. ``data`` is the request's ``data``
        object, or an ``input_model`` instance when one is declared; a unary
        result is validated as ``output_model`` when one is declared.

        ``since``/``removed_in`` bound the protocol versions the method exists in
        (``since <= v < removed_in``); the same name may be registered again for
        a disjoint range. ``deprecated`` is True or the date it was deprecated;
        ``sunset`` the date it stops working (implies deprecated). Other keyword
        options land in :attr:`MethodSpec.options` for the layers to read (e.g.
        ``doc_input``/``doc_output``: models that describe ``data``/the result in the
        OpenAPI document without validating them).
        """
        canonical = normalize_method(method)
        parts = parse_method(canonical) if canonical is not None else None
        if canonical is None or parts is None:
            raise ValueError(f"method {method!r} is not rpc.v2/{{service}}/{{handler}}")
        since_key = parse_version(since) if since is not None else None
        removed_key = parse_version(removed_in) if removed_in is not None else None
        if (since is not None and since_key is None) or (
                removed_in is not None and removed_key is None):
            raise ValueError("since/removed_in must be MAJOR.MINOR versions")
        if since_key is not None and removed_key is not None and removed_key <= since_key:
            raise ValueError("removed_in must be a later version than since")
        for key in ("roles", "scopes"):  # names, validated (a string is space-separated)
            if options.get(key) is not None:
                options[key] = names(options[key], what=key[:-1])
        deprecated_at = None
        if deprecated is not False and deprecated is not True:
            deprecated_at = _as_utc(deprecated, "deprecated")
        sunset_at = _as_utc(sunset, "sunset") if sunset is not None else None
        is_deprecated = deprecated is not False or sunset_at is not None
        is_async = inspect.iscoroutinefunction(func)
        is_async_gen = inspect.isasyncgenfunction(func)
        is_sync_gen = inspect.isgeneratorfunction(func)
        takes_context = _takes_context(func)
        is_streaming = (is_async_gen or is_sync_gen) if streaming is None else streaming
        if output_model is not None and not (is_async_gen or is_sync_gen):
            func = _check_output(output_model, func, is_async)
        spec = MethodSpec(
            method=canonical,
            service=parts[0],
            handler=parts[1],
            func=func,
            input_model=input_model,
            idempotent=idempotent,
            streaming=is_streaming,
            options=options,
            is_async=is_async,
            is_async_gen=is_async_gen,
            is_sync_gen=is_sync_gen,
            takes_context=takes_context,
            output_model=output_model,
            since=since,
            removed_in=removed_in,
            deprecated=is_deprecated,
            deprecated_at=deprecated_at,
            sunset=sunset_at,
            deprecation_headers=_deprecation_headers(
                deprecated_at, is_deprecated, sunset_at, deprecation_link),
            since_key=since_key,
            removed_key=removed_key,
        )
        variants = self._variants.get(canonical)
        if variants is not None:
            for other in variants:
                if other.overlaps(spec):
                    raise ValueError(
                        f"method {canonical!r} is already registered for an overlapping "
                        "version range")
            variants.append(spec)
            variants.sort(key=lambda s: s.since_key or (0, 0))
        else:
            self._variants[canonical] = [spec]
            self._methods[canonical] = spec
        self._services.add(parts[0])
        return spec

    def method(self, method: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def deco(func: Handler) -> Handler:
            self.register(method, func, **kwargs)
            return func

        return deco

    def resolve(
        self, method: str, version: str | None = None, *, ctx: RequestContext | None = None
    ) -> MethodSpec:
        """The spec serving ``method`` in protocol ``version``.

        Errors: 1002 malformed name, 4002 unknown service, 4001 unknown handler
        (or not yet available in ``version``), 4020 removed in ``version``.
        ``ctx`` defaults to the current request's context; ``version`` to its
        negotiated version (or, without the version layer, the envelope's
        ``aduib_rpc``). With a context, the spec is recorded at
        ``ctx.extras["aduib.method_spec"]`` and a deprecated method's headers
        are added to the response (once) with a warning in the log, and a
        method registered with ``roles`` refuses a caller without one of them
        (3000/3011) — whether or not the auth layer is in the stack.
        """
        variants = self._variants.get(method)
        if variants is None:
            canonical = normalize_method(method)
            variants = self._variants.get(canonical) if canonical is not None else None
            if variants is None:
                raise self._not_found(method, canonical)
        if ctx is None:
            ctx = current_context.get()
        spec = variants[0]
        if len(variants) > 1 or spec.since_key is not None or spec.removed_key is not None:
            if version is None and ctx is not None:
                version = ctx.negotiated_version or (
                    ctx.envelope.aduib_rpc if ctx.envelope is not None else None)
            spec = self._pick(spec.method, variants, version)
        if ctx is not None:
            options = spec.options
            if options and ("roles" in options or "scopes" in options):
                enforce_method_access(spec.method, options, ctx)
            extras = ctx.extras
            if spec.deprecated and extras.get(METHOD_SPEC_KEY) is not spec:
                _announce(spec, ctx)
            extras[METHOD_SPEC_KEY] = spec
        return spec

    @staticmethod
    def _pick(method: str, variants: list[MethodSpec], version: str | None) -> MethodSpec:
        key = parse_version(version) if version is not None else None
        if key is None:
            # No version known: the current registration (open-ended, else the newest).
            for spec in reversed(variants):
                if spec.removed_key is None:
                    return spec
            return variants[-1]
        removed: MethodSpec | None = None
        for spec in variants:
            state = spec.available_in(key)
            if state == 0:
                return spec
            if state > 0:
                removed = spec
        if removed is not None:
            raise RpcError(4020, f"Method {method!r} was removed in protocol version "
                                 f"{removed.removed_in}",
                           details=[{"type": "gone", "field": "method",
                                     "reason": f"removed in {removed.removed_in}",
                                     "metadata": {"negotiated_version": version,
                                                  "removed_in": removed.removed_in}}])
        first = variants[0].since
        raise RpcError(4001, f"Method {method!r} is not available in protocol version {version}",
                       details=[{"type": "not_available", "field": "method",
                                 "reason": f"available since {first}",
                                 "metadata": {"negotiated_version": version, "since": first}}])

    def _not_found(self, method: str, canonical: str | None) -> RpcError:
        parts = parse_method(canonical) if canonical is not None else None
        if parts is None:
            return RpcError(1002, "method must have the form rpc.v2/{service}/{handler}",
                            details=[{"type": "value_error", "field": "method",
                                      "reason": "bad method format"}])
        if parts[0] not in self._services:
            return RpcError(4002, f"Service {parts[0]!r} not found")
        return RpcError(4001, f"Method {canonical!r} not found")

    def get(self, method: str) -> MethodSpec | None:
        """The first registration of ``method`` (any accepted spelling), or None."""
        spec = self._methods.get(method)
        if spec is None:
            canonical = normalize_method(method)
            spec = self._methods.get(canonical) if canonical is not None else None
        return spec

    def variants(self, method: str) -> list[MethodSpec]:
        """Every registration of ``method``, oldest version range first."""
        canonical = normalize_method(method)
        return list(self._variants.get(canonical, ())) if canonical is not None else []

    def __iter__(self) -> Iterator[MethodSpec]:
        for variants in self._variants.values():
            yield from variants

    def __len__(self) -> int:
        return sum(len(v) for v in self._variants.values())

    def __contains__(self, method: object) -> bool:
        return method in self._methods


def _announce(spec: MethodSpec, ctx: RequestContext) -> None:
    for name, value in spec.deprecation_headers:
        ctx.add_response_header(name, value)
    if logger.isEnabledFor(logging.WARNING):
        logger.warning("deprecated method %s called (request %s, principal %s)%s",
                       spec.method, safe(ctx.request_id), safe(ctx.principal),
                       f"; sunset {spec.sunset.isoformat()}" if spec.sunset else "")


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
