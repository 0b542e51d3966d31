"""IdempotencyMiddleware through the real stack, on memory and on a real Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import RPC, client_for, envelope
from tests.fixtures_redis import RedisServer
from tests.rl_idem_helpers import EnvelopeLayer, PrincipalLayer, Services

pytestmark = pytest.mark.anyio

INCR = "rpc.v2/Counter/incr"
REPLAYED = "idempotent-replayed"


def rpc_app(services: Services, *, envelope_layer: bool = True, **idem: Any) -> Any:
    layers = [Layer.of(ErrorMappingMiddleware)]
    if envelope_layer:
        layers.append(Layer.of(EnvelopeLayer))
    layers += [Layer.of(PrincipalLayer), Layer.of(IdempotencyMiddleware, **idem)]
    return build_stack(services.dispatcher(), layers)


async def call(client: httpx.AsyncClient, key: str | None = "k-1", method: str = INCR,
               data: dict[str, Any] | None = None, qos_key: str | None = None,
               **headers: str) -> httpx.Response:
    h = dict(headers)
    if key is not None:
        h["idempotency-key"] = key
    extra: dict[str, Any] = {"qos": {"idempotency_key": qos_key}} if qos_key else {}
    return await client.post(RPC, json=envelope(method, data or {"by": 1}, **extra), headers=h)


async def test_repeat_is_replayed_byte_for_byte(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        first = await call(client)
        second = await call(client)
        other_key = await call(client, key="k-2")
    assert first.status_code == 200 and REPLAYED not in first.headers
    assert second.status_code == 200 and second.headers[REPLAYED] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["content-length"] == first.headers["content-length"]
    assert services.calls["incr"] == 2  # once for k-1, once for k-2
    assert other_key.json()["result"]["value"] == 2


async def test_key_from_envelope_qos(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        first = await call(client, key=None, qos_key="q-1")
        second = await call(client, key=None, qos_key="q-1")
    assert second.headers[REPLAYED] == "true" and second.content == first.content
    assert services.calls["incr"] == 1


async def test_envelope_and_header_keys_must_agree(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        clash = await call(client, key='"h-1"', qos_key="q-1")
        same = await call(client, key='"q-2"', qos_key="q-2")
        again = await call(client, key=None, qos_key="q-2")
    assert clash.status_code == 400
    assert clash.json()["error"]["code"] == 2003
    assert clash.json()["error"]["details"][0]["field"] == "qos.idempotency_key"
    assert same.status_code == 200 and REPLAYED not in same.headers
    assert again.headers[REPLAYED] == "true"
    assert services.calls["incr"] == 1


async def test_quoted_header_and_bare_token_are_the_same_key(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        await call(client, key='"abc-123"')
        bare = await call(client, key="abc-123")
        escaped = await call(client, key='"a \\"b\\""')
        escaped2 = await call(client, key='"a \\"b\\""')
    assert bare.headers[REPLAYED] == "true"
    assert escaped.status_code == 200 and escaped2.headers[REPLAYED] == "true"
    assert services.calls["incr"] == 2


async def test_same_key_other_payload_is_422(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        await call(client, data={"by": 1})
        resp = await call(client, data={"by": 2})
    assert resp.status_code == 422
    body = resp.json()
    assert body["status"] == "error" and body["error"]["code"] == 4011 and body["id"]
    assert services.calls["incr"] == 1


@pytest.mark.parametrize("key", ["x" * 256, "caf\u00e9", '"unterminated', '"bad \\n escape"',
                                 "has space", '""'])
async def test_bad_key_is_2003(key: str) -> None:
    services = Services()
    async with client_for(rpc_app(services)) as client:
        resp = await client.post(RPC, json=envelope(INCR, {}),
                                 headers={"idempotency-key": key.encode("utf-8")})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == 2003
    assert resp.json()["error"]["details"][0]["field"] == "idempotency_key"
    assert "incr" not in services.calls


async def test_bad_qos_key_is_2003() -> None:
    async with client_for(rpc_app(Services())) as client:
        resp = await call(client, key=None, qos_key="\u00e9t\u00e9")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 2003


async def test_required_key_missing_is_2002(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend, required=[INCR])) as client:
        missing = await call(client, key=None)
        other = await call(client, key=None, method="rpc.v2/Limited/ping")
        present = await call(client)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == 2002
    assert other.status_code == 200 and present.status_code == 200
    assert services.calls["incr"] == 1


async def test_client_errors_are_stored_server_errors_are_not(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        bad1 = await call(client, key="e4", method="rpc.v2/Echo/fail", data={"code": 2003})
        bad2 = await call(client, key="e4", method="rpc.v2/Echo/fail", data={"code": 2003})
        crash = [await call(client, key="e5", method="rpc.v2/Echo/crash") for _ in range(2)]
        limited = [await call(client, key="e6", method="rpc.v2/Echo/fail",
                              data={"code": 5020}) for _ in range(2)]
        timeout = [await call(client, key="e7", method="rpc.v2/Echo/fail",
                              data={"code": 5003}) for _ in range(2)]
    assert bad1.status_code == 400 and bad2.headers[REPLAYED] == "true"
    assert bad2.content == bad1.content
    assert services.calls["fail"] == 1 + 2 + 2
    assert services.calls["crash"] == 2
    assert [r.status_code for r in crash] == [500, 500]
    assert [r.status_code for r in limited] == [429, 429]
    assert [r.status_code for r in timeout] == [504, 504]
    assert not any(REPLAYED in r.headers for r in crash + limited + timeout)


async def test_scoped_by_tenant_principal_and_method(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        await call(client, **{"x-tenant-id": "a", "x-user": "alice"})
        tenant = await call(client, **{"x-tenant-id": "b", "x-user": "alice"})
        principal = await call(client, **{"x-tenant-id": "a", "x-user": "bob"})
        method = await call(client, method="rpc.v2/Limited/ping",
                            **{"x-tenant-id": "a", "x-user": "alice"})
        same = await call(client, **{"x-tenant-id": "a", "x-user": "alice"})
    assert not any(REPLAYED in r.headers for r in (tenant, principal, method))
    assert same.headers[REPLAYED] == "true"
    assert services.calls["incr"] == 3


async def _concurrent(client: httpx.AsyncClient, services: Services,
                      n: int = 50) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await call(client, method="rpc.v2/Slow/gated", data={"tag": "t"}))

    async def opener() -> None:
        await services.started.wait()
        services.gate.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
        for _ in range(n):
            tg.start_soon(one)
    return responses


async def test_fifty_concurrent_duplicates_run_once(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        responses = await _concurrent(client, services)
    assert services.calls["gated"] == 1
    originals = [r for r in responses if r.status_code == 200 and REPLAYED not in r.headers]
    replays = [r for r in responses if r.status_code == 200 and REPLAYED in r.headers]
    conflicts = [r for r in responses if r.status_code == 409]
    assert len(originals) == 1
    assert len(replays) + len(conflicts) == 49
    assert all(r.content == originals[0].content for r in replays)
    assert all(r.json()["error"]["code"] == 4011 for r in conflicts)


async def test_wait_mode_replays_after_the_original(backend: str) -> None:
    services = Services()
    results: dict[str, httpx.Response] = {}
    async with client_for(rpc_app(services, store=backend, wait=10.0)) as client:

        async def run(name: str) -> None:
            results[name] = await call(client, method="rpc.v2/Slow/gated", data={"tag": 1})

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first")
            await services.started.wait()
            tg.start_soon(run, "second")
            await anyio.sleep(0.1)  # let the second start waiting
            services.gate.set()
    assert services.calls["gated"] == 1
    assert results["second"].status_code == 200
    assert results["second"].headers[REPLAYED] == "true"
    assert results["second"].content == results["first"].content


async def test_cancelled_original_releases_the_key(backend: str) -> None:
    services = Services()
    async with client_for(rpc_app(services, store=backend)) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, client, "c-1", "rpc.v2/Slow/gated")
            await services.started.wait()
            tg.cancel_scope.cancel()  # the client goes away mid-request
        services.gate.set()
        again = await call(client, key="c-1", method="rpc.v2/Slow/gated")
    assert again.status_code == 200 and REPLAYED not in again.headers
    assert services.calls["gated"] == 2


async def test_lease_is_renewed_while_the_handler_runs(backend: str) -> None:
    services = Services()
    app = rpc_app(services, store=backend, lease=0.3)
    async with client_for(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(call, client, "l-1", "rpc.v2/Slow/gated")
        await services.started.wait()
        await anyio.sleep(1.0)  # more than three leases
        duplicate = await call(client, key="l-1", method="rpc.v2/Slow/gated")
        services.gate.set()
    assert duplicate.status_code == 409
    assert services.calls["gated"] == 1


async def test_a_response_over_the_replay_limit_is_not_retained_nor_run_again(
        backend: str) -> None:
    """Over ``max_body_size`` the response is sent, not stored; its key answers 409 after."""
    services = Services()
    async with client_for(rpc_app(services, store=backend, max_body_size=16)) as client:
        first = await call(client)
        again = await call(client)
        other = await call(client, data={"by": 2})  # another payload: still 422
    assert first.status_code == 200 and first.json()["result"]["value"] == 1
    assert again.status_code == 409 and REPLAYED not in again.headers
    error = again.json()["error"]
    assert error["code"] == 4011 and "not retained" in error["message"]
    assert error["details"][0]["metadata"] == {"status": 200}
    assert other.status_code == 422
    assert services.calls["incr"] == 1  # never a second execution


# -- alone around a plain Starlette app ----------------------------------------------------


def plain_app(calls: list[str]) -> Starlette:
    async def orders(request: Request) -> JSONResponse:
        calls.append((await request.body()).decode())
        resp = JSONResponse({"order": len(calls)}, status_code=201)
        resp.set_cookie("session", "s3cret")
        return resp

    async def events(request: Request) -> StreamingResponse:
        calls.append("stream")

        async def gen() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return Starlette(routes=[Route("/orders", orders, methods=["POST", "GET"]),
                             Route("/events", events, methods=["POST"])])


async def test_alone_around_a_plain_app(backend: str) -> None:
    calls: list[str] = []
    app = IdempotencyMiddleware(plain_app(calls), store=backend)
    async with client_for(app) as client:
        first = await client.post("/orders", content=b'{"x":1}', headers={"idempotency-key": "o1"})
        second = await client.post("/orders", content=b'{"x":1}',
                                   headers={"idempotency-key": "o1"})
        changed = await client.post("/orders", content=b'{"x":2}',
                                    headers={"idempotency-key": "o1"})
        get = [await client.get("/orders", headers={"idempotency-key": "o1"}) for _ in range(2)]
        streams = [await client.post("/events", headers={"idempotency-key": "s1"})
                   for _ in range(2)]
    assert first.status_code == 201 and "set-cookie" in first.headers
    assert second.status_code == 201 and second.content == first.content
    assert second.headers[REPLAYED] == "true" and "set-cookie" not in second.headers
    assert changed.status_code == 422 and changed.json()["error"]["code"] == 4011
    assert calls[:1] == ['{"x":1}']
    assert all(REPLAYED not in r.headers for r in get)  # safe methods pass through
    assert [s.text for s in streams] == ["data: 1\n\ndata: 2\n\n"] * 2
    assert calls.count("stream") == 2  # streams are not cached


# -- several instances, outages ---------------------------------------------------------


@pytest.mark.redis
async def test_replayed_on_another_instance(redis_url: str) -> None:
    a_services, b_services = Services(), Services()
    a = client_for(rpc_app(a_services, store=redis_url))
    b = client_for(rpc_app(b_services, store=redis_url))
    async with a, b:
        first = await call(a)
        second = await call(b)
    assert second.headers[REPLAYED] == "true" and second.content == first.content
    assert a_services.calls["incr"] == 1 and "incr" not in b_services.calls


@pytest.mark.redis
async def test_in_flight_on_another_instance_is_409(redis_url: str) -> None:
    a_services, b_services = Services(), Services()
    a = client_for(rpc_app(a_services, store=redis_url))
    b = client_for(rpc_app(b_services, store=redis_url))
    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(call, a, "f-1", "rpc.v2/Slow/gated")
        await a_services.started.wait()
        resp = await call(b, key="f-1", method="rpc.v2/Slow/gated")
        a_services.gate.set()
    assert resp.status_code == 409 and "gated" not in b_services.calls


@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_killed_then_back(own_redis: RedisServer, fail_open: bool) -> None:
    services = Services()
    app = rpc_app(services, store=own_redis.url, timeout=0.5, fail_open=fail_open)
    async with client_for(app) as client:
        assert (await call(client, key="r-1")).status_code == 200
        own_redis.kill()
        started = time.monotonic()
        down = await call(client, key="r-2")
        elapsed = time.monotonic() - started
        own_redis.start()
        back = [await call(client, key="r-3") for _ in range(2)]
    assert elapsed < 3.0
    if fail_open:
        assert down.status_code == 200 and services.calls["incr"] == 3
    else:
        assert down.status_code == 503 and down.json()["error"]["code"] == 5002
        assert services.calls["incr"] == 2
    assert back[0].status_code == 200 and back[1].headers[REPLAYED] == "true"


async def test_a_call_cancelled_through_rpc_cancel_is_not_stored() -> None:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    body = envelope("rpc.v2/Echo/sleep", {"ms": 400}, id="cancel-me",
                    qos={"idempotency_key": "idem-cancel"})
    async with client_for(build_demo_app(DemoConfig(env="prod"))) as client:
        box: dict[str, httpx.Response] = {}

        async def first() -> None:
            box["first"] = await client.post(RPC, json=body)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(5):
                while True:  # 404 until the call is registered as in flight
                    r = await client.post(RPC + "/cancel", json={"id": "cancel-me"})
                    if r.status_code == 200:
                        break
                    await anyio.sleep(0.01)
        second = await client.post(RPC, json=body)
    assert box["first"].json()["error"]["code"] == 4011
    assert second.status_code == 200 and REPLAYED not in second.headers
    assert second.json()["result"] == {"slept_ms": 400}


# -- review: variants and canonical payloads ---------------------------------------------------


async def test_a_repeat_asking_for_another_representation_is_422_not_a_wrong_replay(
        demo_client: httpx.AsyncClient) -> None:
    """Same key, same payload, but msgpack or the v1 endpoint: never the JSON v2 bytes."""
    key = {"Idempotency-Key": '"variant-1"'}
    body = envelope("rpc.v2/Counter/incr", {"by": 1})
    first = await demo_client.post(RPC, json=body, headers=key)
    assert first.status_code == 200
    again = await demo_client.post(RPC, json=body, headers=key)
    assert again.headers.get("idempotent-replayed") == "true"
    msgpack = await demo_client.post(RPC, json=body,
                                     headers={**key, "Accept": "application/msgpack"})
    v1 = {"aduib_rpc": "1.0", "id": 1, "method": "rpc.v1/Counter/incr", "data": {"by": 1}}
    old = await demo_client.post("/aduib_rpc/v1/rpc", json=v1, headers=key)
    assert msgpack.status_code == 422 and "idempotent-replayed" not in msgpack.headers
    assert old.status_code == 422 and "idempotent-replayed" not in old.headers


def test_payload_fingerprints_tell_types_apart_and_never_fail() -> None:
    from aduib_asgi.middleware.idempotency import canonical_payload

    assert canonical_payload({"x": b"abc"}) != canonical_payload({"x": "b'abc'"})
    assert canonical_payload({"x": [1, "1"]}) != canonical_payload({"x": ["1", 1]})
    assert canonical_payload({"b": 1, "a": 2}) == canonical_payload({"a": 2, "b": 1})
    assert canonical_payload({"n": 1}) == canonical_payload({"n": 1.0})  # the same number
    assert canonical_payload({"n": 0.5}) != canonical_payload({"n": "0.5"})
    assert canonical_payload({b"k": 1, "k": 2})  # mixed key types: no exception
    assert canonical_payload({"t": (1, 2)}) == canonical_payload({"t": [1, 2]})


async def test_a_replay_keeps_the_headers_layers_inside_added(
        demo_client: httpx.AsyncClient) -> None:
    """Deprecation/Sunset (added by the registry, emitted by the context) are replayed too."""
    key = {"Idempotency-Key": '"legacy-1"'}
    body = envelope("rpc.v2/Legacy/old", {})
    first = await demo_client.post(RPC, json=body, headers=key)
    again = await demo_client.post(RPC, json=body, headers=key)
    assert first.status_code == 200 and "deprecation" in first.headers
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.headers["deprecation"] == first.headers["deprecation"]
    assert again.headers["sunset"] == first.headers["sunset"]
    assert again.headers.get_list("deprecation") == first.headers.get_list("deprecation")
