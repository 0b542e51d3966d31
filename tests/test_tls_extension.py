"""The ASGI `tls` extension filled by our uvicorn protocol mixin (real handshakes in-process),
certificate facts and the role rule table."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from aduib_asgi.auth import MtlsRoleRules, certificate_facts
from aduib_asgi.server import TlsScopeMixin, TlsSettings, http_protocol
from tests.tls_pki import ADMIN_ID, CLIENT_ID, Pki, make_pki

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _tls_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers with the scope's tls extension, then scribbles on it."""
    if scope["type"] != "http":
        return
    tls = (scope.get("extensions") or {}).get("tls")
    body = json.dumps(tls).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
    if tls is not None:  # a request that changes its copy changes no other request's
        tls["client_cert_chain"].append("tampered")
        tls["client_cert_name"] = "CN=tampered"


async def _serve(settings: TlsSettings | None, http: str, fn: Any) -> Any:
    attrs = {"tls_server_cert": settings.server_cert_pem()} if settings else {}
    http_cls = http_protocol(http, TlsScopeMixin, **attrs)
    port = _free_port()
    config = uvicorn.Config(_tls_app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", http=http_cls, ws="none",
                            **(settings.uvicorn_options() if settings else {}))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert server.started
        return await fn(port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_every_request_gets_its_own_copy_of_the_extension(pki: Pki, http: str) -> None:
    settings = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key,
                           client_ca=pki.ca_file)

    async def calls(port: int) -> list[Any]:
        async with httpx.AsyncClient(verify=pki.client_context("client"), timeout=20) as c:
            return [(await c.get(f"https://127.0.0.1:{port}/")).json() for _ in range(2)]

    first, second = await _serve(settings, http, calls)
    assert first == second  # the first request's scribbles did not reach the second
    leaf = pki.pem("client").decode()
    assert first["client_cert_chain"] == [ssl.DER_cert_to_PEM_cert(
        ssl.PEM_cert_to_DER_cert(leaf))]
    assert first["client_cert_name"] == "CN=client,O=aduib test client"
    assert first["client_cert_error"] is None
    assert first["tls_version"] == 0x0304
    assert first["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # TLS 1.3 suites, IANA codes
    assert first["server_cert"] == Path(pki.server_cert).read_text().strip() + "\n"


async def test_no_client_certificate_and_plain_http(pki: Pki) -> None:
    settings = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key,
                           client_ca=pki.ca_file, min_version="1.2",
                           ciphers="ECDHE+AESGCM")

    async def tls12(port: int) -> Any:
        ctx = pki.client_context(None)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        async with httpx.AsyncClient(verify=ctx, timeout=20) as c:
            return (await c.get(f"https://127.0.0.1:{port}/")).json()

    async def plain(port: int) -> Any:
        async with httpx.AsyncClient(timeout=20) as c:
            return (await c.get(f"http://127.0.0.1:{port}/")).json()

    anonymous = await _serve(settings, "httptools", tls12)
    assert anonymous["client_cert_chain"] == [] and anonymous["client_cert_name"] is None
    assert anonymous["tls_version"] == 0x0303
    assert anonymous["cipher_suite"] in (0xC02B, 0xC02C, 0xC02F, 0xC030)  # ECDHE AES-GCM
    assert await _serve(None, "h11", plain) is None  # no TLS: no extension


def test_settings_context_refuses_renegotiation_and_checks_options(pki: Pki) -> None:
    ctx = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key,
                      client_ca=pki.ca_file, require_client_cert=True,
                      min_version="1.3").server_context()
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="client_ca"):
        TlsSettings(certfile=pki.server_cert, require_client_cert=True)
    with pytest.raises(ValueError, match=r"1\.2 or 1\.3"):
        TlsSettings(certfile=pki.server_cert, min_version="1.1")


def test_principal_is_san_uri_then_dns_then_cn(pki: Pki) -> None:
    client = certificate_facts(pki.pem("client").decode())
    assert client.principal == CLIENT_ID and client.san_dns == ("client.example.org",)
    assert certificate_facts(pki.pem("dns").decode()).principal == "svc.example.org"
    carol = certificate_facts(pki.pem("cn").decode())
    assert carol.principal == "carol" and carol.sans == ()
    der = ssl.PEM_cert_to_DER_cert(pki.pem("client").decode())
    assert certificate_facts(der) == client  # DER (a forwarded certificate) reads the same
    fields = client.audit_fields()
    assert set(fields) == {"cert_subject", "cert_issuer", "cert_serial", "cert_sha256"}
    assert len(fields["cert_sha256"]) == 64 and "BEGIN" not in repr(fields)


def test_role_rules_match_principal_or_any_san_exactly(pki: Pki) -> None:
    rules = MtlsRoleRules({ADMIN_ID: ["admin"], "client.example.org": "reader writer",
                           "spiffe://example.org/ns": ["nope"]})
    assert rules.roles_for(certificate_facts(pki.pem("admin").decode())) == ("admin",)
    # a SAN DNS name matches although the principal is the SAN URI; no prefix matches
    assert rules.roles_for(certificate_facts(pki.pem("client").decode())) == (
        "reader", "writer")
    assert rules.roles_for(certificate_facts(pki.pem("cn").decode())) == ()
