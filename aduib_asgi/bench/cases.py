"""Every case of the in-process bench, grouped; each group has its own baseline.

Groups (every group also times the two references, so every figure has a ratio
to a bare Starlette route and to a bare pure-ASGI app from the same run):

* ``layers`` — our layers (alone and in a stack) and the peers, on a small echo
  served by a bare Starlette route; baseline: that route without middleware.
* ``compress-20k`` / ``compress-1m`` — compression by our layer, the peers and the
  raw codecs; baseline: the same route answering the body uncompressed.
* ``server`` — the same echo request as bytes through uvicorn's httptools
  protocol object on a fake transport (:mod:`aduib_asgi.bench.server`): the
  bare JSON echo route on uvicorn's own class (baseline) and on the demo's
  guarded class, the dispatcher, and the demo app on the demo's class (as
  shipped): the server's per-request share without a load generator.
* ``rpc`` — the dispatcher alone, the default stack and the demo stack on the
  echo method, next to a bare Starlette JSON echo route (the same request and
  reply shape: the yardstick the dispatcher is held to); baseline: the
  dispatcher alone.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aduib_asgi.bench.apps import (
    BIG_SIZES,
    ContextSeed,
    LimitsLayer,
    NoopLayer,
    bare_asgi_app,
    big_body,
    starlette_app,
    starlette_json_app,
)
from aduib_asgi.bench.driver import AsgiRunner, CallRunner, Request, Runner
from aduib_asgi.bench.layers import (
    CODEC_LEVELS,
    STACK_KWARGS,
    TARGET_STACK,
    LayerCase,
    echo_request,
    layer_cases,
)

__all__ = ["GROUPS", "Case", "Group", "Unavailable", "all_cases"]


class Unavailable(Exception):
    """A case that cannot run here (layer not landed, package missing)."""


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    baseline: str


GROUPS: dict[str, Group] = {
    g.name: g for g in (
        Group("layers", "Per-layer overhead, small JSON echo on a bare Starlette route",
              "ref.starlette"),
        Group("compress-20k", "Compression, 20 KB response", "ref.big"),
        Group("compress-1m", "Compression, 1 MB response", "ref.big"),
        Group("rpc", "RPC: dispatcher, default stack, demo stack (Echo/echo)", "rpc.dispatcher"),
        Group("server", "Through uvicorn's HTTP protocol, in-process (httptools, no sockets)",
              "server.json"),
    )
}


@dataclass
class Case:
    """One timed thing. ``build`` returns its runner or raises :class:`Unavailable`."""

    group: str
    key: str
    label: str
    kind: str  # "reference" | "ours" | "peer" | "raw"
    build: Callable[[], Runner]
    layer: str | None = None
    variant: str = ""
    triggered: bool | None = None
    compare_to: str | None = None
    related: tuple[str, ...] = ()
    codec: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: Cases of one block run back to back with the group's references, so a case
    #: and its yardsticks are timed close together (see the runner).
    block: str | None = None

    @property
    def id(self) -> str:
        return f"{self.group}/{self.key}"


def _mw(cls: type, **kwargs: Any) -> Any:
    from starlette.middleware import Middleware

    return Middleware(cls, **kwargs)  # type: ignore[arg-type]


def _unavailable(reason: str) -> Callable[[], Runner]:
    def build() -> Runner:
        raise Unavailable(reason)

    return build


def _starlette_runner(middleware: Callable[[], list[Any]], request: Request, *,
                      big: bool = False, **kw: Any) -> Callable[[], Runner]:
    def build() -> Runner:
        return AsgiRunner(starlette_app(middleware(), big=big), request, **kw)

    return build


def _refs(group: str) -> list[Case]:
    req = echo_request()
    return [
        Case(group, "ref.asgi", "bare pure-ASGI app", "reference",
             lambda: AsgiRunner(bare_asgi_app(), req)),
        Case(group, "ref.starlette", "bare Starlette route", "reference",
             _starlette_runner(list, req)),
    ]


# -- peers ---------------------------------------------------------------------------

def _peer_basehttp() -> list[Any]:
    from starlette.middleware.base import BaseHTTPMiddleware

    class NoopBaseHTTP(BaseHTTPMiddleware):
        async def dispatch(self, request: Any, call_next: Any) -> Any:
            return await call_next(request)

    return [_mw(NoopBaseHTTP)]


def _peer_correlation() -> list[Any]:
    try:
        from asgi_correlation_id import CorrelationIdMiddleware
    except ImportError as exc:
        raise Unavailable("asgi-correlation-id is not installed") from exc
    return [_mw(CorrelationIdMiddleware)]


def _peer_otel(exclude: bool) -> Callable[[], list[Any]]:
    def mw() -> list[Any]:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        try:
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError as exc:
            raise Unavailable("opentelemetry-sdk is not installed") from exc
        kw: dict[str, Any] = {"tracer_provider": TracerProvider()}
        if exclude:
            kw["exclude_spans"] = ["receive", "send"]
        return [_mw(OpenTelemetryMiddleware, **kw)]

    return mw


def _slowapi_build() -> Runner:
    try:
        from slowapi import Limiter
        from slowapi.middleware import SlowAPIASGIMiddleware
    except ImportError as exc:
        raise Unavailable("slowapi is not installed") from exc
    limiter = Limiter(key_func=lambda request: "bench", default_limits=["1000000000/minute"])
    app = starlette_app([_mw(SlowAPIASGIMiddleware)])
    app.state.limiter = limiter  # type: ignore[attr-defined]
    return AsgiRunner(app, echo_request())


def _peers() -> list[Case]:
    req = echo_request()
    g = "layers"
    return [
        Case(g, "peer.basehttp", "no-op BaseHTTPMiddleware (known-slow marker)", "peer",
             _starlette_runner(_peer_basehttp, req), compare_to="ref.noop"),
        Case(g, "peer.correlation", "asgi-correlation-id", "peer",
             _starlette_runner(_peer_correlation, req, extra_check=None),
             compare_to="ref.noop", related=("trace",)),
        Case(g, "peer.limits", "limits.aio fixed window in a pure-ASGI layer", "peer",
             _starlette_runner(lambda: [_mw(LimitsLayer)], req), compare_to="ref.noop",
             related=("ratelimit",), note="the rate-limit library's own cost"),
        Case(g, "peer.slowapi", "slowapi (SlowAPIASGIMiddleware, default limit)", "peer",
             _slowapi_build, compare_to="ref.noop", related=("ratelimit",)),
        Case(g, "peer.otel", "opentelemetry-instrumentation-asgi (SDK)", "peer",
             _starlette_runner(_peer_otel(False), req), compare_to="ref.noop",
             related=("trace",)),
        Case(g, "peer.otel-nosr", "opentelemetry-instrumentation-asgi (SDK, no send/receive "
             "spans)", "peer", _starlette_runner(_peer_otel(True), req), compare_to="ref.noop",
             related=("trace",)),
    ]


# -- codecs ---------------------------------------------------------------------------

def raw_codec(codec: str, level: int | None) -> Callable[[bytes], bytes]:
    """The codec's own one-shot compress, with a reused context where it has one."""
    if codec == "zstd":
        import zstandard

        c = zstandard.ZstdCompressor(level=level if level is not None else 3)
        return c.compress
    if codec == "br":
        try:
            import brotli
        except ImportError as exc:
            raise Unavailable("brotli is not installed") from exc
        q = level if level is not None else 4
        return lambda data: bytes(brotli.compress(data, quality=q))
    if codec == "gzip":
        lv = level if level is not None else 6
        return lambda data: zlib.compress(data, lv, 31)
    if codec == "lz4":
        import lz4.frame

        return lambda data: bytes(lz4.frame.compress(data, compression_level=level or 0))
    if codec == "snappy":  # the framing format (what Content-Encoding: snappy carries here)
        import snappy

        return lambda data: bytes(snappy.StreamCompressor().compress(data))
    raise Unavailable(f"no raw reference for codec {codec!r}")


