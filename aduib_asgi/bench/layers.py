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

#: The layers of the "default stack" target (the issue's list), outermost first.
TARGET_STACK: tuple[str, ...] = (
    "errors", "content", "version", "trace", "tenant", "auth",
    "ratelimit", "deadline", "admission", "idempotency",
)

#: Compression levels used for our layer, the peers and the raw codec references.
#: (starlette-compress's defaults, so "same codec and level" compares like with like.)
CODEC_LEVELS: dict[str, int] = {"zstd": 4, "br": 4, "gzip": 4}


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


SpecFn = Callable[[type], list[LayerCase]]

#: Layer name → its cases. Layers without an entry get one generic case.
SPECS: dict[str, SpecFn] = {
    "errors": _errors,
    "deadline": _deadline,
    "tenant": _tenant,
    "trace": _trace,
}

#: Layer name → its kwargs in the default-stack case (absent: defaults).
STACK_KWARGS: dict[str, Callable[[], dict[str, Any]]] = {}


def layer_cases(name: str, cls: type) -> list[LayerCase]:
    """The cases for layer ``name`` (generic "not triggered" when it has no spec)."""
    spec = SPECS.get(name)
    if spec is None:
        return [LayerCase("not triggered (default config)", False, alone=True,
                          note="generic case: no bench spec for this layer yet")]
    return spec(cls)
