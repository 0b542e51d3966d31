"""Client certificates and addresses from a TLS-terminating proxy, against a real demo:
believed only from `--trusted-proxy` peers (clients bound to 127.0.0.2 vs 127.0.0.1)."""

from __future__ import annotations

import base64
import ssl
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from aduib_asgi.auth import certificate_facts
from tests.demo_process import running_demo
from tests.tls_pki import ADMIN_ID, CLIENT_ID, Pki, make_pki

RPC = "/aduib_rpc/v2/rpc"
PROXY = "127.0.0.2"  # the trusted proxy's address (loopback)
OTHER = "127.0.0.1"  # any other peer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def envelope(method: str, data: Any = None) -> dict[str, Any]:
    return {"aduib_rpc": "2.0", "id": "p", "method": method, "data": data}


def _client_cert(pki: Pki, name: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(pki.pem(name).decode())
    return ":" + base64.b64encode(der).decode() + ":"  # RFC 9440 byte sequence


def _call(url: str, local: str, method: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=local)
    with httpx.Client(base_url=url, transport=transport, timeout=20) as c:
        return c.post(RPC, json=envelope(method), headers=headers)


def test_forwarded_certificates_count_only_from_trusted_proxies(pki: Pki) -> None:
    admin = {"Client-Cert": _client_cert(pki, "admin"), "X-Forwarded-For": "203.0.113.7"}
    xfcc = {"X-Forwarded-Client-Cert":
            f'By=spiffe://proxy;Cert="{quote(pki.pem("client").decode(), safe="")}";'
            f"URI={CLIENT_ID}"}
    with running_demo("--trusted-proxy", f"{PROXY}/32", "--trusted-proxy", "10.0.0.0/8",
                      "--mtls-role", f"{ADMIN_ID}=admin") \
            as demo:
        via_proxy = _call(demo.url, PROXY, "rpc.v2/Admin/secret", admin)
        ctx_proxy = _call(demo.url, PROXY, "rpc.v2/Echo/context", admin)
        envoy = _call(demo.url, PROXY, "rpc.v2/Echo/context", xfcc)
        denied = _call(demo.url, PROXY, "rpc.v2/Admin/secret",
                       {**xfcc, "X-Forwarded-For": "198.51.100.4"})
        direct = _call(demo.url, OTHER, "rpc.v2/Admin/secret", admin)
        ctx_direct = _call(demo.url, OTHER, "rpc.v2/Echo/context", {**admin, **xfcc})
        bad = _call(demo.url, PROXY, "rpc.v2/Echo/context", {"Client-Cert": ":bm9wZQ==:"})
        demo.stop()
    assert via_proxy.status_code == 200 and via_proxy.json()["result"] == {"secret": "ok"}
    assert ctx_proxy.json()["result"]["principal"] == ADMIN_ID
    assert envoy.json()["result"]["principal"] == CLIENT_ID
    assert denied.status_code == 403 and denied.json()["error"]["code"] == 3011
    # the same headers from any other peer are ignored: anonymous
    assert direct.status_code == 401 and direct.json()["error"]["code"] == 3000
    assert ctx_direct.json()["result"]["principal"] is None
    # an unreadable forwarded certificate: no certificate, never a 500
    assert bad.status_code == 200 and bad.json()["result"]["principal"] is None
    # audit: the forwarded certificate's facts and the forwarded client address
    lines = [line for line in demo.output.splitlines() if "auth deny" in line]
    client = certificate_facts(pki.pem("client").decode())
    assert any(f"cert_sha256={client.sha256}" in line and "198.51.100.4" in line
               for line in lines), demo.output
    assert any("code=3000" in line and OTHER in line for line in lines), demo.output
    assert "BEGIN CERTIFICATE" not in demo.output
