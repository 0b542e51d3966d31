"""Assembling middleware stacks, and checking their order at build time.

Each middleware class names its concern in a ``layer_name`` class attribute.
:func:`build_stack` wraps an app with layers given outermost first and rejects
orders that cannot work (for example idempotency outside the tenant layer, which
would let one tenant replay another's responses). :data:`DEFAULT_ORDER` is the
documented default order, outermost first.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.context import (
    CONTEXT_KEY,
    REGISTRY_KEY,
    SERVER_ID_KEY,
    ContextHandler,
    context_link,
    context_routes,
    create_context,
    current_context,
    declaring_class,
    header_emitter,
)
from aduib_asgi.responses import STREAM_FRAMING_DEFAULT_KEY

__all__ = [
    "DEFAULT_ORDER",
    "LAYER_CLASSES",
    "MUST_BE_OUTSIDE",
    "Layer",
    "StackOrderError",
    "build_stack",
    "check_order",
    "dispatcher_facts",
    "fuse",
    "layer_class",
]

#: The default order, outermost first (DESIGN-NOTES: "Order, and checking it").
DEFAULT_ORDER: tuple[str, ...] = (
    "errors",
    "identity",
    "compression",
    "content",
    "version",
    "trace",
    "tenant",
    "auth",
    "ratelimit",
    "deadline",
    "admission",
    "idempotency",
    "circuit",
)

#: Where each layer's class lives ("module:Class"), for :func:`layer_class`.
LAYER_CLASSES: dict[str, str] = {
    "errors": "aduib_asgi.middleware.errors:ErrorMappingMiddleware",
    "identity": "aduib_asgi.identity:ClientIdentityMiddleware",
    "compression": "aduib_asgi.middleware.compression:CompressionMiddleware",
    "content": "aduib_asgi.middleware.content:ContentNegotiationMiddleware",
    "version": "aduib_asgi.middleware.version:VersionNegotiationMiddleware",
    "trace": "aduib_asgi.middleware.trace:TracePropagationMiddleware",
    "tenant": "aduib_asgi.middleware.tenant:TenantScopeMiddleware",
    "auth": "aduib_asgi.middleware.auth:AuthMiddleware",
    "ratelimit": "aduib_asgi.middleware.ratelimit:RateLimitMiddleware",
    "deadline": "aduib_asgi.middleware.deadline:DeadlineMiddleware",
    "admission": "aduib_asgi.middleware.admission:AdmissionMiddleware",
    "idempotency": "aduib_asgi.middleware.idempotency:IdempotencyMiddleware",
    "circuit": "aduib_asgi.middleware.circuit:CircuitBreakerMiddleware",
}

#: Hard constraints: (outer, inner) pairs. When both layers are in a stack, the
#: first must wrap the second, or the stack is rejected.
MUST_BE_OUTSIDE: dict[tuple[str, str], str] = {
    ("identity", "auth"): "audit events name the client the identity layer resolves",
    ("identity", "ratelimit"): "rate limits are partitioned by the client address",
    ("identity", "idempotency"): "anonymous callers' keys are scoped by client address",
    ("compression", "content"):
        "the content layer decodes bodies that the compression layer has decompressed",
    ("content", "version"): "the version layer reads the decoded envelope",
    ("content", "trace"): "the trace layer reads the envelope's trace_context",
    ("content", "tenant"): "the tenant layer reads metadata.tenant_id from the envelope",
    ("content", "auth"): "the auth layer reads metadata.auth and the method from the envelope",
    ("tenant", "auth"): "the auth layer checks tenant-bound identities against the tenant "
                        "the tenant layer resolved",
    ("content", "ratelimit"): "rate-limit policies match the method from the envelope",
    ("content", "deadline"): "the deadline layer reads qos.timeout_ms from the envelope",
    ("content", "admission"): "the admission layer reads qos.priority from the envelope",
    ("content", "idempotency"): "the idempotency layer reads qos.idempotency_key and data",
    ("content", "circuit"): "circuit breakers are kept per method from the envelope",
    ("tenant", "idempotency"): "idempotency keys are scoped by tenant",
    ("auth", "idempotency"): "idempotency keys are scoped by principal",
    ("tenant", "ratelimit"): "rate limits are partitioned by tenant",
    ("auth", "ratelimit"): "rate limits are partitioned by principal",
    ("deadline", "admission"): "time spent queued counts against the deadline",
    ("version", "idempotency"): "a replay must not bypass version negotiation",
}


class StackOrderError(ValueError):
    """The layers given to :func:`build_stack` are in an order that cannot work."""


@dataclass(frozen=True)
class Layer:
    """One middleware and its keyword configuration."""

    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, middleware: type, **kwargs: Any) -> Layer:
        return cls(middleware, kwargs)

    @property
    def name(self) -> str:
        return str(getattr(self.cls, "layer_name", self.cls.__name__))


def layer_class(name: str) -> type:
    """Import the middleware class registered for ``name``."""
    target = LAYER_CLASSES[name]
    module, _, attr = target.partition(":")
    cls: type = getattr(importlib.import_module(module), attr)
    return cls


def check_order(names: Sequence[str]) -> None:
    """Raise :class:`StackOrderError` if ``names`` (outermost first) break a constraint."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise StackOrderError(f"layer {n!r} appears twice in the stack")
        seen.add(n)
    position = {n: i for i, n in enumerate(names)}
    for (outer, inner), why in MUST_BE_OUTSIDE.items():
        if outer in position and inner in position and position[outer] > position[inner]:
            raise StackOrderError(f"{outer!r} must wrap {inner!r}: {why}")