def _compress_peer_build(size_name: str, codec: str) -> Callable[[], Runner]:
    def build() -> Runner:
        try:
            from starlette_compress import CompressMiddleware
        except ImportError as exc:
            raise Unavailable("starlette-compress is not installed") from exc
        mw = [_mw(CompressMiddleware, zstd_level=CODEC_LEVELS["zstd"],
                  brotli_quality=CODEC_LEVELS["br"], gzip_level=CODEC_LEVELS["gzip"])]
        return AsgiRunner(starlette_app(mw, big=True), _big_request(size_name, codec),
                          extra_check=_encoded(codec))

    return build


def _encoded(codec: str) -> Callable[[Any], str | None]:
    def check(ex: Any) -> str | None:
        got = ex.header(b"content-encoding")
        if got != codec.encode():
            return f"content-encoding is {got!r}, expected {codec!r}"
        return None

    return check


def _big_request(size_name: str, codec: str | None) -> Request:
    headers = (("accept-encoding", codec),) if codec else ()
    return Request("GET", f"/big/{size_name}", headers)


def _compress_group(size_name: str) -> list[Case]:
    g = f"compress-{size_name}"
    size = BIG_SIZES[size_name]
    data = big_body(size)
    cases = _refs(g)
    cases.append(Case(g, "ref.big", f"bare Starlette route, {size_name} uncompressed",
                      "reference", _starlette_runner(list, _big_request(size_name, None),
                                                     big=True)))
    for codec in ("zstd", "br", "gzip", "lz4", "snappy"):
        level = CODEC_LEVELS.get(codec)
        lvl = f"-{level}" if level is not None else ""

        def raw_build(codec: str = codec, level: int | None = level) -> Runner:
            fn = raw_codec(codec, level)
            return CallRunner(lambda: fn(data))

        cases.append(Case(g, f"raw.{codec}", f"raw {codec}{lvl} compress", "raw", raw_build,
                          codec=codec, related=("compression",),
                          note="codec alone, no ASGI"))
    for codec in ("zstd", "br", "gzip"):
        cases.append(Case(g, f"peer.compress.{codec}",
                          f"starlette-compress {codec}-{CODEC_LEVELS[codec]}", "peer",
                          _compress_peer_build(size_name, codec), codec=codec,
                          related=("compression",)))

    def gzip_mw() -> list[Any]:
        from starlette.middleware.gzip import GZipMiddleware

        return [_mw(GZipMiddleware, compresslevel=CODEC_LEVELS["gzip"])]

    cases.append(Case(g, "peer.gzip", f"Starlette GZipMiddleware gzip-{CODEC_LEVELS['gzip']}",
                      "peer", _starlette_runner(gzip_mw, _big_request(size_name, "gzip"),
                                                big=True, extra_check=_encoded("gzip")),
                      codec="gzip", related=("compression",)))
    return cases


