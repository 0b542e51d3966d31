"""Certificates for trying the demo over HTTPS/mTLS (``make demo-tls``), made with trustme.

``python -m aduib_asgi.demo.certs DIR [--host 127.0.0.1] [--port 8443]`` writes a
throwaway CA, a server certificate for the host, two client certificates with
SPIFFE IDs (``client`` and ``admin``) and prints the lines that call the demo
with them. Test material only; trustme and cryptography come with the ``tls`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aduib_asgi.extras import MissingExtra, require

__all__ = ["ADMIN_ID", "CLIENT_ID", "issue_client_cert", "write_demo_certs"]

CLIENT_ID = "spiffe://demo.aduib/client"
ADMIN_ID = "spiffe://demo.aduib/admin"


def issue_client_cert(ca: Any, *, uris: Sequence[str] = (), dns: Sequence[str] = (),
                      common_name: str | None = None, days: int = 30) -> bytes:
    """A client certificate signed by a ``trustme.CA``: key and certificate PEM, one blob.

    (trustme writes only DNS/IP/email SANs; SPIFFE IDs are SAN URIs.)
    """
    import datetime

    require("cryptography", "tls", "issue_client_cert")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aduib test client"),
                         *([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
                           if common_name else [])])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def write_demo_certs(directory: str | Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """Write ``ca.pem``, ``server.pem``/``server.key``, ``client.pem``, ``admin.pem``."""
    trustme = require("trustme", "tls", "Demo certificates")
    require("cryptography", "tls", "Demo certificates")

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="aduib demo CA")
    server = ca.issue_cert(host, "localhost")
    paths = {"ca": out / "ca.pem", "server_cert": out / "server.pem",
             "server_key": out / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(paths["server_cert"]), append=True)
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    for name, spiffe in (("client", CLIENT_ID), ("admin", ADMIN_ID)):
        path = out / f"{name}.pem"  # key and certificate in one file (curl --cert, httpx)
        path.write_bytes(issue_client_cert(ca, uris=[spiffe], dns=[f"{name}.demo.aduib"],
                                           common_name=name))
        paths[name] = path
    for path in paths.values():
        path.chmod(0o600)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aduib_asgi.demo.certs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args(argv)
    try:
        paths = write_demo_certs(args.directory, args.host)
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = f"https://{args.host}:{args.port}/aduib_rpc/v2/rpc"
    body = json.dumps({"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/context"})
    admin = json.dumps({"aduib_rpc": "2.0", "id": "2", "method": "rpc.v2/Admin/secret"})
    print(f"certificates in {args.directory}: CA ca.pem, server server.pem/server.key, "
          f"clients client.pem ({CLIENT_ID}) and admin.pem ({ADMIN_ID}, role admin)")
    print("call it with a client certificate:")
    print(f"  curl --cacert {paths['ca']} --cert {paths['client']} "
          f"-H 'Content-Type: application/json' -d '{body}' {url}")
    print(f"  curl --cacert {paths['ca']} --cert {paths['admin']} "
          f"-H 'Content-Type: application/json' -d '{admin}' {url}")
    call = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/context"}
    print("  python -c \"import httpx, ssl;"
          f" c = ssl.create_default_context(cafile='{paths['ca']}');"
          f" c.load_cert_chain('{paths['client']}');"
          f" print(httpx.post('{url}', json={call!r}, verify=c).json())\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
