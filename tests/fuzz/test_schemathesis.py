"""schemathesis drives a real demo process from its own OpenAPI document.

Every operation of ``GET /aduib_rpc/v2/openapi.json`` gets generated requests
(JSON and msgpack bodies, documented headers); each response must conform to
the document (status, content type, headers, body schema — and, for unary
calls, the result schema of the method that was called), and no response is a
5xx except the intended ones: ``Echo/crash`` and ``Echo/fail`` (and the circuit
breaker that their failures open), 5003 for the deadline every generated call
carries, 503 from ``readyz`` before its first check. Bounded here;
``make fuzz`` (``ADUIB_FUZZ=long``) runs many more examples.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.demo_process import DemoProcess, running_demo

LONG = os.environ.get("ADUIB_FUZZ") == "long"
EXAMPLES = 300 if LONG else 20
#: Every generated call carries a deadline: Echo/sleep and Echo/stream end in time.
DEADLINE_MS = 400
OPENAPI = "/aduib_rpc/v2/openapi.json"
INTENDED = ("rpc.v2/Echo/crash", "rpc.v2/Echo/fail")


@schemathesis.serializer("application/msgpack")
def _msgpack_body(ctx: schemathesis.SerializationContext, value: Any) -> dict[str, Any]:
    return {"data": msgpack.packb(_fit(value), use_bin_type=True)}


def _fit(value: Any) -> Any:
    """msgpack carries 64-bit integers only: larger ones are sent as (large) floats."""
    if isinstance(value, int) and not isinstance(value, bool) and not (
            -(2**63) <= value < 2**64):
        return 1e300 if value > 0 else -1e300
    if isinstance(value, dict):
        return {k: _fit(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit(v) for v in value]
    return value


@schemathesis.deserializer("application/msgpack")
def _msgpack_response(ctx: schemathesis.DeserializationContext, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False)


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    # a short heartbeat: Watch/Subscribe streams send frames while the deadline runs
    with running_demo("--heartbeat", "0.1") as proc:
        yield proc


@pytest.fixture(scope="module")
def demo_schema(demo: DemoProcess) -> Any:
    return schemathesis.openapi.from_url(demo.url + OPENAPI)


@pytest.fixture(scope="module")
def result_validators(demo_schema: Any) -> dict[str, Any]:
    """Method name -> validator of its ``*_Response`` schema (the per-method check)."""
    raw = demo_schema.raw_schema
    out: dict[str, Any] = {}
    for name, schema in raw["components"]["schemas"].items():
        if name.endswith("_Request") and "method" in schema.get("properties", {}):
            method = schema["properties"]["method"]["enum"][0]
            ref = "#/components/schemas/" + name[: -len("_Request")] + "_Response"
            out[method] = jsonschema_rs.validator_for(
                {"$ref": ref, "components": raw["components"]})
    return out


def _operations() -> list[tuple[str, str]]:
    """(path, method) of every documented operation (the demo's document, in-process)."""
    from aduib_asgi.cli import _get
    from aduib_asgi.demo import build_demo_app

    status, body = asyncio.run(_get(build_demo_app(), OPENAPI))
    assert status == 200
    paths = json.loads(body)["paths"]
    return [(path, verb) for path, item in paths.items() for verb in item]


def _method_of(case: Any) -> str | None:
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("method"), str):
        return str(body["method"])
    return None


def _allowed_5xx(case: Any, status: int, body: Any) -> bool:
    path = case.operation.path
    if path.endswith("/readyz") and status == 503:
        return True
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    if code == 5003:  # the deadline the call asked for
        return True
    method = _method_of(case)
    # its own error, or 5010 once its failures opened the breaker
    return path.endswith(("/v2/rpc", "/v2/rpc/stream", "/v1/rpc")) and method in INTENDED


def _decoded(response: Any) -> Any:
    ctype = response.headers.get("content-type", [""])[0]
    if ctype.startswith("application/json"):
        return json.loads(response.content)
    if ctype.startswith("application/msgpack"):
        return msgpack.unpackb(response.content, raw=False)
    if ctype.startswith("text/event-stream") and response.status_code >= 400:
        # an error before the first frame, in envelope framing: one error-envelope event
        for line in response.content.splitlines():
            if line.startswith(b"data:"):
                return json.loads(line[5:])
    return None


@pytest.mark.parametrize(("path", "verb"), _operations())
def test_demo_conforms_to_its_openapi(demo_schema: Any, result_validators: dict[str, Any],
                                      path: str, verb: str) -> None:
    operation = demo_schema[path][verb.upper()]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], derandomize=not LONG, database=None)
    def run(case: Any) -> None:
        check_case(case, result_validators)

    run()


def check_case(case: Any, result_validators: dict[str, Any]) -> None:
    headers = dict(case.headers or {})
    # The deadline bounds Echo/sleep, Slow/work and streams; a smaller generated one stays.
    try:
        timeout = min(int(headers.get("X-Timeout-Ms", DEADLINE_MS)), DEADLINE_MS)
    except ValueError:
        timeout = DEADLINE_MS
    headers["X-Timeout-Ms"] = str(max(timeout, 1))
    case.headers = headers
    response = case.call(timeout=30)
    case.validate_response(response, checks=[
        status_code_conformance, content_type_conformance, response_headers_conformance,
        response_schema_conformance])
    body = _decoded(response)
    if response.status_code >= 500:
        assert _allowed_5xx(case, response.status_code, body), (
            f"unexpected {response.status_code} for {case.operation.label}: "
            f"{response.content[:500]!r}")
    method = _method_of(case)
    if (response.status_code == 200 and case.operation.path.endswith("/v2/rpc")
            and method in result_validators and isinstance(body, dict)):
        errors = [e.message for e in result_validators[method].iter_errors(body)]
        assert not errors, f"{method} answered {body!r}: {errors}"