# -- our layers -------------------------------------------------------------------------

def _load_layer(name: str) -> type:
    from aduib_asgi.stack import LAYER_CLASSES, layer_class

    if name not in LAYER_CLASSES:
        raise Unavailable(f"layer {name!r} is not in aduib_asgi.stack.LAYER_CLASSES yet")
    try:
        return layer_class(name)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"layer {name!r} does not import: {exc}") from exc


def _layer_build(name: str, lc: LayerCase, *, alone: bool) -> Callable[[], Runner]:
    def build() -> Runner:
        cls = _load_layer(name)
        try:
            kwargs = lc.kwargs()
        except ImportError as exc:
            raise Unavailable(f"needs a package that is not installed: {exc}") from exc
        mws = [_mw(cls, **kwargs)] if alone else [_mw(ContextSeed), _mw(cls, **kwargs)]
        big = lc.group.startswith("compress-")
        return AsgiRunner(starlette_app(mws, big=big), lc.request,
                          expect_status=lc.expect_status, extra_check=lc.check, prime=lc.prime)

    return build


def _our_layers(names: Iterable[str]) -> list[Case]:
    from aduib_asgi.stack import LAYER_CLASSES

    cases: list[Case] = []
    for name in names:
        if name not in LAYER_CLASSES:
            cases.append(Case("layers", f"{name}.0", f"{name}", "ours",
                              _unavailable(f"layer {name!r} has not landed "
                                           "(not in LAYER_CLASSES)"),
                              layer=name, variant="not triggered", triggered=False))
            continue
        try:
            cls = _load_layer(name)
            specs = layer_cases(name, cls)
        except Unavailable as exc:
            cases.append(Case("layers", f"{name}.0", name, "ours", _unavailable(str(exc)),
                              layer=name))
            continue
        for i, lc in enumerate(specs):
            in_stack = lc.group == "layers"
            if lc.alone:
                cases.append(Case(lc.group, f"{name}.{i}.alone", f"{name}: {lc.name}, alone",
                                  "ours", _layer_build(name, lc, alone=True), layer=name,
                                  variant=lc.name, triggered=lc.triggered,
                                  compare_to="ref.noop" if in_stack else None,
                                  codec=lc.codec, note=lc.note, extra={"alone": True}))
            if not lc.stack:
                continue
            cases.append(Case(lc.group, f"{name}.{i}", f"{name}: {lc.name}", "ours",
                              _layer_build(name, lc, alone=False), layer=name,
                              variant=lc.name, triggered=lc.triggered,
                              compare_to="ref.seed-noop" if in_stack else None,
                              codec=lc.codec, note=lc.note, extra={"alone": False}))
    return cases


