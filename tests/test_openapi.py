"""GET /aduib_rpc/v2/openapi.json: OpenAPI 3.1 from the registry and the served routes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import ERROR_TABLE
from aduib_asgi.health import ProbeMiddleware
from aduib_asgi.middleware import ErrorMappingMiddleware
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import client_for

pytestmark = pytest.mark.anyio

OPENAPI = "/aduib_rpc/v2/openapi.json"


async def get_doc(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get(OPENAPI)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc: dict[str, Any] = r.json()
    errors = [e.message for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert not errors, errors[:5]
    return doc


def schema_of(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].rsplit("/", 1)[1]
    out: dict[str, Any] = doc["components"]["schemas"][name]
    return out


async def test_demo_document_describes_every_method_and_route(
        prod_client: httpx.AsyncClient) -> None:
    doc = await get_doc(prod_client)
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    base = "/aduib_rpc"
    for path in ("/v2/rpc", "/v2/rpc/stream", "/v2/rpc/cancel", "/v1/rpc",
                 "/v2/TaskService/Submit", "/v2/TaskService/Query", "/v2/TaskService/Cancel",
                 "/v2/TaskService/Subscribe", "/v2/HealthService/Check",
                 "/v2/HealthService/Watch"):
        assert "post" in paths[base + path], path
    assert "get" in paths[base + "/v2/capabilities"] and "get" in paths[base + OPENAPI[10:]]
    assert doc["x-aduib-websocket"]["path"] == base + "/v2/rpc/ws"
    schemas = doc["components"]["schemas"]
    # one request/response schema per registered method; unary ones on /v2/rpc
    unary = paths[base + "/v2/rpc"]["post"]["requestBody"]["content"]["application/json"]
    stream = paths[base + "/v2/rpc/stream"]["post"]["requestBody"]["content"]
    unary_refs = {r["$ref"] for r in unary["schema"]["oneOf"]}
    stream_refs = {r["$ref"] for r in stream["application/json"]["schema"]["oneOf"]}
    assert "#/components/schemas/Echo_stream_Request" in stream_refs - unary_refs
    for name in ("Echo_echo", "Echo_sleep", "Echo_fail", "Echo_crash", "Echo_big",
                 "Echo_context", "Counter_incr", "Admin_secret", "Legacy_old", "Slow_work",
                 "Limited_ping"):
        assert f"#/components/schemas/{name}_Request" in unary_refs
        assert schemas[f"{name}_Response"]["properties"]["status"]["enum"] == [
            "success", "partial"]
    sleep = schemas["Echo_sleep_Request"]["properties"]
    assert sleep["method"]["enum"] == ["rpc.v2/Echo/sleep"]
    assert schemas["SleepIn"]["properties"]["ms"]["minimum"] == 0
    assert {"$ref": "#/components/schemas/SleepIn"} in sleep["data"]["anyOf"]
    assert schemas["Echo_big_Response"]["properties"]["result"] == {
        "$ref": "#/components/schemas/BigOut"}
    # no models: a permissive data, any result
    echo = schemas["Echo_echo_Request"]["properties"]["data"]
    assert {"type": "object", "additionalProperties": True} in echo["anyOf"]
    assert "type" not in schemas["Echo_echo_Response"]["properties"]["result"]
    assert schemas["Echo_stream_Request"]["description"].endswith("(streaming).")
    assert "deprecated" in schemas["Legacy_old_Request"]["description"]


async def test_error_table_and_statuses(prod_client: httpx.AsyncClient) -> None:
    doc = await get_doc(prod_client)
    table = doc["components"]["schemas"]["ErrorCode"]["x-aduib-error-table"]
    assert {(row["code"], row["http_status"]) for row in table} == {
        (s.code, s.http_status) for s in ERROR_TABLE.values()}
    responses = doc["components"]["responses"]
    for spec in ERROR_TABLE.values():
        assert spec.code in responses[f"Error{spec.http_status}"]["x-aduib-error-codes"]
    assert 4011 in responses["Error422"]["x-aduib-error-codes"]  # idempotency key reuse
    assert {1003, 1004} <= set(responses["Error415"]["x-aduib-error-codes"])
    assert "Retry-After" in responses["Error429"]["headers"]
    assert "RateLimit" in responses["Error429"]["headers"]
    assert "Retry-After" in responses["Error503"]["headers"]
    assert "WWW-Authenticate" in responses["Error401"]["headers"]
    rpc = doc["paths"]["/aduib_rpc/v2/rpc"]["post"]
    statuses = {int(s) for s in rpc["responses"] if s != "200"}
    assert {spec.http_status for spec in ERROR_TABLE.values()} | {405, 406, 415, 422} \
        == statuses
    error_code = doc["components"]["schemas"]["RpcErrorModel"]["properties"]["code"]
    assert error_code == {"$ref": "#/components/schemas/ErrorCode"}


async def test_headers_and_streams(prod_client: httpx.AsyncClient) -> None:
    doc = await get_doc(prod_client)
    params = {p["name"]: p for p in doc["components"]["parameters"].values()}
    for name in ("Idempotency-Key", "X-Tenant-ID", "traceparent", "baggage",
                 "Aduib-Rpc-Supported-Versions", "X-Timeout-Ms", "Aduib-Stream-Framing"):
        assert params[name]["in"] == "header"
    rpc = doc["paths"]["/aduib_rpc/v2/rpc"]["post"]
    ok_headers = rpc["responses"]["200"]["headers"]
    assert {"RateLimit", "RateLimit-Policy", "Idempotent-Replayed", "Deprecation",
            "Sunset"} <= set(ok_headers)
    for path in ("/v2/rpc/stream", "/v2/TaskService/Subscribe", "/v2/HealthService/Watch"):
        op = doc["paths"]["/aduib_rpc" + path]["post"]
        ok = op["responses"]["200"]
        assert list(ok["content"]) == ["text/event-stream"]
        assert "**message**" in ok["description"] and "**envelope**" in ok["description"]
        assert "Aduib-Stream-Framing" in ok["headers"]
        event = ok["content"]["text/event-stream"]["schema"]
        assert event["required"] == ["data"] and "id" in event["properties"]
        # an error before the first frame: a plain error, or one SSE event (envelope framing)
        err = op["responses"]["400"]["$ref"].rsplit("/", 1)[1]
        assert "text/event-stream" in doc["components"]["responses"][err]["content"]
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


def custom_dispatcher() -> RpcDispatcher:
    registry = MethodRegistry()
    registry.register("rpc.v2/Math/double", lambda d: {"doubled": d.n * 2},
                      input_model=In, output_model=Out)
    registry.register("rpc.v2/Math/old", lambda d: d, removed_in="2.1")
    return RpcDispatcher(registry, base_path="/api")


async def test_validating_models_and_only_served_routes() -> None:
    dispatcher = custom_dispatcher()

    async def probe(scope: Any, receive: Any, send: Any, ctx: Any) -> None:
        return None

    async with client_for(build_stack(dispatcher, [Layer.of(ErrorMappingMiddleware)])) as c:
        r = await c.get("/api/v2/openapi.json")
        doc = r.json()
        assert r.status_code == 200
        assert not [e.message for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
        schemas = doc["components"]["schemas"]
        assert schemas["Math_double_Request"]["properties"]["data"] == {
            "$ref": "#/components/schemas/In"}  # required fields: data is not optional
        assert schemas["Math_double_Response"]["properties"]["result"] == {
            "$ref": "#/components/schemas/Out"}
        assert "Math_old_Request" in schemas
        # no TaskService, HealthService or probes on this dispatcher
        assert not [p for p in doc["paths"] if "Service" in p or p.endswith(("z", "metrics"))]
        dispatcher.add_route("/extra", probe, methods=("GET",))
        doc = (await c.get("/api/v2/openapi.json")).json()  # rebuilt: the routes changed
        assert doc["paths"]["/api/extra"]["get"]["operationId"] == "route_extra_get"
        r = await c.post("/api/v2/openapi.json", json={})
        assert r.status_code == 405 and r.json()["error"]["code"] == 2000


async def test_probes_in_front_describe_themselves() -> None:
    dispatcher = custom_dispatcher()
    stack = build_stack(dispatcher, [Layer.of(ErrorMappingMiddleware)])
    # found by following .app from the wrapped stack; described under its base path
    app = ProbeMiddleware(stack, base_path="/api")
    async with client_for(app) as c:
        doc = (await c.get("/api/v2/openapi.json")).json()
        assert not [e.message for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
        assert list(doc["paths"]["/api/healthz"]) == ["get"]
        assert doc["paths"]["/api/readyz"]["get"]["operationId"] == "readyz"
        ready = await c.get("/api/readyz")  # no monitor: unknown
        assert ready.status_code == 503
        schema = doc["paths"]["/api/readyz"]["get"]["responses"]["503"]["content"][
            "application/json"]["schema"]
        assert not list(_validator(doc, schema).iter_errors(ready.json()))


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    import jsonschema_rs

    return jsonschema_rs.validator_for({**schema, "components": doc["components"]})


async def test_demo_document_describes_the_probes_and_their_answers_validate() -> None:
    from aduib_asgi.demo import DemoConfig, build_demo_app

    app = build_demo_app(DemoConfig())
    async with client_for(app) as c:
        doc = await get_doc(c)
        paths = doc["paths"]
        healthz = paths["/aduib_rpc/healthz"]["get"]
        readyz = paths["/aduib_rpc/readyz"]["get"]
        assert list(paths["/aduib_rpc/healthz"]) == ["get"]
        assert healthz["security"] == [] and readyz["security"] == []  # no auth
        assert set(healthz["responses"]) == {"200"}
        assert set(readyz["responses"]) == {"200", "503"}

        def check(op: dict[str, Any], r: httpx.Response) -> None:
            answer = op["responses"][str(r.status_code)]
            assert r.headers["cache-control"] in answer["headers"]["Cache-Control"][
                "schema"]["enum"]
            schema = answer["content"][r.headers["content-type"]]["schema"]
            errors = [e.message for e in _validator(doc, schema).iter_errors(r.json())]
            assert not errors, (r.json(), errors)

        check(healthz, await c.get("/aduib_rpc/healthz"))
        before = await c.get("/aduib_rpc/readyz")  # before the first check result
        assert (before.status_code, before.json()) == (503, {"status": "unknown"})
        check(readyz, before)
        await app.monitor.check_once()
        ready = await c.get("/aduib_rpc/readyz")
        assert ready.status_code == 200
        check(readyz, ready)
        app.monitor.stop_ready()  # a graceful shutdown starts
        draining = await c.get("/aduib_rpc/readyz")
        assert draining.status_code == 503 and draining.json()["shutting_down"] is True
        check(readyz, draining)
        wrong = await c.post("/aduib_rpc/healthz")  # not an operation: the table's 405
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == 2000
        assert wrong.headers["allow"] == "GET, HEAD"
        # HealthService answers GET too, with the request as a query string
        for name in ("Check", "Watch"):
            get = paths[f"/aduib_rpc/v2/HealthService/{name}"]["get"]
            assert {"name": "service", "in": "query"}.items() <= next(
                p for p in get["parameters"] if "name" in p).items()
        check_op = paths["/aduib_rpc/v2/HealthService/Check"]["get"]
        r = await c.get("/aduib_rpc/v2/HealthService/Check")
        assert r.status_code == 200
        ok = check_op["responses"]["200"]["content"]["application/json"]["schema"]
        assert not list(_validator(doc, ok).iter_errors(r.json()))
        unknown = await c.get("/aduib_rpc/v2/HealthService/Check", params={"service": "Nope"})
        assert unknown.status_code == 404 and "404" in check_op["responses"]


def test_cli_prints_the_demo_document() -> None:
    out = subprocess.run([sys.executable, "-m", "aduib_asgi.cli", "openapi"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    doc = json.loads(out)
    assert doc["openapi"] == "3.1.0"
    assert "/aduib_rpc/v2/rpc" in doc["paths"]
    assert "Echo_context_Response" in doc["components"]["schemas"]


def validator(doc: dict[str, Any], name: str) -> Any:
    import jsonschema_rs

    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}",
                                        "components": doc["components"]})


async def test_answers_validate_against_the_document(prod_client: httpx.AsyncClient) -> None:
    doc = await get_doc(prod_client)
    rpc = "/aduib_rpc/v2/rpc"
    cases = [
        # a v1 request's integer id is echoed as it was (found by schemathesis)
        ({"aduib_rpc": "1.0", "id": -477, "method": "rpc.v2/Echo/sleep", "data": None},
         "Echo_sleep_Response", 200),
        ({"method": "rpc.v2/Echo/context"}, "Echo_context_Response", 200),
        ({"method": "rpc.v2/Echo/big", "data": {"size": 3}}, "Echo_big_Response", 200),
        ({"method": "rpc.v2/Echo/fail", "data": {"code": 4020}}, "ErrorResponse", 410),
        ({"aduib_rpc": "1.0", "id": 5, "method": "rpc.v2/Echo/fail", "data": {"code": 2003}},
         "ErrorResponse", 400),
    ]
    for body, schema, status in cases:
        r = await prod_client.post(rpc, json=body)
        assert r.status_code == status, r.text
        errors = [e.message for e in validator(doc, schema).iter_errors(r.json())]
        assert not errors, (body, r.json(), errors)
