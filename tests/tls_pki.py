"""A throwaway PKI for TLS tests: a CA, a server certificate, client certificates, a rogue CA."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from aduib_asgi.demo.certs import issue_client_cert

CLIENT_ID = "spiffe://example.org/ns/default/sa/client"
ADMIN_ID = "spiffe://example.org/ns/ops/sa/admin"


@dataclass
class Pki:
    dir: Path
    ca: trustme.CA

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def server_cert(self) -> str:
        return str(self.dir / "server.pem")

    @property
    def server_key(self) -> str:
        return str(self.dir / "server.key")

    def path(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    def pem(self, name: str) -> bytes:
        """The certificate (no key) of client ``name``, as PEM."""
        text = (self.dir / f"{name}.pem").read_bytes()
        return text[text.index(b"-----BEGIN CERTIFICATE-----"):]

    def client_context(self, name: str | None = None) -> ssl.SSLContext:
        """A client context trusting the server; with client certificate ``name`` if given."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if name is not None:
            ctx.load_cert_chain(self.path(name))
        return ctx

    def demo_args(self, *, require: bool = False) -> list[str]:
        args = ["--tls-cert", self.server_cert, "--tls-key", self.server_key,
                "--tls-client-ca", self.ca_file, "--mtls-role", f"{ADMIN_ID}=admin"]
        return [*args, "--tls-require-client-cert"] if require else args


def make_pki(directory: Path) -> Pki:
    """Certificates: ``client`` (SPIFFE ID + DNS), ``admin`` (SPIFFE ID, rule → admin),
    ``dns`` (DNS SAN only), ``cn`` (no SAN), ``rogue`` (same names, another CA)."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    issued = {
        "client": issue_client_cert(ca, uris=[CLIENT_ID], dns=["client.example.org"],
                                    common_name="client"),
        "admin": issue_client_cert(ca, uris=[ADMIN_ID], common_name="admin"),
        "dns": issue_client_cert(ca, dns=["svc.example.org", "alt.example.org"],
                                 common_name="svc"),
        "cn": issue_client_cert(ca, common_name="carol"),
        "rogue": issue_client_cert(trustme.CA(), uris=[ADMIN_ID], common_name="admin"),
    }
    for name, blob in issued.items():
        (directory / f"{name}.pem").write_bytes(blob)
    return Pki(directory, ca)