# -- rpc ----------------------------------------------------------------------------------

def _dispatcher() -> Any:
    from aduib_asgi.demo.services import register_demo_services
    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher

    registry = MethodRegistry()
    register_demo_services(registry)
    return RpcDispatcher(registry)


def stack_status() -> tuple[list[str], list[str]]:
    """(present, missing) layers of the default-stack target."""
    from aduib_asgi.stack import LAYER_CLASSES

    present = [n for n in TARGET_STACK if n in LAYER_CLASSES]
    return present, [n for n in TARGET_STACK if n not in LAYER_CLASSES]


def _stack_build() -> Runner:
    from aduib_asgi.stack import Layer, build_stack

    present, _ = stack_status()
    layers = [Layer(_load_layer(n), STACK_KWARGS.get(n, dict)()) for n in present]
    return AsgiRunner(build_stack(_dispatcher(), layers), echo_request())


def _demo_build() -> Runner:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    return AsgiRunner(build_demo_app(DemoConfig(env="prod")), echo_request())


def _rpc_group() -> list[Case]:
    g = "rpc"
    present, missing = stack_status()
    label = "default stack (10 layers)"
    note = f"missing: {', '.join(missing)}" if missing else ""
    return [
        *_refs(g),
        Case(g, "ref.starlette-json", "bare Starlette JSON echo route", "reference",
             lambda: AsgiRunner(starlette_json_app(), echo_request()),
             note="decodes the envelope, answers its data"),
        Case(g, "rpc.dispatcher", "dispatcher alone", "reference",
             lambda: AsgiRunner(_dispatcher(), echo_request())),
        Case(g, "rpc.stack", label, "ours", _stack_build, layer="stack", note=note,
             extra={"present": present, "missing": missing}),
        Case(g, "rpc.demo", "demo app (full DEFAULT_ORDER stack)", "ours", _demo_build,
             layer="stack"),
    ]


