"""Shortcuts of the fourth round on the protocol layers' hot paths (issue 18): each is
checked against the general path it skips."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi import body as body_module
from aduib_asgi.body import ClientDisconnected, parse_envelope, read_body
from aduib_asgi.codecs import JSON
from aduib_asgi.context import CONTEXT_KEY, RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware.content import ContentNegotiationMiddleware
from aduib_asgi.versioning import VERSIONS_KEY, ServerVersions
from aduib_asgi.versioning.compat import prepare_payload
from tests.test_hot_path import _BODY_SEQUENCES  # the dispatcher's one-message body cases

# -- content: a body in one message is taken as it is ----------------------------------

def _receiver(messages: list[Message]) -> Receive:
    it = iter(messages)

    async def receive() -> Message:
        return next(it)

    return receive


async def _through_content(messages: list[Message]) -> object:
    """What the content layer makes of the body (a JSON POST outside the envelope paths)."""
    seen: dict[str, Any] = {}
    sent: list[Message] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = scope[CONTEXT_KEY]
        seen["payload"], seen["body"] = ctx.payload, ctx.body
        seen["replayed"] = await receive()

    async def send(message: Message) -> None:
        sent.append(message)

    layer = ContentNegotiationMiddleware(inner, max_body_size=40)
    scope = {"type": "http", "method": "POST", "path": "/plain",
             "headers": [(b"content-type", b"application/json")]}
    await layer(scope, _receiver(messages), send)
    if sent:
        return ("error", sent[0]["status"], JSON.decode(sent[1]["body"])["error"]["code"])
    if not seen:
        return "disconnected"
    replayed = seen["replayed"]
    assert replayed == {"type": "http.request", "body": seen["body"], "more_body": False}
    return ("ok", seen["payload"], seen["body"])


async def _through_read_body(messages: list[Message]) -> object:
    """The same with read_body alone (what the layer did before)."""
    try:
        body = await read_body(_receiver(messages), limit=40)
    except ClientDisconnected:
        return "disconnected"
    except RpcError as exc:
        return ("error", exc.http_status, exc.code)
    return ("ok", JSON.decode(body) if body else None, body)


@pytest.mark.parametrize("messages", _BODY_SEQUENCES)
def test_the_content_layers_one_message_body_equals_read_body(messages: list[Message]) -> None:
    assert asyncio.run(_through_content(messages)) == asyncio.run(_through_read_body(messages))


# -- parse_envelope: the version hook is skipped only where it does nothing -------------

_PAYLOADS: list[dict[str, Any]] = [
    {"method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": "2.0", "id": "a", "method": "rpc.v2/Echo/echo", "data": {"x": 1}},
    {"aduib_rpc": None, "method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": "1.0", "id": 7, "method": "Echo.echo", "meta": {"stream": "1"}},
    {"aduib_rpc": "2.00", "method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": "3.0", "method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": "x.y", "id": "bad", "method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": 2, "method": "rpc.v2/Echo/echo"},
    {"method": "rpc.v2/Echo/echo", "supported_versions": ["2.0", "1.0"]},
    {"method": "rpc.v2/Echo/echo", "supported_versions": None},
    {"method": "rpc.v2/Echo/echo", "supported_versions": ["9.9"]},
    {"method": "rpc.v2/Echo/echo", "supported_versions": "2.0"},
]


def _contexts() -> list[tuple[str, RequestContext]]:
    plain = RequestContext()
    layer_first = RequestContext()  # the version layer ran before anyone decoded
    layer_first.extras[VERSIONS_KEY] = ServerVersions()
    negotiated = RequestContext()
    negotiated.extras[VERSIONS_KEY] = ServerVersions(("2.0",))
    negotiated.negotiated_version = "2.0"
    only_three = RequestContext()
    only_three.extras[VERSIONS_KEY] = ServerVersions(("3.0",))
    return [("plain", plain), ("layer-first", layer_first), ("negotiated", negotiated),
            ("only-3.0", only_three)]


def _state(ctx: RequestContext) -> object:
    return (ctx.request_id, ctx.negotiated_version, sorted(ctx.extras))


@pytest.mark.parametrize("v1", [False, True])
@pytest.mark.parametrize("payload", _PAYLOADS)
def test_the_version_hook_is_skipped_only_where_it_changes_nothing(
        payload: dict[str, Any], v1: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(ctx: RequestContext, payload: dict[str, Any], *, v1: bool = False) -> Any:
        calls.append(1)
        return prepare_payload(ctx, payload, v1=v1)

    monkeypatch.setattr(body_module, "prepare_payload", counting)
    for _, ctx in _contexts():
        calls.clear()
        probe = copy.deepcopy(ctx)
        with contextlib.suppress(RpcError):
            parse_envelope(ctx, copy.deepcopy(payload), v1=v1)
        if calls:
            continue
        # Skipped: the hook itself, on the same context and payload, is a no-op.
        given = copy.deepcopy(payload)
        before = _state(probe)
        assert prepare_payload(probe, given, v1=v1) is given
        assert given == payload and _state(probe) == before
    if v1 or payload.get("aduib_rpc", "2.0") != "2.0":
        assert calls, "a v1 or non-2.0 envelope always goes through the hook"


# -- tenant: ids that matched the pattern are remembered, bounded ---------------------


def _tenant_ctx(header: str | None = None, tenant_id: str | None = None) -> RequestContext:
    from aduib_asgi.models import RpcRequest

    headers = [] if header is None else [(b"x-tenant-id", header.encode("latin-1"))]
    ctx = RequestContext(raw_headers=headers)
    if tenant_id is not None:
        ctx.envelope = RpcRequest.model_validate(
            {"method": "rpc.v2/Echo/echo", "metadata": {"tenant_id": tenant_id}})
    return ctx


def test_tenant_ids_that_matched_are_remembered_up_to_the_bound() -> None:
    from aduib_asgi.middleware import tenant as tenant_module
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware

    layer = TenantScopeMiddleware(_noop_app, pattern=r"[a-z0-9]{1,300}")
    for i in range(tenant_module._MAX_VALID + 50):
        assert layer.resolve(_tenant_ctx(header=f"t{i}")) == f"t{i}"
    assert len(layer._valid) == tenant_module._MAX_VALID
    # past the bound, a new id is still matched (and refused when it does not match)
    assert layer.resolve(_tenant_ctx(header="fresh")) == "fresh"
    with pytest.raises(RpcError) as bad:
        layer.resolve(_tenant_ctx(header="Not/Valid"))
    assert bad.value.code == 2003
    assert "Not/Valid" not in layer._valid


def test_long_or_invalid_tenant_ids_are_never_remembered() -> None:
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware

    layer = TenantScopeMiddleware(_noop_app, pattern=r"[a-z]{1,400}")
    long_id = "a" * 300
    for _ in range(2):
        assert layer.resolve(_tenant_ctx(tenant_id=long_id)) == long_id
    assert long_id not in layer._valid
    for _ in range(2):  # an invalid id is refused every time, with the same error
        with pytest.raises(RpcError) as bad:
            layer.resolve(_tenant_ctx(tenant_id="UPPER"))
        assert bad.value.code == 2003
        assert bad.value.details[0]["field"] == "metadata.tenant_id"
    assert not layer._valid


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    return None


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize("default", [None, "dflt"])
@pytest.mark.parametrize(("header", "tenant_id"), [
    (None, None), ("acme", None), (None, "acme"), ("acme", "acme"), ("acme", "other"),
    ("bad/id", None), (None, "bad/id"),
])
def test_the_tenant_layer_binds_what_resolve_says(
        required: bool, default: str | None, header: str | None, tenant_id: str | None) -> None:
    """The layer's shortcut for a request that names no tenant gives resolve()'s answer."""
    from aduib_asgi.middleware.tenant import TenantScopeMiddleware, get_tenant

    seen: list[object] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope[CONTEXT_KEY].tenant_id, get_tenant()))

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    layer = TenantScopeMiddleware(inner, required=required, default=default)
    try:
        expected: object = layer.resolve(_tenant_ctx(header, tenant_id))
        expected = (expected, expected)
    except RpcError as exc:
        expected = exc.code
    ctx = _tenant_ctx(header, tenant_id)
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": ctx.raw_headers,
             CONTEXT_KEY: ctx}
    asyncio.run(layer(scope, _receiver([]), send))
    if isinstance(expected, int):
        assert not seen and JSON.decode(sent[1]["body"])["error"]["code"] == expected
    else:
        assert seen == [expected] and not sent


# -- dispatcher: an async handler's call is the handler's own coroutine ---------------


def test_call_unary_of_an_async_handler_is_the_handlers_own_coroutine() -> None:
    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
    from aduib_asgi.models import RpcRequest
    from aduib_asgi.qos.retry import RetryingCall

    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return data

    reg = MethodRegistry()
    reg.register("rpc.v2/Echo/echo", echo)
    dispatcher = RpcDispatcher(reg)
    assert isinstance(dispatcher.call_unary, RetryingCall)  # the retry hook wraps it
    env = RpcRequest.model_validate({"method": "rpc.v2/Echo/echo", "data": {"a": 1}})
    call = dispatcher.call_unary(reg.resolve("rpc.v2/Echo/echo"), env, RequestContext())
    assert call.cr_code is echo.__code__  # type: ignore[attr-defined]
    assert asyncio.run(_await(call)) == {"a": 1}


async def _await(call: Any) -> Any:
    return await call


class _Point:
    """A pydantic result model (built lazily: pydantic is imported by the dispatcher)."""

    @staticmethod
    def model() -> Any:
        from pydantic import BaseModel

        class Point(BaseModel):
            x: int
            y: int | None = None

        return Point


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("retry", [False, True])
def test_model_results_and_bad_params_answer_as_before(sync: bool, retry: bool) -> None:
    """Results are made JSON-like after the (retried) call, params errors are still 2001."""
    import httpx

    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher

    point = _Point.model()
    attempts: list[int] = []

    def flaky(data: Any) -> Any:
        attempts.append(1)
        if retry and len(attempts) == 1:
            raise RpcError(5003)  # retryable
        return [point(x=data.x), point(x=2, y=3)]

    async def flaky_async(data: Any) -> Any:
        return flaky(data)

    reg = MethodRegistry()
    reg.register("rpc.v2/P/get", flaky if sync else flaky_async, input_model=point,
                 idempotent=True)
    qos = {"qos": {"retry": {"max_attempts": 3, "initial_delay_ms": 0}}} if retry else {}

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=RpcDispatcher(reg))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            ok = await c.post("/aduib_rpc/v2/rpc", json={
                "method": "rpc.v2/P/get", "data": {"x": 1}, **qos})
            bad = await c.post("/aduib_rpc/v2/rpc", json={
                "method": "rpc.v2/P/get", "data": {"x": "no"}, **qos})
        return ok, bad

    ok, bad = asyncio.run(main())
    assert ok.status_code == 200, ok.text
    assert ok.json()["result"] == [{"x": 1}, {"x": 2, "y": 3}]
    assert len(attempts) == (2 if retry else 1)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 2001
    assert [d["field"] for d in bad.json()["error"]["details"]] == ["data.x"]
