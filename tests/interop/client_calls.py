"""Drive the real aduib-rpc 2.0.1 REST client against a server; print one JSON outcome.

Run with the interop virtualenv's python (tests/interop/requirements.txt), never the
main one -- this script must not import aduib_asgi:

    .venv-interop/bin/python tests/interop/client_calls.py http://127.0.0.1:8000 echo_with_id

The client is built the way a user builds it:
``AduibRpcClientFactory.create_client(url, server_preferred=TransportSchemes.HTTP)``,
which yields a ``BaseAduibRpcClient`` over ``RestTransport``.

Output: exactly one JSON object on stdout (anything the library prints goes to stderr).
Client-side failures are *recorded* in the object (``exception``, ``http_status``,
``error_code`` read from ``exc.__cause__.response.json()``), and the exit status is 0.
Exit status 2 means the harness itself was misused (bad arguments).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from typing import Any

SCENARIO_TIMEOUT_S = 25.0
FULL_REQUEST_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
FULL_REQUEST_SPAN_ID = "b7ad6b7169203331"
TERMINAL_TASK_STATES = {"succeeded", "failed", "canceled"}


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of pydantic models / enums to plain JSON values."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    enum_value = getattr(value, "value", None)
    if enum_value is not None:
        return enum_value
    return repr(value)


def _describe_response(resp: Any) -> dict[str, Any]:
    """An AduibRpcResponse as the fields a test asserts on."""
    out: dict[str, Any] = {
        "id": resp.id,
        "status": _jsonable(resp.status),
        "result": _jsonable(resp.result),
        "error_code": None,
        "error_name": None,
        "error_message": None,
        "negotiated_version": resp.negotiated_version,
        "trace_context": _jsonable(resp.trace_context),
    }
    if resp.error is not None:
        out["error_code"] = resp.error.code
        out["error_name"] = resp.error.name
        out["error_message"] = resp.error.message
    return out


def _describe_exception(exc: BaseException) -> dict[str, Any]:
    """Record an exception; for ClientHTTPError also the body behind it.

    The 2.0.1 client raises ``ClientHTTPError(status, str(httpx_error))`` for any
    non-2xx answer; the error envelope is only reachable through
    ``exc.__cause__.response.json()`` (wire_contract.md section 4).
    """
    out: dict[str, Any] = {
        "exception": type(exc).__name__,
        "exception_message": str(exc)[:2000],
        "exception_cause": type(exc.__cause__).__name__ if exc.__cause__ is not None else None,
        "http_status": getattr(exc, "status_code", None),
        "error_body": None,
        "error_code": None,
        "error_name": None,
        "error_message": None,
    }
    cause = exc.__cause__
    response = getattr(cause, "response", None) if cause is not None else None
    if response is not None:
        out["http_status_raw"] = response.status_code
        out["response_content_type"] = response.headers.get("content-type")
        try:
            body = response.json()
        except Exception as body_exc:  # not JSON (or not read)
            out["error_body_unreadable"] = f"{type(body_exc).__name__}: {body_exc}"[:500]
        else:
            out["error_body"] = body
            err = body.get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                out["error_code"] = err.get("code")
                out["error_name"] = err.get("name")
                out["error_message"] = err.get("message")
    return out


async def _unary(client: Any, request: Any) -> dict[str, Any]:
    """call(); the RPC error code surfaces either in the envelope (2xx) or via the exception."""
    try:
        resp = await client.call(request)
    except Exception as exc:
        out = _describe_exception(exc)
        out["outcome"] = "exception"
        out["error_via"] = "http_error" if out["error_code"] is not None else None
        return out
    out = _describe_response(resp)
    out["outcome"] = "response"
    out["error_via"] = "envelope" if out["error_code"] is not None else None
    return out


async def _stream(client: Any, request: Any) -> dict[str, Any]:
    """call_server_stream(); collect every item until the server closes the body."""
    items: list[dict[str, Any]] = []
    out: dict[str, Any] = {"outcome": "completed", "items": items}
    try:
        async for resp in client.call_server_stream(request):
            items.append(_describe_response(resp))
    except Exception as exc:
        out.update(_describe_exception(exc))
        out["outcome"] = "exception"
    out["count"] = len(items)
    return out


def _rpc_request(method: str, data: dict[str, Any] | None, request_id: str | None) -> Any:
    from aduib_rpc.types import AduibRpcRequest

    kwargs: dict[str, Any] = {"method": method, "data": data}
    if request_id is not None:
        kwargs["id"] = request_id
    return AduibRpcRequest(**kwargs)


async def scenario_echo_with_id(client: Any) -> dict[str, Any]:
    request = _rpc_request("rpc.v2/Echo/echo", {"msg": "hi", "n": 1}, "req-echo-1")
    return await _unary(client, request)


async def scenario_echo_without_id(client: Any) -> dict[str, Any]:
    # The 2.0.1 client omits "id" unless set (exclude_none drops it).
    request = _rpc_request("rpc.v2/Echo/echo", {"msg": "hi", "n": 2}, None)
    out = await _unary(client, request)
    out["request_body"] = request.model_dump(mode="json", exclude_none=True)
    return out


def _full_request(request_id: str, method: str, data: dict[str, Any]) -> Any:
    """Every optional member the 2.0.1 client can send (wire_contract.md section 3)."""
    from aduib_rpc.protocol.v2.metadata import RequestMetadata
    from aduib_rpc.protocol.v2.qos import Priority, QosConfig
    from aduib_rpc.protocol.v2.types import TraceContext
    from aduib_rpc.types import AduibRpcRequest

    return AduibRpcRequest(
        id=request_id,
        method=method,
        name="Echo",
        data=data,
        supported_versions=["2.0"],
        trace_context=TraceContext(
            trace_id=FULL_REQUEST_TRACE_ID, span_id=FULL_REQUEST_SPAN_ID, sampled=True
        ),
        metadata=RequestMetadata.create(tenant_id="t1", client_id="c1"),
        qos=QosConfig(enabled=False, priority=Priority.HIGH, timeout_ms=3000),
        # meta["headers"] are sent as HTTP headers by the 2.0.1 client.
        meta={"headers": {"X-Tenant-Id": "t1"}, "timeout_ms": 3000},
    )


async def scenario_echo_full_request(client: Any) -> dict[str, Any]:
    request = _full_request("req-full-1", "rpc.v2/Echo/echo", {"msg": "hi"})
    out = await _unary(client, request)
    out["request_body"] = request.model_dump(mode="json", exclude_none=True)
    return out


async def scenario_context_full_request(client: Any) -> dict[str, Any]:
    request = _full_request("req-full-2", "rpc.v2/Echo/context", {})
    out = await _unary(client, request)
    out["request_body"] = request.model_dump(mode="json", exclude_none=True)
    return out


async def scenario_error_call(client: Any) -> dict[str, Any]:
    request = _rpc_request("rpc.v2/Echo/fail", {"code": 4001, "message": "nope"}, None)
    return await _unary(client, request)


async def scenario_stream(client: Any) -> dict[str, Any]:
    request = _rpc_request("rpc.v2/Echo/stream", {"count": 3, "interval_ms": 10}, "req-stream-1")
    return await _stream(client, request)


async def scenario_stream_header_envelope(client: Any) -> dict[str, Any]:
    """Ask for envelope framing per request; meta["headers"] become HTTP headers in 2.0.1."""
    from aduib_rpc.types import AduibRpcRequest

    request = AduibRpcRequest(
        id="req-stream-4",
        method="rpc.v2/Echo/stream",
        data={"count": 3, "interval_ms": 10},
        meta={"headers": {"Aduib-Stream-Framing": "envelope"}},
    )
    return await _stream(client, request)


async def scenario_stream_fail(client: Any) -> dict[str, Any]:
    request = _rpc_request(
        "rpc.v2/Echo/stream", {"count": 5, "interval_ms": 10, "fail_at": 2}, "req-stream-2"
    )
    return await _stream(client, request)


async def scenario_stream_unknown_method(client: Any) -> dict[str, Any]:
    request = _rpc_request("rpc.v2/Echo/does_not_exist", {"x": 1}, "req-stream-3")
    return await _stream(client, request)


async def scenario_health_check(client: Any) -> dict[str, Any]:
    from aduib_rpc.protocol.v2.health import HealthCheckRequest

    out: dict[str, Any] = {}
    for key, request in (
        ("overall", HealthCheckRequest()),
        ("service", HealthCheckRequest(service="Echo")),
    ):
        try:
            resp = await client.health_check(request)
        except Exception as exc:
            out[key] = {"outcome": "exception", **_describe_exception(exc)}
        else:
            out[key] = {
                "outcome": "response",
                "status": _jsonable(resp.status),
                "services": _jsonable(resp.services),
            }
    out["outcome"] = (
        "response"
        if all(out[k]["outcome"] == "response" for k in ("overall", "service"))
        else "exception"
    )
    return out


async def scenario_task_submit_query(client: Any) -> dict[str, Any]:
    from aduib_rpc.server.tasks import TaskQueryRequest, TaskSubmitRequest

    # priority left at the client's default, the tuple (Priority.NORMAL,) -> "priority": [1]
    submit_request = TaskSubmitRequest(target_method="rpc.v2/Echo/sleep", params={"ms": 50})
    out: dict[str, Any] = {"submit_body": _jsonable(submit_request.model_dump(exclude_none=True))}
    try:
        submitted = await client.task_submit(submit_request)
    except Exception as exc:
        out.update(_describe_exception(exc))
        out["outcome"] = "exception"
        out["stage"] = "submit"
        return out
    out["submit"] = _jsonable(submitted)

    queries: list[dict[str, Any]] = []
    out["queries"] = queries
    deadline = time.monotonic() + 10.0
    while True:
        try:
            queried = await client.task_query(TaskQueryRequest(task_id=submitted.task_id))
        except Exception as exc:
            out.update(_describe_exception(exc))
            out["outcome"] = "exception"
            out["stage"] = "query"
            return out
        record = _jsonable(queried.task)
        queries.append(record)
        if record.get("status") in TERMINAL_TASK_STATES or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    out["final"] = queries[-1]
    out["outcome"] = "response"
    return out


SCENARIOS = {
    "echo_with_id": scenario_echo_with_id,
    "echo_without_id": scenario_echo_without_id,
    "echo_full_request": scenario_echo_full_request,
    "context_full_request": scenario_context_full_request,
    "error_call": scenario_error_call,
    "stream": scenario_stream,
    "stream_header_envelope": scenario_stream_header_envelope,
    "stream_fail": scenario_stream_fail,
    "stream_unknown_method": scenario_stream_unknown_method,
    "health_check": scenario_health_check,
    "task_submit_query": scenario_task_submit_query,
}


async def _run(base_url: str, scenario: str) -> dict[str, Any]:
    from aduib_rpc.client.client_factory import AduibRpcClientFactory
    from aduib_rpc.client.pool import default_httpx_pool
    from aduib_rpc.utils.constant import TransportSchemes

    client = AduibRpcClientFactory.create_client(base_url, server_preferred=TransportSchemes.HTTP)
    try:
        return await asyncio.wait_for(SCENARIOS[scenario](client), SCENARIO_TIMEOUT_S)
    finally:
        await client.close()
        await default_httpx_pool().aclose_all()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in SCENARIOS:
        print(
            f"usage: {argv[0]} BASE_URL SCENARIO\nscenarios: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    base_url, scenario = argv[1], argv[2]

    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # keep stdout for the single JSON object
    started = time.monotonic()
    try:
        from importlib.metadata import version

        outcome = asyncio.run(_run(base_url, scenario))
        outcome["client_version"] = version("aduib-rpc")
    except Exception as exc:  # harness-level failure (import error, timeout, ...)
        outcome = {
            "outcome": "harness_error",
            "exception": type(exc).__name__,
            "exception_message": str(exc)[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    finally:
        sys.stdout = real_stdout
    outcome["scenario"] = scenario
    outcome["elapsed_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(outcome, default=repr, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