def _server_build(app: Callable[[], Any], guarded: bool) -> Callable[[], Runner]:
    def build() -> Runner:
        from aduib_asgi.bench.server import ProtocolRunner

        try:
            return ProtocolRunner(app(), guarded=guarded)
        except ImportError as exc:
            raise Unavailable(f"needs uvicorn and httptools (the server extra): {exc}") from exc

    return build


def _demo_app() -> Any:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    return build_demo_app(DemoConfig(env="prod"))


def _server_group() -> list[Case]:
    g = "server"
    return [
        Case(g, "server.asgi", "bare pure-ASGI app, uvicorn's protocol", "reference",
             _server_build(bare_asgi_app, False)),
        Case(g, "server.json", "bare Starlette JSON echo, uvicorn's protocol", "reference",
             _server_build(starlette_json_app, False)),
        Case(g, "server.json-guarded", "bare Starlette JSON echo, the demo's protocol class",
             "ours", _server_build(starlette_json_app, True), layer="server",
             note="head bounds, connection budget"),
        Case(g, "server.dispatcher", "dispatcher alone, uvicorn's protocol", "ours",
             _server_build(_dispatcher, False), layer="server"),
        Case(g, "server.demo", "demo app, the demo's protocol class (as shipped)", "ours",
             _server_build(_demo_app, True), layer="server"),
    ]


# -- all ----------------------------------------------------------------------------------

def all_cases(layers: Iterable[str] | None = None,
              only: Iterable[str] | None = None,
              groups: Iterable[str] | None = None) -> list[Case]:
    """Every case, optionally restricted to some layers, case-id substrings and groups.

    References of each kept group are always kept (they are the yardsticks).
    """
    cases = _select(layers, only)
    if groups:
        wanted_groups = set(groups)
        unknown = wanted_groups - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown bench group(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(GROUPS)})")
        cases = [c for c in cases if c.group in wanted_groups]
    return cases


def _select(layers: Iterable[str] | None, only: Iterable[str] | None) -> list[Case]:
    from aduib_asgi.stack import DEFAULT_ORDER, LAYER_CLASSES

    names = list(DEFAULT_ORDER) + [n for n in LAYER_CLASSES if n not in DEFAULT_ORDER]
    req = echo_request()
    cases = [
        *_refs("layers"),
        Case("layers", "ref.noop", "no-op pure-ASGI layer", "reference",
             _starlette_runner(lambda: [_mw(NoopLayer)], req)),
        Case("layers", "ref.seed-noop", "context + no-op pure-ASGI layer", "reference",
             _starlette_runner(lambda: [_mw(ContextSeed), _mw(NoopLayer)], req),
             note="yardstick for layers in a stack"),
        *_peers(),
    ]
    ours = _our_layers(names)
    cases += [c for c in ours if c.group == "layers"]
    for size_name in BIG_SIZES:
        cases += _compress_group(size_name)
        cases += [c for c in ours if c.group == f"compress-{size_name}"]
    cases += _rpc_group()
    cases += _server_group()

    wanted = set(layers) if layers else None
    needles = [s for s in (only or ()) if s]

    def keep(c: Case) -> bool:
        if wanted is not None and c.kind != "reference":
            if c.kind == "ours" and c.layer not in wanted:
                return False
            if c.kind in ("peer", "raw") and not (set(c.related) & wanted):
                return False
        return not (needles and not any(n in c.id for n in needles))

    for c in cases:
        if c.kind != "reference" and c.block is None:
            c.block = c.codec if c.group.startswith("compress-") and c.codec else (
                c.layer if c.kind == "ours" else c.key)
    if wanted is None and not needles:
        return cases
    chosen = {c.id for c in cases if keep(c) and (c.kind != "reference" or needles)}
    groups = {c.group for c in cases if c.id in chosen}
    # the references of every group that keeps a case stay: they are the yardsticks
    return [c for c in cases if c.group in groups and (c.id in chosen or c.kind == "reference")]


def import_ok(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
