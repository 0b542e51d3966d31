"""What the bench asks of each of our layers: its config and its requests.

For every layer name in :data:`aduib_asgi.stack.LAYER_CLASSES` the bench builds
the cases :func:`layer_cases` returns. A layer listed in ``DEFAULT_ORDER`` but
not yet in ``LAYER_CLASSES`` is reported as "not available". A layer with no
entry in :data:`SPECS` gets one generic "not triggered" case with its default
config, so a new layer appears in the table without touching this file.

:data:`STACK_KWARGS` is the configuration each layer gets in the "default
stack" case (error mapping, content JSON, versions, trace without SDK, tenant,
anonymous auth, memory rate limit, idempotency without key, deadline, admission).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aduib_asgi.bench.apps import ECHO_BODY, RPC_PATH
from aduib_asgi.bench.driver import Check, Exchange, Request

__all__ = [
    "CODEC_LEVELS",
    "SPECS",
    "STACK_KWARGS",
    "TARGET_STACK",
    "LayerCase",
    "echo_request",
    "layer_cases",
]

JSON_HEADERS = (("content-type", "application/json"),)

#: The layers of the "default stack" target, outermost first.
TARGET_STACK: tuple[str, ...] = (
    "errors", "content", "version", "trace", "tenant", "auth",
    "ratelimit", "deadline", "admission", "idempotency",
)

#: Compression levels for our layer, the peers and the raw codec references: our
#: layer's defaults, given to starlette-compress too ("same codec and level").
def _levels() -> dict[str, int]:
    try:
        from aduib_asgi.compression import DEFAULT_LEVELS
    except ImportError:
        return {"zstd": 3, "br": 4, "gzip": 6}
    return {k: DEFAULT_LEVELS[k] for k in ("zstd", "br", "gzip") if k in DEFAULT_LEVELS}


CODEC_LEVELS: dict[str, int] = _levels()


def echo_request(*headers: tuple[str, str], body: bytes = ECHO_BODY,
                 path: str = RPC_PATH) -> Request:
    """POST of the small echo envelope, with extra headers."""
    return Request("POST", path, (*JSON_HEADERS, *headers), body)


def envelope(**extra: Any) -> bytes:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "id": "bench-1", "method": "rpc.v2/Echo/echo",
                            "data": {"msg": "hello", "n": 1}}
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class LayerCase:
    """One way to exercise a layer.

    ``group``: "layers" (small echo on the Starlette app) or "compress-20k" /
    "compress-1m" (the big routes). ``alone``: also time it as the only layer
    (it then creates the request context itself); ``stack``: time it "in
    stack" (a context already exists, as behind the error layer).
    """

    name: str
    triggered: bool
    kwargs: Callable[[], dict[str, Any]] = dict
    request: Request = field(default_factory=echo_request)
    group: str = "layers"
    expect_status: int = 200
    check: Check | None = None
    prime: int = 0
    alone: bool = False
    stack: bool = True
    note: str = ""
    codec: str | None = None


def _has_header(name: bytes, value: bytes | None = None) -> Check:
    def check(ex: Exchange) -> str | None:
        got = ex.header(name)
        if got is None:
            return f"response has no {name.decode()} header"
        if value is not None and got != value:
            return f"{name.decode()} is {got!r}, expected {value!r}"
        return None

    return check


def _otel_sdk_provider() -> Any:
    """An OTel SDK TracerProvider (spans recorded, no exporter)."""
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider()


# -- per-layer specs ---------------------------------------------------------------

def _errors(cls: type) -> list[LayerCase]:
    from aduib_asgi.errors import http_status_for

    return [
        LayerCase("not triggered", False, alone=True),
        LayerCase("RpcError raised → envelope", True,
                  request=echo_request(path="/fail"), expect_status=http_status_for(4001)),
    ]


def _deadline(cls: type) -> list[LayerCase]:
    return [
        LayerCase("not triggered (no timeout)", False, alone=True),
        LayerCase("X-Timeout-Ms: 5000 (cancel scope)", True,
                  request=echo_request(("x-timeout-ms", "5000"))),
    ]


def _tenant(cls: type) -> list[LayerCase]:
    return [
        LayerCase("not triggered (no tenant)", False, alone=True),
        LayerCase("X-Tenant-ID: acme", True, request=echo_request(("x-tenant-id", "acme"))),
    ]


_TRACEPARENT = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def _trace(cls: type) -> list[LayerCase]:
    return [
        LayerCase("no SDK, new trace", False, alone=True),
        LayerCase("no SDK, traceparent", True, request=echo_request(_TRACEPARENT)),
        LayerCase("OTel SDK, traceparent", True, request=echo_request(_TRACEPARENT),
                  kwargs=lambda: {"tracer_provider": _otel_sdk_provider()}, alone=True,
                  note="one server span per request"),
    ]


def _compression(cls: type) -> list[LayerCase]:
    cases = [
        LayerCase("not triggered (no Accept-Encoding)", False, alone=True),
        LayerCase("Accept-Encoding: zstd, body below minimum_size", True,
                  request=echo_request(("accept-encoding", "zstd"))),
    ]
    for size in ("20k", "1m"):
        for codec in ("zstd", "br", "gzip", "lz4", "snappy"):
            lvl = CODEC_LEVELS.get(codec)
            cases.append(LayerCase(
                f"{codec}{'-' + str(lvl) if lvl is not None else ''}", True,
                kwargs=lambda: {"levels": dict(CODEC_LEVELS)},
                request=Request("GET", f"/big/{size}", (("accept-encoding", codec),)),
                group=f"compress-{size}", check=_has_header(b"content-encoding", codec.encode()),
                alone=True, stack=False, codec=codec))
    return cases


def _content(cls: type) -> list[LayerCase]:
    from aduib_asgi.codecs import default_registry

    has_msgpack = "application/msgpack" in default_registry().media_types()
    cases = [
        LayerCase("not triggered (text/plain POST outside the RPC paths)", False, alone=True,
                  request=Request("POST", "/plain", (("content-type", "text/plain"),),
                                  ECHO_BODY)),
        LayerCase("JSON POST outside the RPC paths, decoded into ctx.payload", True,
                  request=echo_request(path="/plain")),
        LayerCase("JSON envelope decoded + validated", True),
    ]
    if has_msgpack:
        import msgpack

        body = msgpack.packb(json.loads(ECHO_BODY))
        cases.append(LayerCase("msgpack envelope decoded + validated", True,
                               request=Request("POST", RPC_PATH,
                                               (("content-type", "application/msgpack"),),
                                               body)))
    return cases


def _version(cls: type) -> list[LayerCase]:
    return [
        LayerCase("not triggered (no version header)", False, alone=True),
        LayerCase("Aduib-Rpc-Supported-Versions: 2.0, 1.0", True,
                  request=echo_request(("aduib-rpc-supported-versions", "2.0, 1.0"))),
    ]


def _auth_kwargs() -> dict[str, Any]:
    from aduib_asgi.demo.security import demo_auth_options

    return demo_auth_options(None)


def _auth(cls: type) -> list[LayerCase]:
    return [
        LayerCase("anonymous (no credentials)", False, kwargs=_auth_kwargs, alone=True),
        LayerCase("Bearer token (static verifier)", True, kwargs=_auth_kwargs,
                  request=echo_request(("authorization", "Bearer demo-user-token"))),
        LayerCase("X-API-Key", True, kwargs=_auth_kwargs,
                  request=echo_request(("x-api-key", "demo-key"))),
    ]


def _ratelimit_kwargs(strategy: str = "fixed-window") -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        from aduib_asgi.middleware.ratelimit import RateLimitPolicy

        return {"policies": [RateLimitPolicy("bench", "1000000000/minute")],
                "storage": "memory://", "strategy": strategy}

    return kwargs


def _ratelimit(cls: type) -> list[LayerCase]:
    return [
        LayerCase("not triggered (no policy matches)", False, alone=True),
        LayerCase("memory fixed window: admit", True, kwargs=_ratelimit_kwargs(), alone=True,
                  check=_has_header(b"ratelimit")),
        LayerCase("memory moving window: admit", True,
                  kwargs=_ratelimit_kwargs("moving-window")),
    ]


def _idempotency(cls: type) -> list[LayerCase]:
    return [
        LayerCase("not triggered (no key)", False, alone=True),
        LayerCase("memory store: replay of a stored reply", True, alone=True, prime=1,
                  request=echo_request(("idempotency-key", '"bench-key-1"'))),
    ]


def _admission(cls: type) -> list[LayerCase]:
    return [
        LayerCase("not triggered (no limits)", False, alone=True),
        LayerCase("max_concurrency=64: admitted", True,
                  kwargs=lambda: {"max_concurrency": 64}),
    ]


def _circuit(cls: type) -> list[LayerCase]:
    return [
        LayerCase("breaker closed (default settings)", False, alone=True),
    ]


SpecFn = Callable[[type], list[LayerCase]]

#: Layer name → its cases. Layers without an entry get one generic case.
SPECS: dict[str, SpecFn] = {
    "errors": _errors,
    "compression": _compression,
    "content": _content,
    "version": _version,
    "trace": _trace,
    "tenant": _tenant,
    "auth": _auth,
    "ratelimit": _ratelimit,
    "deadline": _deadline,
    "admission": _admission,
    "idempotency": _idempotency,
    "circuit": _circuit,
}

#: Layer name → its kwargs in the default-stack case (absent: defaults).
STACK_KWARGS: dict[str, Callable[[], dict[str, Any]]] = {
    "auth": _auth_kwargs,
    "ratelimit": _ratelimit_kwargs(),
    "tenant": lambda: {"default": "default"},
}


def layer_cases(name: str, cls: type) -> list[LayerCase]:
    """The cases for layer ``name`` (generic "not triggered" when it has no spec)."""
    spec = SPECS.get(name)
    if spec is None:
        return [LayerCase("not triggered (default config)", False, alone=True,
                          note="generic case: no bench spec for this layer yet")]
    return spec(cls)
