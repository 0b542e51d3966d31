"""Every row of the error table through the real stack, plus range fallback."""

from __future__ import annotations

import uuid

import httpx
import pytest

from aduib_asgi.errors import ERROR_TABLE, RpcError, error_spec, http_status_for
from tests.conftest import RPC, envelope

pytestmark = pytest.mark.anyio

# The HTTP status of each row, restated from PROTOCOL.md section 3.
EXPECTED_HTTP = {
    1000: 400, 1001: 400, 1002: 400, 1003: 400, 1004: 400,
    2000: 400, 2001: 400, 2002: 400, 2003: 400, 2004: 413,
    3000: 401, 3001: 401, 3002: 401, 3010: 403, 3011: 403, 3012: 403,
    4000: 404, 4001: 404, 4002: 404, 4010: 409, 4011: 409, 4020: 410,
    5000: 500, 5001: 501, 5002: 503, 5003: 504, 5010: 503, 5020: 429, 5021: 429,
    6000: 502, 6001: 504, 6002: 503,
}


def test_table_matches_the_spec() -> None:
    assert set(ERROR_TABLE) == set(EXPECTED_HTTP)
    for code, status in EXPECTED_HTTP.items():
        assert ERROR_TABLE[code].http_status == status
    retryable = {c for c, s in ERROR_TABLE.items() if s.retryable}
    assert retryable == {5002, 5003, 5010, 5020, 5021, 6000, 6001, 6002}


@pytest.mark.parametrize("code", sorted(EXPECTED_HTTP))
async def test_every_row_through_the_stack(demo_client: httpx.AsyncClient, code: int) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/fail",
                                                  {"code": code, "message": f"m{code}"},
                                                  id=f"req-{code}"))
    assert r.status_code == EXPECTED_HTTP[code]
    body = r.json()
    assert body["aduib_rpc"] == "2.0"
    assert body["id"] == f"req-{code}"
    assert body["status"] == "error"
    assert "result" not in body
    assert body["error"]["code"] == code
    assert body["error"]["name"] == ERROR_TABLE[code].name
    assert body["error"]["message"] == f"m{code}"
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("code", "status", "name"),
    [
        (1234, 400, "BAD_REQUEST"),
        (2999, 400, "BAD_REQUEST"),
        (3005, 401, "UNAUTHENTICATED"),
        (3500, 403, "UNAUTHORIZED"),
        (4999, 404, "NOT_FOUND"),
        (5555, 500, "INTERNAL_ERROR"),
        (6999, 502, "DEPENDENCY_ERROR"),
        (42, 500, "INTERNAL_ERROR"),
    ],
)
async def test_range_fallback(
    demo_client: httpx.AsyncClient, code: int, status: int, name: str
) -> None:
    assert http_status_for(code) == status
    assert error_spec(code).name == name
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/fail", {"code": code}))
    assert r.status_code == status
    body = r.json()
    assert body["error"]["code"] == code
    assert body["error"]["name"] == name
    uuid.UUID(body["id"])


def test_rpc_error_carries_details_and_headers() -> None:
    err = RpcError(5020, details=[{"type": "quota", "reason": "x"}], headers={"Retry-After": "3"})
    assert err.http_status == 429
    assert err.retryable
    assert err.to_dict() == {"code": 5020, "name": "RATE_LIMITED", "message": "Rate limited",
                             "details": [{"type": "quota", "reason": "x"}]}
    assert err.headers == {"Retry-After": "3"}
    assert RpcError(1003, http_status=415).http_status == 415


@pytest.mark.parametrize(("code", "header"), [
    (5010, "retry-after"), (5020, "retry-after"), (5021, "retry-after"), (5002, "retry-after"),
    (3000, "www-authenticate"), (3001, "www-authenticate"), (3002, "www-authenticate"),
])
async def test_errors_a_handler_raises_carry_the_statuses_headers(
        demo_client: httpx.AsyncClient, code: int, header: str) -> None:
    """429/503 answers say when to retry, 401 answers how to authenticate (RFC 9110)."""
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/fail", {"code": code}))
    assert r.json()["error"]["code"] == code
    assert header in r.headers, dict(r.headers)
