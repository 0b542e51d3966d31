"""The fused stack (``build_stack``'s default) answers exactly as the same layers nested.

Three builds of the same layers over the same dispatcher are driven with the
same requests and their full responses compared (status, headers, body; HTTP and
WebSocket; success, each layer's refusal, a handler error): nested by hand (each
layer's ``__call__``), ``build_stack(fused=False)`` and ``build_stack`` (fused,
where each layer calls the next one's declared handler directly). Values that
differ between any two runs of one build (timestamps, durations, random ids) are
masked. A second group checks that every layer's declaration names exactly the
handler its ``__call__`` runs with the context.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from starlette.types import ASGIApp, Message

from aduib_asgi.context import (
    CONTEXT_KEY,
    RequestContext,
    _merged,
    context_link,
    context_routes,
    run_with_context,
)
from aduib_asgi.demo.security import demo_auth_options
from aduib_asgi.demo.services import register_demo_services
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ErrorMappingMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitPolicy
from aduib_asgi.qos.breaker import BreakerSettings
from aduib_asgi.qos.shutdown import ShutdownController
from aduib_asgi.stack import DEFAULT_ORDER, LAYER_CLASSES, Layer, build_stack, layer_class
from aduib_asgi.stack import dispatcher_facts as with_facts

pytestmark = pytest.mark.anyio

RPC = "/aduib_rpc/v2/rpc"
WS = "/aduib_rpc/v2/rpc/ws"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- the three builds -----------------------------------------------------------------

def _kwargs(name: str, registry: MethodRegistry, shutdown: ShutdownController) -> dict[str, Any]:
    if name == "tenant":
        return {"default": "default"}
    if name == "auth":
        return demo_auth_options(registry)
    if name == "ratelimit":
        return {"policies": [RateLimitPolicy("ping", "2/minute", methods=["rpc.v2/Echo/ping"])],
                "storage": "memory://"}
    if name in ("deadline", "circuit"):
        extra: dict[str, Any] = {"registry": registry}
        if name == "circuit":
            extra["settings"] = BreakerSettings(min_requests=2, window_s=60.0, open_s=60.0)
        return extra
    if name == "admission":
        return {"registry": registry, "shutdown": shutdown}
    return {}


class Build:
    """One app over a fresh dispatcher, built ``how`` ("hand", "nested", "fused")."""

    def __init__(self, how: str, names: Sequence[str], *, draining: bool = False) -> None:
        registry = MethodRegistry()
        register_demo_services(registry)

        async def ping(data: Any) -> dict[str, Any]:
            return {"pong": True}

        if "rpc.v2/Echo/ping" not in registry:
            registry.register("rpc.v2/Echo/ping", ping)
        self.shutdown = ShutdownController()
        if draining:
            self.shutdown.start_draining()
        dispatcher = RpcDispatcher(registry)
        layers = [Layer(layer_class(n), _kwargs(n, registry, self.shutdown)) for n in names]
        if how == "hand":
            app: ASGIApp = dispatcher
            for item in reversed(layers):
                app = item.cls(app, **item.kwargs)
            self.app = with_facts(app, dispatcher)
        else:
            self.app = build_stack(dispatcher, layers, fused=how == "fused")


HOWS = ("hand", "nested", "fused")


# -- driving requests -----------------------------------------------------------------

def _http_scope(method: str, path: str, headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"),
                    *[(k.lower().encode(), v.encode()) for k, v in headers]],
    }


async def http(app: ASGIApp, method: str, path: str, body: bytes = b"",
               headers: Sequence[tuple[str, str]] = ()) -> list[Message]:
    sent: list[Message] = []
    delivered = False
    done = anyio.Event()

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    with anyio.fail_after(10):
        await app(_http_scope(method, path, headers), receive, send)
    return sent


async def websocket(app: ASGIApp, frames: Sequence[Any], replies: int,
                    headers: Sequence[tuple[str, str]] = ()) -> list[Message]:
    """Connect, send ``frames`` (JSON), wait for ``replies`` frames (or a close), leave."""
    scope = _http_scope("GET", WS, headers)
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    script: list[Message] = [{"type": "websocket.connect"}]
    script += [{"type": "websocket.receive", "text": json.dumps(f)} for f in frames]
    sent: list[Message] = []
    enough = anyio.Event()
    accepted = anyio.Event()

    async def receive() -> Message:
        if script:
            msg = script.pop(0)
            if msg["type"] != "websocket.connect":
                await accepted.wait()
            return msg
        with anyio.move_on_after(5):
            await enough.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)
        t = message["type"]
        if t == "websocket.accept":
            accepted.set()
        elif t == "websocket.close" or t == "websocket.http.response.body" or (
                sum(m["type"] == "websocket.send" for m in sent) >= replies):
            accepted.set()
            enough.set()

    with anyio.fail_after(15):
        await app(scope, receive, send)
    return sent


# -- comparing ------------------------------------------------------------------------

#: Members and headers whose values differ from one run to the next of the same build.
_VOLATILE_KEYS = {"timestamp_ms", "duration_ms", "trace_id", "span_id", "request_id",
                  "reset_at_ms", "traceback", "stack"}
_VOLATILE_HEADERS = {b"traceresponse", b"x-request-id", b"ratelimit", b"ratelimit-policy",
                     b"retry-after", b"content-length", b"date"}
_HEX = re.compile(rb"[0-9a-f]{16,32}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "*" if k in _VOLATILE_KEYS else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return _UUID.sub("*", value)
    return value


def _body(raw: bytes, headers: dict[bytes, bytes]) -> Any:
    if headers.get(b"content-encoding") == b"gzip":
        raw = gzip.decompress(raw)
    try:
        return _mask(json.loads(raw))
    except ValueError:
        return _HEX.sub(b"*", raw)


def normal(messages: list[Message]) -> list[Any]:
    """The messages with volatile values masked (headers keep their order)."""
    out: list[Any] = []
    headers: dict[bytes, bytes] = {}
    for m in messages:
        t = m["type"]
        if t.endswith("response.start"):
            headers = dict(m.get("headers", ()))
            out.append((t, m["status"], [
                (k, b"*" if k in _VOLATILE_HEADERS else _HEX.sub(b"*", v))
                for k, v in m.get("headers", ())]))
        elif t.endswith("response.body"):
            out.append((t, _body(m.get("body", b""), headers), m.get("more_body", False)))
        elif t == "websocket.send":
            text = m.get("text")
            out.append((t, _mask(json.loads(text)) if text is not None else m.get("bytes")))
        elif t == "websocket.accept":
            out.append((t, m.get("subprotocol"), list(m.get("headers", ()))))
        else:
            out.append((t, {k: v for k, v in m.items() if k != "type"}))
    return out


def _env(method: str, data: Any = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "id": "t-1", "method": method, "data": data}
    body.update(extra)
    return json.dumps(body).encode()


JSON = ("content-type", "application/json")

#: name -> requests sent in turn to one fresh app (method, path, body, headers)
HTTP_CASES: dict[str, list[tuple[str, str, bytes, tuple[tuple[str, str], ...]]]] = {
    "success": [("POST", RPC, _env("rpc.v2/Echo/echo", {"msg": "hi"}), (JSON,))],
    "success, every layer triggered": [(
        "POST", RPC, _env("rpc.v2/Echo/echo", {"msg": "hi"}, qos={"idempotency_key": "k-1"}),
        (JSON, ("traceparent", TRACEPARENT), ("x-tenant-id", "acme"),
         ("authorization", "Bearer demo-user-token"), ("x-timeout-ms", "5000"),
         ("aduib-rpc-supported-versions", "2.0, 1.0"), ("accept-encoding", "gzip")))],
    "compressed reply": [("POST", RPC, _env("rpc.v2/Echo/big", {"size": 4096}),
                          (JSON, ("accept-encoding", "gzip")))],
    "handler error (500)": [("POST", RPC, _env("rpc.v2/Echo/crash", {}), (JSON,))],
    "handler RpcError": [("POST", RPC, _env("rpc.v2/Echo/fail", {"code": 4001}), (JSON,))],
    "unknown method": [("POST", RPC, _env("rpc.v2/Nope/nope", {}), (JSON,))],
    "not found path": [("GET", "/nowhere", b"", ())],
    "content: unsupported media type": [("POST", RPC, b"hello", (("content-type", "text/plain"),))],
    "content: malformed JSON": [("POST", RPC, b"{nope", (JSON,))],
    "content: invalid envelope": [("POST", RPC, b'{"aduib_rpc": "2.0"}', (JSON,))],
    "version: no common version": [("POST", RPC, _env("rpc.v2/Echo/echo", {},
                                                      supported_versions=["9.0"]), (JSON,))],
    "trace: malformed traceparent": [("POST", RPC, _env("rpc.v2/Echo/echo", {}),
                                      (JSON, ("traceparent", "00-zz-zz-01")))],
    "tenant: invalid tenant": [("POST", RPC, _env("rpc.v2/Echo/echo", {}),
                                (JSON, ("x-tenant-id", "bad tenant!")))],
    "tenant: header and envelope disagree": [(
        "POST", RPC, _env("rpc.v2/Echo/echo", {}, metadata={"tenant_id": "one"}),
        (JSON, ("x-tenant-id", "two")))],
    "auth: bad token": [("POST", RPC, _env("rpc.v2/Echo/echo", {}),
                         (JSON, ("authorization", "Bearer wrong")))],
    "auth: role required": [("POST", RPC, _env("rpc.v2/Admin/secret", {}), (JSON,))],
    "ratelimit: refused on the third call": [
        ("POST", RPC, _env("rpc.v2/Echo/ping", {}), (JSON,))] * 3,
    "deadline: invalid timeout": [("POST", RPC, _env("rpc.v2/Echo/echo", {}),
                                   (JSON, ("x-timeout-ms", "soon")))],
    "deadline: exceeded": [("POST", RPC, _env("rpc.v2/Echo/sleep", {"ms": 2000}),
                            (JSON, ("x-timeout-ms", "20")))],
    "idempotency: keys disagree": [(
        "POST", RPC, _env("rpc.v2/Echo/echo", {}, qos={"idempotency_key": "a"}),
        (JSON, ("idempotency-key", '"b"')))],
    "idempotency: replay": [("POST", RPC, _env("rpc.v2/Echo/echo", {"n": 1},
                                               qos={"idempotency_key": "same"}), (JSON,))] * 2,
    "idempotency: a GET with a key passes": [("GET", "/nowhere", b"",
                                              (("idempotency-key", '"g"'),))],
    "circuit: opens after failures": [
        ("POST", RPC, _env("rpc.v2/Echo/fail", {"code": 5002}), (JSON,))] * 4,
}


#: the status of each case's last answer (the case reaches the layer it is about)
EXPECTED = {
    "success": 200, "success, every layer triggered": 200, "compressed reply": 200,
    "handler error (500)": 500, "handler RpcError": 404, "unknown method": 404,
    "not found path": 404, "content: unsupported media type": 415,
    "content: malformed JSON": 400, "content: invalid envelope": 400,
    "version: no common version": 400, "trace: malformed traceparent": 200,
    "tenant: invalid tenant": 400, "tenant: header and envelope disagree": 400,
    "auth: bad token": 401, "auth: role required": 401,
    "ratelimit: refused on the third call": 429, "deadline: invalid timeout": 400,
    "deadline: exceeded": 504, "idempotency: keys disagree": 400, "idempotency: replay": 200,
    "idempotency: a GET with a key passes": 404, "circuit: opens after failures": 503,
}


async def _run_http(build: Build, case: str) -> list[Any]:
    out = []
    for method, path, body, headers in HTTP_CASES[case]:
        out.append(normal(await http(build.app, method, path, body, headers)))
    return out


FULL = list(DEFAULT_ORDER)
TARGET = ["errors", "content", "version", "trace", "tenant", "auth", "ratelimit", "deadline",
          "admission", "idempotency"]


@pytest.mark.parametrize("names", [FULL, TARGET], ids=["default order", "bench target"])
@pytest.mark.parametrize("case", list(HTTP_CASES))
async def test_http_answers_alike(names: list[str], case: str) -> None:
    got = {how: await _run_http(Build(how, names), case) for how in HOWS}
    assert got["fused"] == got["hand"]
    assert got["nested"] == got["hand"]
    last = got["hand"][-1][0]
    if case.startswith("circuit") and "circuit" not in names:
        return
    assert last[:2] == ("http.response.start", EXPECTED[case])


async def test_http_admission_draining_answers_alike() -> None:
    got = {}
    for how in HOWS:
        build = Build(how, FULL, draining=True)
        got[how] = normal(await http(build.app, "POST", RPC, _env("rpc.v2/Echo/echo", {}),
                                     (JSON,)))
    assert got["hand"][0][1] == 503
    assert got["fused"] == got["hand"] == got["nested"]


WS_CASES: dict[str, tuple[list[Any], int, tuple[tuple[str, str], ...]]] = {
    "success": ([json.loads(_env("rpc.v2/Echo/echo", {"msg": "hi"}))], 1, ()),
    "handler error": ([json.loads(_env("rpc.v2/Echo/crash", {}))], 1, ()),
    "unknown method": ([json.loads(_env("rpc.v2/Nope/nope", {}))], 1, ()),
    "auth: role required": ([json.loads(_env("rpc.v2/Admin/secret", {}))], 1, ()),
    "ratelimit: refused on the third call": (
        [json.loads(_env("rpc.v2/Echo/ping", {}, id=f"p-{i}")) for i in range(3)], 3, ()),
    "tenant: invalid tenant (handshake refused)": ([], 0, (("x-tenant-id", "bad tenant!"),)),
    "auth: bad token (handshake refused)": ([], 0, (("authorization", "Bearer wrong"),)),
    "version: no common version": ([], 0, (("aduib-rpc-supported-versions", "9.0"),)),
}


@pytest.mark.parametrize("case", list(WS_CASES))
async def test_websocket_answers_alike(case: str) -> None:
    frames, replies, headers = WS_CASES[case]
    got = {}
    for how in HOWS:
        got[how] = normal(await websocket(Build(how, FULL).app, frames, replies, headers))
    assert got["hand"], "no message at all"
    assert got["fused"] == got["hand"]
    assert got["nested"] == got["hand"]


async def test_websocket_draining_answers_alike() -> None:
    got = {}
    for how in HOWS:
        got[how] = normal(await websocket(Build(how, FULL, draining=True).app, [], 0))
    assert got["fused"] == got["hand"] == got["nested"]


# -- the declarations -----------------------------------------------------------------

def _instances() -> list[tuple[str, Any]]:
    registry = MethodRegistry()
    register_demo_services(registry)
    shutdown = ShutdownController()
    out = []
    for name in LAYER_CLASSES:
        out.append((name, layer_class(name)(_leaf, **_kwargs(name, registry, shutdown))))
    from aduib_asgi.middleware.metrics import MetricsMiddleware
    from aduib_asgi.observability.access import AccessLogMiddleware

    out.append(("metrics", MetricsMiddleware(_leaf)))
    out.append(("dispatcher", RpcDispatcher(registry)))
    return [*out, ("access", AccessLogMiddleware(_leaf))]


async def _leaf(scope: Any, receive: Any, send: Any) -> None:
    scope["reached"] = True


@pytest.mark.parametrize("name,layer", _instances(), ids=lambda x: x if isinstance(x, str) else "")
async def test_declared_handler_is_what_call_runs(name: str, layer: Any) -> None:
    """For every scope type a layer declares, ``__call__`` runs exactly that handler
    (with the existing context); the link calls it directly, and ``__call__`` for
    every other type."""
    routes = context_routes(layer)
    assert hasattr(type(layer), "context_methods") or hasattr(type(layer), "context_routes")
    for scope_type, handler in routes.items():
        seen: list[Any] = []

        async def recorder(scope: Any, receive: Any, send: Any, ctx: RequestContext,
                           _seen: list[Any] = seen) -> None:
            _seen.append(ctx)

        setattr(layer, handler.__name__, recorder)
        try:
            ctx = RequestContext()
            scope = {"type": scope_type, CONTEXT_KEY: ctx, "method": "POST", "path": RPC,
                     "headers": [], "client": ("127.0.0.1", 1)}
            await layer(scope, None, None)
            assert seen == [ctx], f"{name}: __call__ for {scope_type} ran another handler"
            seen.clear()
            await context_link(layer, {scope_type: recorder})(dict(scope), None, None)
            assert seen == [ctx]
        finally:
            delattr(layer, handler.__name__)


async def test_link_without_a_context_creates_it_like_the_layer() -> None:
    """Behind a foreign layer that created no context, the link creates and binds it."""
    from aduib_asgi.context import current_context

    seen: list[Any] = []

    class Probe:
        context_methods = {"http": "_http"}

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                await run_with_context(self._http, scope, receive, send)
            else:
                await self.app(scope, receive, send)

        async def _http(self, scope: Any, receive: Any, send: Any, ctx: RequestContext) -> None:
            seen.append((scope[CONTEXT_KEY] is ctx, current_context.get() is ctx))
            await self.app(scope, receive, send)

    probe = Probe(_leaf)
    link = context_link(probe, context_routes(probe))
    scope: dict[str, Any] = {"type": "http", "headers": []}
    await link(scope, None, None)
    assert seen == [(True, True)] and scope["reached"] and current_context.get() is None
    lifespan: dict[str, Any] = {"type": "lifespan"}
    await link(lifespan, None, None)  # not declared: the layer's own __call__
    assert lifespan["reached"] and CONTEXT_KEY not in lifespan and len(seen) == 1


async def test_foreign_layer_in_between_is_left_alone_and_stack_stays_walkable() -> None:
    calls: list[str] = []

    class Foreign:
        layer_name = "foreign"

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append(scope["type"])
            await self.app(scope, receive, send)

    registry = MethodRegistry()
    register_demo_services(registry)
    dispatcher = RpcDispatcher(registry)
    app = build_stack(dispatcher, [Layer.of(ErrorMappingMiddleware), Layer.of(Foreign),
                                   Layer(layer_class("content"), {}),
                                   Layer(layer_class("trace"), {})])
    node: Any = app
    kinds = []
    while node is not None:
        kinds.append(type(node).__name__)
        node = getattr(node, "app", None)
    # every layer is still found down ``.app`` (links in between are functions)
    for cls in ("ErrorMappingMiddleware", "Foreign", "ContentNegotiationMiddleware",
                "TracePropagationMiddleware", "RpcDispatcher"):
        assert cls in kinds
    foreign = next(n for n in _walk(app) if type(n).__name__ == "Foreign")
    assert callable(foreign.app) and foreign.app is not None
    sent = await http(app, "POST", RPC, _env("rpc.v2/Echo/echo", {"a": 1}), (JSON,))
    assert sent[0]["status"] == 200 and calls == ["http"]
    assert json.loads(sent[1]["body"])["result"] == {"a": 1}


def _walk(app: Any) -> list[Any]:
    out = []
    while app is not None:
        out.append(app)
        app = getattr(app, "app", None)
    return out


async def test_nested_build_stack_results_and_lifespan() -> None:
    registry = MethodRegistry()
    register_demo_services(registry)
    dispatcher = RpcDispatcher(registry)
    inner = build_stack(dispatcher, [Layer(layer_class(n), {}) for n in ("deadline",)])
    outer = build_stack(inner, [Layer(layer_class(n), {}) for n in ("errors", "content")])
    sent = await http(outer, "POST", RPC, _env("rpc.v2/Echo/echo", {"x": 7}), (JSON,))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["result"] == {"x": 7}
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    out: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        out.append(message)

    with anyio.fail_after(10):
        await outer({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in out] == ["lifespan.startup.complete",
                                        "lifespan.shutdown.complete"]


# -- the header merge --------------------------------------------------------------------

@pytest.mark.parametrize("headers,extra", [
    ([(b"content-type", b"a")], [(b"x-a", b"1"), (b"x-b", b"2")]),
    ((), [(b"x-a", b"1")]),
    ([(b"vary", b"Accept")], [(b"x-a", b"1")]),
    ([(b"Vary", b"accept")], [(b"vary", b"Accept-Encoding"), (b"x-a", b"1")]),
    ([], [(b"vary", b"a"), (b"vary", b"b")]),
    ([(b"vary", b"*")], [(b"vary", b"b")]),
])
def test_merged_is_the_append_unless_vary(headers: Any, extra: list[Any]) -> None:
    got = _merged(headers, extra)
    if not any(k.lower() == b"vary" for k, _ in [*headers, *extra]):
        assert got == [*headers, *extra]
    varies = [v for k, v in got if k.lower() == b"vary"]
    assert len(varies) <= 1
    assert [h for h in got if h[0].lower() != b"vary"] == [
        h for h in [*headers, *extra] if h[0].lower() != b"vary"]


def test_fused_build_links_every_declared_layer_and_nested_none() -> None:
    fused = Build("fused", TARGET).app
    nested = Build("nested", TARGET).app
    linked = [n for n in _walk(fused) if getattr(n, "__qualname__", "").startswith(
        "context_link(")]
    # the facts wrapper links errors, idempotency the dispatcher
    assert [getattr(n.app, "layer_name", type(n.app).__name__) for n in linked] == [
        *TARGET, "RpcDispatcher"]
    assert not [n for n in _walk(nested) if callable(n) and hasattr(n, "__qualname__")
                and str(n.__qualname__).startswith("context_link(")]


def test_fuse_links_layers_built_by_hand_and_answers_alike() -> None:
    from aduib_asgi.stack import fuse

    hand = Build("hand", TARGET)
    before = [type(n).__name__ for n in _walk(hand.app)]
    fuse(hand.app)
    after = [n for n in _walk(hand.app)
             if not str(getattr(n, "__qualname__", "")).startswith("context_link(")]
    assert [type(n).__name__ for n in after] == before  # the same layers, in order
    assert len(_walk(hand.app)) == len(before) + len(TARGET) + 1  # facts..idempotency linked
    fuse(hand.app)  # a second time changes nothing
    assert len(_walk(hand.app)) == len(before) + len(TARGET) + 1


@pytest.mark.parametrize("case", ["success", "auth: bad token", "idempotency: replay",
                                  "handler error (500)"])
async def test_fuse_answers_alike(case: str) -> None:
    from aduib_asgi.stack import fuse

    hand = Build("hand", FULL)
    fused = Build("hand", FULL)
    fuse(fused.app)
    assert await _run_http(fused, case) == await _run_http(hand, case)


async def test_demo_inner_layers_are_linked() -> None:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    app = build_demo_app(DemoConfig(env="prod"))
    names = [getattr(n, "__qualname__", type(n).__name__) for n in _walk(app)]
    # the snapshot's layers sit behind ReloadableApp; the long-lived inner ones are walked here
    manager = app.config_manager  # type: ignore[attr-defined]
    current = manager.app.current[0]
    chain = [str(getattr(n, "__qualname__", "")) for n in _walk(current)]
    for layer in ("DeadlineMiddleware", "AdmissionMiddleware", "IdempotencyMiddleware",
                  "CircuitBreakerMiddleware"):
        assert f"context_link({layer})" in chain, (layer, chain, names)


async def test_a_subclass_that_overrides_call_is_not_bypassed() -> None:
    """A user's subclass with its own ``__call__`` (and no declaration of its own)
    is called through it in a fused stack; one that only overrides a handler is
    fused with that handler."""
    from aduib_asgi.context import declaring_class

    seen: list[str] = []
    version_cls = layer_class("version")
    tenant_cls = layer_class("tenant")

    class Watched(version_cls):  # type: ignore[misc, valid-type]
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append("call")
            await super().__call__(scope, receive, send)

    class OwnHandler(tenant_cls):  # type: ignore[misc, valid-type]
        async def _handle(self, scope: Any, receive: Any, send: Any,
                          ctx: RequestContext) -> None:
            seen.append("handler")
            await super()._handle(scope, receive, send, ctx)

    assert declaring_class(Watched) is None and context_routes(Watched(_leaf)) == {}
    assert declaring_class(OwnHandler) is tenant_cls
    registry = MethodRegistry()
    register_demo_services(registry)
    app = build_stack(RpcDispatcher(registry), [
        Layer(layer_class("errors"), {}), Layer(layer_class("content"), {}),
        Layer(Watched, {}), Layer(OwnHandler, {"default": "default"})])
    sent = await http(app, "POST", RPC, _env("rpc.v2/Echo/echo", {"a": 1}), (JSON,))
    assert sent[0]["status"] == 200 and seen == ["call", "handler"]
    chain = [str(getattr(n, "__qualname__", "")) for n in _walk(app)]
    assert "context_link(Watched)" not in chain  # and its own ``app`` is left alone:
    assert type(next(n for n in _walk(app) if type(n) is Watched).app) is OwnHandler
    seen.clear()
    app = build_stack(RpcDispatcher(registry), [
        Layer(layer_class("errors"), {}), Layer(layer_class("content"), {}),
        Layer(OwnHandler, {"default": "default"})])
    assert "context_link(OwnHandler)" in [str(getattr(n, "__qualname__", "")) for n in _walk(app)]
    sent = await http(app, "POST", RPC, _env("rpc.v2/Echo/echo", {"a": 1}), (JSON,))
    assert sent[0]["status"] == 200 and seen == ["handler"]


async def test_link_routes_any_declared_scope_type() -> None:
    seen: list[str] = []

    async def handler(scope: Any, receive: Any, send: Any, ctx: RequestContext) -> None:
        seen.append(scope["type"])

    async def layer(scope: Any, receive: Any, send: Any) -> None:
        seen.append("layer:" + scope["type"])

    link = context_link(layer, {"custom": handler, "http": handler})
    for t in ("custom", "http", "websocket", "lifespan"):
        await link({"type": t, CONTEXT_KEY: RequestContext()}, None, None)
    assert seen == ["custom", "http", "layer:websocket", "layer:lifespan"]


async def test_fused_facts_wrapper_creates_the_context_for_the_first_layer() -> None:
    """A fused ``build_stack`` runs the first layer's handler from its outermost wrapper
    with a new context, bound while the request runs and reset after it, exactly as
    the link (``run_with_context``) would; with an outer creator's context, that one."""
    from aduib_asgi.context import SERVER_ID, current_context

    seen: list[Any] = []

    class Leaf:
        streaming = type("S", (), {"default_framing": "envelope"})()
        server_id = "node-9"
        registry = None

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            ctx = scope[CONTEXT_KEY]
            seen.append((current_context.get() is ctx, ctx.server_id))
            ctx.add_response_header(b"x-seen", b"1")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    for fused in (True, False):
        app = build_stack(Leaf(), [(ErrorMappingMiddleware, {})], fused=fused)
        assert bool(getattr(app, "entry", None)) is fused
        sent: list[Any] = []

        async def send(message: Any, _sent: list[Any] = sent) -> None:
            _sent.append(message)

        await app({"type": "http", "method": "GET", "path": "/", "headers": []}, None, send)
        assert current_context.get() is None
        assert sent[0]["headers"] == [(b"x-seen", b"1")] and sent[1]["body"] == b"ok"
        outer = RequestContext()
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], CONTEXT_KEY: outer}
        await app(scope, None, send)
        assert scope[CONTEXT_KEY] is outer
    assert seen == [(True, "node-9"), (False, SERVER_ID)] * 2


@pytest.mark.parametrize("headers,extra,expected", [
    # one Vary of ours, none of the app's: ours goes last, as it is
    ([(b"content-type", b"a")], [(b"vary", b"Accept"), (b"x-a", b"1")],
     [(b"content-type", b"a"), (b"x-a", b"1"), (b"vary", b"Accept")]),
    # the app's Vary (any case) takes ours in, in its place
    ([(b"Vary", b"Origin"), (b"x-b", b"2")], [(b"vary", b"Accept"), (b"x-a", b"1")],
     [(b"vary", b"Origin, Accept"), (b"x-b", b"2"), (b"x-a", b"1")]),
    # two of ours: one field; the same pair twice: once
    ([], [(b"vary", b"a"), (b"x-a", b"1"), (b"vary", b"b")],
     [(b"x-a", b"1"), (b"vary", b"a, b")]),
    ([], [(b"vary", b"Accept")] * 2, [(b"vary", b"Accept")]),
    ([(b"vary", b"*")], [(b"vary", b"b")], [(b"vary", b"*")]),
])
def test_merged_places_vary_as_before(headers: Any, extra: list[Any], expected: Any) -> None:
    assert _merged(headers, extra) == expected
    assert _merged(iter(headers), extra) == expected  # any iterable, read once
