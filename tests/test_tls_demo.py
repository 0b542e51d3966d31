"""HTTPS/mTLS against real `aduib-asgi demo` processes: real handshakes, every parser and
WebSocket implementation uvicorn offers, on asyncio and uvloop (OPERATIONS.md §3)."""

from __future__ import annotations

import json
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aduib_asgi.auth import certificate_facts
from tests.demo_process import running_demo
from tests.tls_pki import CLIENT_ID, Pki, make_pki

RPC = "/aduib_rpc/v2/rpc"
WS = "/aduib_rpc/v2/rpc/ws"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def envelope(method: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    return {"aduib_rpc": "2.0", "id": "t", "method": method, "data": data, **extra}


def ws_call(url: str, ctx: ssl.SSLContext, body: dict[str, Any]) -> list[dict[str, Any]]:
    from websockets.sync.client import connect

    frames: list[dict[str, Any]] = []
    with connect(url, ssl=ctx, open_timeout=20, close_timeout=5) as ws:
        ws.send(json.dumps(body))
        while True:
            frame = json.loads(ws.recv(timeout=20))
            frames.append(frame)
            if frame["type"] in ("end", "error"):
                return frames


@pytest.mark.parametrize(("http", "loop", "ws"), [
    ("h11", "asyncio", "wsproto"),
    ("httptools", "uvloop", "websockets"),
    ("h11", "uvloop", "websockets-sansio"),
    ("httptools", "asyncio", "wsproto"),
])
def test_san_uri_principal_reaches_echo_context_over_http_and_websocket(
        pki: Pki, http: str, loop: str, ws: str) -> None:
    args = [*pki.demo_args(), "--http", http, "--loop", loop, "--ws", ws]
    with running_demo(*args) as demo:
        assert demo.url.startswith("https://")
        ctx = pki.client_context("client")
        with httpx.Client(base_url=demo.url, verify=ctx, timeout=20) as c:
            # two requests on one keep-alive connection: each gets the extension
            first = c.post(RPC, json=envelope("rpc.v2/Echo/context"))
            second = c.post(RPC, json=envelope("rpc.v2/Echo/context"))
        frames = ws_call(demo.url.replace("https://", "wss://") + WS, ctx,
                         envelope("rpc.v2/Echo/context"))
    for r in (first, second):
        assert r.status_code == 200, r.text
        assert r.json()["result"]["principal"] == CLIENT_ID
    data = [f for f in frames if f["type"] == "data"]
    assert data and data[0]["payload"]["data"]["principal"] == CLIENT_ID, frames


def _refused(pki: Pki, url: str, name: str | None) -> bool:
    try:
        with httpx.Client(verify=pki.client_context(name), timeout=20) as c:
            c.post(url + RPC, json=envelope("rpc.v2/Echo/echo", {}))
    except httpx.TransportError:
        return True
    return False


def _half_handshake(url: str) -> None:
    """A TCP peer that starts a TLS handshake with garbage and leaves."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x10not a client hello")


def test_required_client_certificates_refused_at_the_handshake_trusted_served(
        pki: Pki) -> None:
    with running_demo(*pki.demo_args(require=True), "--http", "httptools") as demo:
        for _ in range(3):
            assert _refused(pki, demo.url, None)  # no certificate
            assert _refused(pki, demo.url, "rogue")  # same SPIFFE ID, another CA
            _half_handshake(demo.url)
        with ThreadPoolExecutor(8) as pool:  # a burst of refused handshakes at once
            burst = list(pool.map(lambda n: _refused(pki, demo.url, n), ["rogue", None] * 8))
        assert all(burst)
        with httpx.Client(base_url=demo.url, verify=pki.client_context("admin"),
                          timeout=20) as c:
            admin = c.post(RPC, json=envelope("rpc.v2/Admin/secret"))
        with httpx.Client(base_url=demo.url, verify=pki.client_context("client"),
                          timeout=20) as c:
            ctx_r = c.post(RPC, json=envelope("rpc.v2/Echo/context"))
            denied = c.post(RPC, json=envelope("rpc.v2/Admin/secret"))
        status = demo.stop()
    assert admin.status_code == 200 and admin.json()["result"] == {"secret": "ok"}
    assert ctx_r.json()["result"]["principal"] == CLIENT_ID
    assert denied.status_code == 403 and denied.json()["error"]["code"] == 3011
    assert status == 0
    out = demo.output
    # the deny is audited with the certificate's facts, never the certificate
    deny = next(line for line in out.splitlines() if "auth deny" in line)
    assert f"principal={CLIENT_ID}" in deny
    facts = certificate_facts(pki.pem("client").decode())
    for field in ("cert_subject='CN=client,O=aduib test client'",
                  f"cert_issuer='{facts.issuer}'", f"cert_serial={facts.serial}",
                  f"cert_sha256={facts.sha256}"):
        assert field in deny, deny
    assert "BEGIN CERTIFICATE" not in out and "Traceback" not in out, out


def test_optional_certificates_identity_rules_and_mtls_scheme_without_one(pki: Pki) -> None:
    with running_demo(*pki.demo_args(), "--http", "h11", "--tls-min-version", "1.3") as demo:
        def context(name: str | None) -> httpx.Response:
            with httpx.Client(base_url=demo.url, verify=pki.client_context(name),
                              timeout=20) as c:
                return c.post(RPC, json=envelope("rpc.v2/Echo/context"))

        anonymous = context(None)
        dns, cn = context("dns"), context("cn")
        with httpx.Client(base_url=demo.url, verify=pki.client_context(None), timeout=20) as c:
            mtls = c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}, metadata={
                "auth": {"scheme": "mtls"}}))
        resumed = _resumed_principals(pki, demo.url)
        old = pki.client_context("client")
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            with httpx.Client(verify=old, timeout=20) as c:
                c.post(demo.url + RPC, json=envelope("rpc.v2/Echo/echo", {}))
            tls12_refused = False
        except httpx.TransportError:
            tls12_refused = True
    assert anonymous.json()["result"]["principal"] is None
    assert dns.json()["result"]["principal"] == "svc.example.org"  # first SAN DNS
    assert cn.json()["result"]["principal"] == "carol"  # no SAN: the CN
    assert mtls.status_code == 401 and mtls.json()["error"]["code"] == 3000
    assert tls12_refused  # --tls-min-version 1.3
    # a resumed TLS session (session ticket) still carries the client's identity
    assert resumed == [(False, CLIENT_ID), (True, CLIENT_ID)]


def _resumed_principals(pki: Pki, url: str) -> list[tuple[bool, str]]:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = pki.client_context("client")
    body = json.dumps(envelope("rpc.v2/Echo/context")).encode()
    req = (b"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    out: list[tuple[bool, str]] = []
    session = None
    for _ in range(2):
        raw = socket.create_connection((host, int(port)), timeout=20)
        with ctx.wrap_socket(raw, server_hostname=host, session=session) as s:
            s.sendall(req)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            out.append((s.session_reused,
                        json.loads(data.split(b"\r\n\r\n", 1)[1])["result"]["principal"]))
            session = s.session
    return out


def test_mtls_scheme_over_plain_http_is_3000() -> None:
    with running_demo() as demo, httpx.Client(base_url=demo.url, timeout=20) as c:
        r = c.post(RPC, json=envelope("rpc.v2/Echo/echo", {}, metadata={
            "auth": {"scheme": "mtls"}}))
    assert r.status_code == 401 and r.json()["error"]["code"] == 3000
    assert "WWW-Authenticate" in r.headers


def test_tls_flags_are_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "aduib_asgi.cli", "demo", "--port", "0",
                        "--tls-require-client-cert", "--tls-cert", str(tmp_path / "x.pem")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--tls-client-ca" in r.stderr
