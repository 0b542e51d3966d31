"""No credential ever shows up in a response or a log line (issue 14 item 5).

The demo runs with sentinel credentials (``ADUIB_DEMO_ADMIN_TOKEN``,
``ADUIB_DEMO_USER_TOKEN``, ``ADUIB_DEMO_API_KEY``), in both envs, at its most
verbose log level (``trace``: every other level logs a subset of it) and at the
default one. Every endpoint and error path is called with valid, invalid and
malformed credentials; no sentinel may appear in any status line, header or
body, nor anywhere in the process's output.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.demo_process import running_demo

ADMIN = "SENTINEL-adm-9f1c2e7d"
USER = "SENTINEL-usr-4b7d0a13"
KEY = "SENTINEL-key-71e3aa55"
BAD = "SENTINEL-bad-5c2f8802"
MARK = "SENTINEL-"
ENV = {"ADUIB_DEMO_ADMIN_TOKEN": ADMIN, "ADUIB_DEMO_USER_TOKEN": USER,
       "ADUIB_DEMO_API_KEY": KEY}

CREDENTIALS: list[dict[str, str]] = [
    {"authorization": f"Bearer {ADMIN}"},
    {"authorization": f"Bearer {USER}"},
    {"x-api-key": KEY},
    {"authorization": f"Bearer {BAD}"},                 # 3001 invalid token
    {"x-api-key": BAD},                                 # invalid key
    {"authorization": f"Basic {BAD}"},                  # unsupported scheme
    {"authorization": f"Bearer {BAD} {BAD}"},           # malformed
    {"authorization": f"Bearer {ADMIN}", "x-api-key": BAD},
    {"authorization": f"Bearer {BAD}" + "x" * 9000},    # oversized
]


def rpc(method: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "method": method, **extra}
    if data is not None:
        body["data"] = data
    return body


def calls() -> list[tuple[str, str, Any]]:
    """(method, path, json body or raw bytes) of every endpoint and error path."""
    r = "/aduib_rpc/v2/rpc"
    ts, hs = "/aduib_rpc/v2/TaskService/", "/aduib_rpc/v2/HealthService/"
    return [
        ("POST", r, rpc("rpc.v2/Echo/echo", {"a": 1})),
        ("POST", r, rpc("rpc.v2/Echo/context")),
        ("POST", r, rpc("rpc.v2/Echo/fail", {"code": 3001})),
        ("POST", r, rpc("rpc.v2/Echo/fail", {"code": 5000, "message": "m"})),
        ("POST", r, rpc("rpc.v2/Echo/crash")),
        ("POST", r, rpc("rpc.v2/Admin/secret")),
        ("POST", r, rpc("rpc.v2/Limited/ping")),
        ("POST", r, rpc("rpc.v2/Legacy/old")),
        ("POST", r, rpc("rpc.v2/Counter/incr")),
        ("POST", r, rpc("rpc.v2/No/such")),
        ("POST", r, rpc("rpc.v2/Echo/sleep", {"ms": 50}, qos={"timeout_ms": 1})),
        ("POST", r, b"{not json"),
        ("POST", r, b'{"aduib_rpc": "9.9", "method": 1}'),
        ("GET", r, None),
        ("POST", r + "/stream", rpc("rpc.v2/Echo/stream", {"count": 2})),
        ("POST", r + "/stream", rpc("rpc.v2/Echo/stream", {"count": 3, "fail_at": 1})),
        ("POST", r + "/stream", rpc("rpc.v2/Admin/secret")),
        ("POST", r + "/cancel", {"id": "nope", "reason": "x"}),
        ("POST", "/aduib_rpc/v1/rpc", {"id": "1", "method": "rpc.v2/Echo/echo", "data": {}}),
        ("GET", "/aduib_rpc/v2/capabilities", None),
        ("POST", ts + "Submit", {"target_method": "rpc.v2/Echo/echo", "params": {}}),
        ("POST", ts + "Submit", {"target_method": "rpc.v2/Admin/secret"}),
        ("POST", ts + "Query", {"task_id": "nope"}),
        ("POST", ts + "Cancel", {"task_id": "nope"}),
        ("POST", ts + "Subscribe", {"task_id": "nope"}),
        ("POST", hs + "Check", {}),
        ("GET", "/aduib_rpc/metrics", None),
        ("GET", "/nowhere", None),
    ]


def exercise(url: str) -> list[str]:
    """Every call with every credential set; the full text of each response."""
    seen: list[str] = []
    with httpx.Client(base_url=url, timeout=20) as c:
        for headers in [{}, *CREDENTIALS]:
            for method, path, body in calls():
                kwargs: dict[str, Any] = {"headers": {**headers, "x-tenant-id": "acme"}}
                if isinstance(body, bytes):
                    kwargs["content"] = body
                    kwargs["headers"]["content-type"] = "application/json"
                elif body is not None:
                    kwargs["json"] = body
                resp = c.request(method, path, **kwargs)
                seen.append(f"{resp.status_code} {resp.headers!r} {resp.text}")
            with c.stream("POST", "/aduib_rpc/v2/HealthService/Watch", json={},
                          headers=headers) as resp:
                seen.append(f"{resp.status_code} {resp.headers!r} {next(resp.iter_text())}")
    ws_url = url.replace("http://", "ws://") + "/aduib_rpc/v2/rpc/ws"
    for headers in CREDENTIALS[:5]:
        try:
            with connect(ws_url, additional_headers=headers, open_timeout=10) as ws:
                ws.send(json.dumps(rpc("rpc.v2/Echo/stream", {"count": 2})))
                while True:
                    msg = ws.recv(timeout=10)
                    seen.append(str(msg))
                    if '"type":"end"' in str(msg):
                        break
        except Exception as exc:  # a refused handshake: its text is checked too
            seen.append(repr(exc))
    return seen


@pytest.mark.parametrize(("env", "level"), [("dev", "trace"), ("prod", "trace"),
                                            ("prod", "warning")])
def test_no_sentinel_in_any_response_or_log_line(env: str, level: str) -> None:
    with running_demo("--env", env, "--log-level", level, env=ENV) as demo:
        # the sentinels are the credentials in force
        ok = httpx.post(demo.url + "/aduib_rpc/v2/rpc", json=rpc("rpc.v2/Admin/secret"),
                        headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["result"] == {"secret": "ok"}
        old = httpx.post(demo.url + "/aduib_rpc/v2/rpc", json=rpc("rpc.v2/Admin/secret"),
                         headers={"authorization": "Bearer demo-admin-token"}, timeout=10)
        assert old.status_code == 401
        responses = exercise(demo.url)
        demo.stop()
        output = demo.output
    assert len(responses) > 250
    leaks = [r[:300] for r in responses if MARK in r]
    assert not leaks, leaks[:3]
    assert MARK not in output, [line for line in output.splitlines() if MARK in line][:5]
    if level == "trace":  # the verbose log really ran, and dumped the handshake headers
        assert "authorization: <redacted>" in output


def test_credential_header_filter_redacts_only_credential_headers() -> None:
    import logging

    from aduib_asgi.observability.logs import CredentialHeaderFilter

    f = CredentialHeaderFilter()

    def rec(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)

    for name in ("Authorization", "x-api-key", "Cookie", "proxy-authorization"):
        r = rec("< %s: %s", name, BAD)
        assert f.filter(r) and r.getMessage() == f"< {name}: <redacted>"
    kept = rec("< %s: %s", "user-agent", "curl/8")
    assert f.filter(kept) and kept.getMessage() == "< user-agent: curl/8"
    other = rec("%s: %s", "note", "x")
    assert f.filter(other) and other.getMessage() == "note: x"


def _forwarded_certificates() -> tuple[list[dict[str, str]], list[str]]:
    """Header sets carrying client certificates - sentinels (unreadable) and one real
    certificate in each format - and the strings none of them may leave in a log."""
    import base64
    import ssl
    from urllib.parse import quote

    import trustme

    from aduib_asgi.auth.forwarded_cert import CLIENT_CERT_HEADERS

    pem = trustme.CA().issue_cert("client.example.org").cert_chain_pems[0].bytes().decode()
    der = base64.b64encode(ssl.PEM_cert_to_DER_cert(pem)).decode()
    sets = [{name: f"{MARK}crt-{name}"} for name in sorted(CLIENT_CERT_HEADERS)]
    sets += [{"client-cert": f":{der}:", "client-cert-chain": f":{der}:"},
             {"x-forwarded-client-cert": f'By=spiffe://p;Cert="{quote(pem)}"'},
             {"ssl-client-cert": quote(pem), "x-ssl-client-cert": pem.strip().replace("\n", " ")}]
    return sets, [der[40:80], quote(pem)[60:100]]


@pytest.mark.parametrize("ws", ["auto", "websockets"])
def test_no_forwarded_client_certificate_in_any_log_line(ws: str) -> None:
    """Every header a proxy may carry a client certificate in - those the trusted-proxy
    code reads, and the common ones it does not - is redacted from the handshake
    dump and appears nowhere in the output, over HTTP and WebSocket, at ``trace``
    (uvicorn's default WebSocket implementation and the legacy one both dump)."""
    sets, fragments = _forwarded_certificates()
    with running_demo("--log-level", "trace", "--trusted-proxy", "127.0.0.1/32", "--ws", ws,
                      env=ENV) as demo:
        ws_url = demo.url.replace("http://", "ws://") + "/aduib_rpc/v2/rpc/ws"
        with httpx.Client(base_url=demo.url, timeout=20) as c:
            for headers in sets:
                r = c.post("/aduib_rpc/v2/rpc", json=rpc("rpc.v2/Echo/context"),
                           headers=headers)
                assert r.status_code in (200, 401), r.text
                with connect(ws_url, additional_headers=headers, open_timeout=10) as ws:
                    ws.send(json.dumps(rpc("rpc.v2/Echo/stream", {"count": 1})))
                    while '"type":"end"' not in str(ws.recv(timeout=10)):
                        pass
        demo.stop()
        output = demo.output
    assert MARK not in output, [line for line in output.splitlines() if MARK in line][:5]
    for fragment in fragments:
        assert fragment not in output
    for name in ("client-cert", "x-forwarded-client-cert", "x-ssl-client-cert"):
        assert f"{name}: <redacted>" in output.lower()  # the dump ran, redacted


def test_every_header_the_proxy_code_reads_is_secret() -> None:
    """Derived, not copied: a certificate header added where they are read is redacted."""
    from aduib_asgi.auth.forwarded_cert import CLIENT_CERT_HEADERS, FORWARDED_CERT_HEADERS
    from aduib_asgi.observability.logs import SECRET_HEADERS

    assert {h.decode() for h in FORWARDED_CERT_HEADERS} <= CLIENT_CERT_HEADERS <= SECRET_HEADERS
    assert {"ssl-client-cert", "x-ssl-client-cert"} <= SECRET_HEADERS
