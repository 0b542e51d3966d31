"""Parsing client certificates forwarded by proxies (RFC 9440 Client-Cert, Envoy XFCC)."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from urllib.parse import quote

import pytest

from aduib_asgi.auth.certificates import certificate_facts
from aduib_asgi.auth.forwarded_cert import forwarded_tls, parse_xfcc
from tests.tls_pki import CLIENT_ID, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _der(pki: Pki, name: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pki.pem(name).decode())


def _sf(der: bytes) -> bytes:
    return b":" + base64.b64encode(der) + b":"


def test_rfc9440_client_cert_and_chain(pki: Pki) -> None:
    ca_der = ssl.PEM_cert_to_DER_cert(Path(pki.ca_file).read_text())
    ext = forwarded_tls([(b"client-cert", _sf(_der(pki, "client"))),
                         (b"client-cert-chain", _sf(ca_der))],
                        base={"tls_version": 0x0304, "client_cert_chain": ["proxy"]})
    assert ext["client_cert_error"] is None and ext["tls_version"] == 0x0304
    assert len(ext["client_cert_chain"]) == 2  # the proxy's own certificate is gone
    assert certificate_facts(ext["client_cert_chain"][0]).principal == CLIENT_ID
    assert ext["client_cert_name"] == "CN=client,O=aduib test client"


def test_nginx_escaped_pem_is_accepted(pki: Pki) -> None:
    ext = forwarded_tls([(b"client-cert", quote(pki.pem("dns").decode()).encode())])
    assert certificate_facts(ext["client_cert_chain"][0]).principal == "svc.example.org"


def test_envoy_xfcc_last_hop_with_quoted_subject(pki: Pki) -> None:
    client = quote(pki.pem("client").decode(), safe="")
    admin = quote(pki.pem("admin").decode(), safe="")
    header = (f'By=spiffe://a;Hash=00;Cert="{admin}";Subject="/C=US/CN=x, y";URI=spiffe://x,'
              f'By=spiffe://b;Hash=11;Subject="CN=client,O=aduib; test";Cert="{client}";'
              f"URI={CLIENT_ID}")
    hops = parse_xfcc(header)
    assert [h["by"] for h in hops] == ["spiffe://a", "spiffe://b"]
    assert hops[1]["subject"] == "CN=client,O=aduib; test"
    ext = forwarded_tls([(b"x-forwarded-client-cert", header.encode())])
    assert certificate_facts(ext["client_cert_chain"][0]).principal == CLIENT_ID


@pytest.mark.parametrize("headers", [
    [(b"client-cert", b":bm90IGEgY2VydA==:")],  # base64 of "not a cert"
    [(b"client-cert", b":***:")],
    [(b"client-cert", b"garbage")],
    [(b"client-cert", b"%2D%2D%2D%2D%2DBEGIN CERTIFICATE%2D%2D%2D%2D%2D")],
    [(b"x-forwarded-client-cert", b"By=x;Hash=00;URI=spiffe://x")],  # no Cert=
    [(b"x-forwarded-client-cert", b'Cert="'),],
    [(b"x-forwarded-client-cert", b"")],
])
def test_unreadable_forwarded_certificates_mean_no_certificate(
        headers: list[tuple[bytes, bytes]]) -> None:
    ext = forwarded_tls(headers)
    assert ext["client_cert_chain"] == [] and ext["client_cert_error"]


def test_two_client_cert_headers_are_refused(pki: Pki) -> None:
    one = _sf(_der(pki, "client"))
    ext = forwarded_tls([(b"client-cert", one), (b"client-cert", _sf(_der(pki, "admin")))])
    assert ext["client_cert_chain"] == [] and "more than one" in ext["client_cert_error"]


def test_no_forwarded_certificate_hides_the_proxy_connection_certificate() -> None:
    ext = forwarded_tls([(b"x-forwarded-for", b"10.0.0.1")],
                        base={"client_cert_chain": ["PROXY PEM"], "client_cert_name": "CN=p"})
    assert ext["client_cert_chain"] == [] and ext["client_cert_name"] is None
    assert ext["client_cert_error"] is None


def test_use_forwarded_certificate_replaces_the_request_extension(pki: Pki) -> None:
    from aduib_asgi.auth.forwarded_cert import use_forwarded_certificate

    plain: dict = {"type": "http", "headers": [(b"x-forwarded-for", b"10.0.0.1")]}
    use_forwarded_certificate(plain)
    assert "extensions" not in plain  # nothing forwarded over plain HTTP: no tls extension
    scope: dict = {"type": "http", "headers": [(b"client-cert", _sf(_der(pki, "client")))],
                   "extensions": {"other": {}}}
    use_forwarded_certificate(scope)
    assert scope["extensions"]["other"] == {}
    chain = scope["extensions"]["tls"]["client_cert_chain"]
    assert certificate_facts(chain[0]).principal == CLIENT_ID