def build_stack(app: ASGIApp, layers: Iterable[Layer | tuple[type, dict[str, Any]]], *,
                fused: bool = True) -> ASGIApp:
    """Wrap ``app`` with ``layers`` (outermost first), after checking their order.

    ``fused`` (default): each layer built here that declares its context handlers
    (:func:`aduib_asgi.context.context_routes`) calls the next one's handler
    directly (:func:`aduib_asgi.context.context_link`) instead of through its
    ``__call__``: the same methods, one frame and one context lookup less per
    layer. ``fused=False`` nests the layers plainly; both answer alike.
    """
    items = [x if isinstance(x, Layer) else Layer(x[0], dict(x[1])) for x in layers]
    check_order([x.name for x in items])
    dispatcher = app
    streaming = getattr(app, "streaming", None)  # an RpcDispatcher
    built: list[Any] = []
    for item in reversed(items):
        app = item.cls(app, **item.kwargs)
        built.append(app)
    if streaming is not None and hasattr(streaming, "default_framing"):
        app = _DispatcherFacts(app, dispatcher)
        built.append(app)
    if fused:
        for layer in built:
            _link_next(layer)
    return app


def fuse(app: ASGIApp) -> ASGIApp:
    """Link layers assembled by hand as :func:`build_stack` links its own: from
    ``app`` down ``.app``, each layer that declares its context handlers calls the
    next one's directly. Stops at the first app that declares nothing. Returns
    ``app``; answers stay the same (only frames are saved)."""
    node: Any = app
    while _declares(node):
        nxt = getattr(node, "app", None)
        _link_next(node)
        node = nxt
    return app


def _declares(layer: Any) -> bool:
    return declaring_class(type(layer)) is not None


def _link_next(layer: Any) -> None:
    """Point ``layer.app`` at a link to the next layer's handlers, if both take part."""
    if not _declares(layer) or not hasattr(layer, "app"):
        return  # declares nothing (maybe not ours), or is the app: ``app`` is left alone
    routes = context_routes(layer.app)
    if routes:
        layer.app = context_link(layer.app, routes)
        if type(layer) is _DispatcherFacts:
            layer.entry = routes


def dispatcher_facts(app: ASGIApp, dispatcher: Any) -> ASGIApp:
    """Wrap ``app`` (layers over ``dispatcher``, assembled by hand) so every request's
    scope carries the dispatcher's facts, as :func:`build_stack` does."""
    return _DispatcherFacts(app, dispatcher)


class _DispatcherFacts:
    """Publishes what every layer may need to know about the dispatcher in the scope:
    its default SSE framing (an error on a streaming endpoint uses it, PROTOCOL.md
    5.1), its ``server_id`` (on every response's metadata) and its registry (metric
    labels only for registered methods)."""

    __slots__ = ("app", "entry", "registry", "server_id", "streaming")
    context_methods: dict[str, str] = {}  # runs no handler with the context; ``app`` linkable

    def __init__(self, app: ASGIApp, dispatcher: Any) -> None:
        self.app = app
        self.streaming = dispatcher.streaming
        self.server_id = getattr(dispatcher, "server_id", None)
        self.registry = getattr(dispatcher, "registry", None)
        #: Fused: the first layer's handlers per scope type (what ``app``, its link, calls).
        self.entry: dict[str, ContextHandler] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t == "http" or t == "websocket":
            scope[STREAM_FRAMING_DEFAULT_KEY] = self.streaming.default_framing
            scope[REGISTRY_KEY] = self.registry
            if self.server_id is not None:
                scope[SERVER_ID_KEY] = self.server_id
            handler = self.entry.get(t)
            if handler is not None and CONTEXT_KEY not in scope:
                # What the link to the first layer does when it creates the context
                # (run_with_context), here: one coroutine frame less per request.
                ctx = create_context(scope)
                token = current_context.set(ctx)
                try:
                    await handler(scope, receive, header_emitter(ctx, send), ctx)
                finally:
                    current_context.reset(token)
                return
        await self.app(scope, receive, send)
