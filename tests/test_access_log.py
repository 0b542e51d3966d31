"""The access log: one line per call, escaped values, no secrets; request ids on records."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.logsafe import escape
from aduib_asgi.observability.access import AccessLogMiddleware
from aduib_asgi.observability.logs import JsonFormatter, RequestContextFilter
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio


@pytest.fixture
def access_records() -> Any:
    """The access log's records (the logger at INFO for the test)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("aduib_asgi.access")
    handler = Keep()
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(old)


def test_escape_removes_every_control_character() -> None:
    assert escape("plain id-1") == "plain id-1"
    assert escape("a\r\nb\x1b[2J\x00\x7f\x85\u2028") == "a\\x0d\\x0ab\\x1b[2J\\x00\\x7f\\x85\\u2028"
    assert escape("back\\slash") == "back\\\\slash"
    assert escape("x" * 600).endswith("...") and len(escape("x" * 600)) == 515


async def test_one_line_per_call_with_every_field(access_records: list[Any]) -> None:
    app = build_demo_app(DemoConfig())
    async with client_for(app) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/Echo/fail", {"code": 3011}, id="r\n1"),
                         headers={"Authorization": "Bearer demo-admin-token",
                                  "X-Tenant-ID": "acme"})
        ok = await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {"k": 1}))
    assert (r.status_code, ok.status_code) == (403, 200)
    assert len(access_records) == 2
    fail, good = (rec.access for rec in access_records)
    assert fail["method"] == "rpc.v2/Echo/fail" and fail["status"] == 403
    assert fail["code"] == 3011 and fail["tenant"] == "acme" and fail["principal"] == "admin"
    assert fail["request_id"] == "r\\x0a1" and len(fail["trace_id"]) == 32
    assert fail["http"] == "POST /aduib_rpc/v2/rpc" and fail["duration_ms"] >= 0
    assert good["code"] is None and good["principal"] is None and good["tenant"] == "default"
    text = access_records[0].getMessage()
    assert "\n" not in text and "status=403 code=3011" in text
    assert "demo-admin-token" not in text
    assert "method=rpc.v2/Echo/fail" in text and 'http="POST /aduib_rpc/v2/rpc"' in text


async def test_a_hostile_path_is_escaped_and_exceptions_are_logged(
        access_records: list[Any]) -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret text")

    app = AccessLogMiddleware(boom)
    scope = {"type": "http", "method": "GET", "path": "/x\r\ny", "headers": [],
             "query_string": b"token=abc", "client": ("10.0.0.1", 5)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    with pytest.raises(RuntimeError):
        await app(scope, receive, send)
    line = access_records[0].getMessage()
    assert 'http="GET /x\\x0d\\x0ay"' in line and "status=500 code=5000" in line
    assert "token=abc" not in line and "secret text" not in line and "\n" not in line


async def test_json_rendering(access_records: list[Any]) -> None:
    app = AccessLogMiddleware(build_demo_app(DemoConfig()), json_format=True)
    async with client_for(app) as c:
        await c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}, id="j-1"),
                     headers={"X-API-Key": "demo-key"})
    record = access_records[-1]
    assert record.getMessage() == "access"
    RequestContextFilter().filter(record)  # outside the request now: ids come from `access`
    out = json.loads(JsonFormatter().format(record))
    assert out["access"]["request_id"] == "j-1" and out["access"]["principal"] == "svc"
    assert out["logger"] == "aduib_asgi.access"


async def test_a_log_line_inside_a_request_carries_its_ids() -> None:
    """The filter the demo installs: a handler's own log line gets the request's ids."""
    from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
    from aduib_asgi.middleware.trace import TracePropagationMiddleware

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.handler")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    registry = MethodRegistry()

    @registry.method("rpc.v2/Log/it")
    async def it(data: Any) -> Any:
        log.info("inside")
        return None

    try:
        async with client_for(TracePropagationMiddleware(RpcDispatcher(registry))) as c:
            await c.post(RPC, json=envelope("rpc.v2/Log/it", {}, id="id\x1b"))
    finally:
        log.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert record["request_id"] == "id\\x1b" and record["method"] == "rpc.v2/Log/it"
    assert len(record["trace_id"]) == 32
