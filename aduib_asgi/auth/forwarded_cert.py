"""Client certificates forwarded by a TLS-terminating proxy, as the ASGI ``tls`` extension.

Only a trusted proxy's word counts: the caller (the identity layer) decides with
the trusted-proxy list, and only then is the request's ``tls`` extension
replaced by :func:`forwarded_tls`. Two header formats:

- ``Client-Cert`` (RFC 9440): the leaf certificate as a structured-field byte
  sequence of DER (``:base64:``); ``Client-Cert-Chain``: a list of such byte
  sequences, the rest of the chain. A URL-encoded PEM (nginx's
  ``$ssl_client_escaped_cert``) is accepted too.
- Envoy's ``X-Forwarded-Client-Cert``: ``;``-separated ``key=value`` pairs per
  proxy hop, hops separated by ``,``; ``Cert=`` is the URL-encoded PEM leaf and
  ``Chain=`` the URL-encoded PEM chain. The last hop (the proxy in front of us)
  counts.

A forwarded certificate that cannot be read leaves the request without a client
certificate (``client_cert_error`` says why); it is never a 500.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from starlette.types import Scope

from aduib_asgi.auth.certificates import certificate_facts

__all__ = ["CLIENT_CERT_HEADERS", "FORWARDED_CERT_HEADERS", "forwarded_tls", "parse_xfcc",
           "use_forwarded_certificate"]

_CLIENT_CERT = b"client-cert"
_CLIENT_CERT_CHAIN = b"client-cert-chain"
_XFCC = b"x-forwarded-client-cert"
#: Request headers that carry a forwarded client certificate (read from trusted proxies).
FORWARDED_CERT_HEADERS = (_CLIENT_CERT, _CLIENT_CERT_CHAIN, _XFCC)
#: Every header name a proxy may use for a client certificate, lower case: the ones
#: read above and conventions never read here (nginx/HAProxy ``SSL-Client-Cert``,
#: ``X-SSL-Client-Cert``). Log lines never show their values
#: (:data:`aduib_asgi.observability.logs.SECRET_HEADERS`).
CLIENT_CERT_HEADERS = frozenset(
    {*(name.decode("ascii") for name in FORWARDED_CERT_HEADERS),
     "ssl-client-cert", "x-ssl-client-cert"})
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"
_MAX_CHAIN = 10


class _Unreadable(ValueError):
    pass


def _byte_sequence(item: str) -> bytes:
    """An RFC 8941 byte sequence ``:base64:`` (parameters after ``;`` are ignored)."""
    item = item.strip().split(";", 1)[0].strip()
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        raise _Unreadable("not a byte sequence")
    try:
        return base64.b64decode(item[1:-1], validate=True)
    except (binascii.Error, ValueError):
        raise _Unreadable("bad base64") from None


def _pem_blocks(text: str) -> list[bytes]:
    """DER of every PEM certificate in ``text``."""
    out: list[bytes] = []
    start = text.find(_PEM_BEGIN)
    while start != -1 and len(out) <= _MAX_CHAIN:
        end = text.find(_PEM_END, start)
        if end == -1:
            raise _Unreadable("unterminated PEM")
        try:
            out.append(ssl.PEM_cert_to_DER_cert(text[start:end + len(_PEM_END)]))
        except ValueError:
            raise _Unreadable("bad PEM") from None
        start = text.find(_PEM_BEGIN, end)
    return out


def _leaf(value: str) -> bytes:
    value = value.strip()
    if value.startswith(":"):
        return _byte_sequence(value)
    blocks = _pem_blocks(unquote(value))  # nginx: $ssl_client_escaped_cert
    if len(blocks) != 1:
        raise _Unreadable("expected one certificate")
    return blocks[0]


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (kept, with their backslash escapes)."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        escaped = False
        for ch in value[1:-1]:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """The hops of an ``X-Forwarded-Client-Cert`` header: one ``{key: value}`` each.

    Keys are case-insensitive (returned lower case); values are unquoted, not
    URL-decoded. Repeated keys (``URI``, ``DNS``) keep their first value.
    """
    hops: list[dict[str, str]] = []
    for element in _split(value, ","):
        hop: dict[str, str] = {}
        for pair in _split(element, ";"):
            key, sep, val = pair.partition("=")
            if sep:
                hop.setdefault(key.strip().lower(), _unquote(val))
        if hop:
            hops.append(hop)
    return hops


def _from_xfcc(value: str) -> tuple[bytes, list[bytes]]:
    hops = parse_xfcc(value)
    if not hops:
        raise _Unreadable("empty X-Forwarded-Client-Cert")
    hop = hops[-1]  # written by the proxy in front of us
    cert = hop.get("cert")
    if not cert:
        # Envoy: set_current_client_cert_details {cert: true}
        raise _Unreadable("X-Forwarded-Client-Cert has no Cert=")
    leaf = _leaf(cert)
    chain = _pem_blocks(unquote(hop["chain"])) if hop.get("chain") else []
    return leaf, [der for der in chain if der != leaf]


def forwarded_tls(headers: Iterable[tuple[bytes, bytes]],
                  base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``tls`` extension for a request from a trusted proxy.

    The client certificate is the forwarded one, or none: the connection's own
    peer certificate (if any) is the proxy's, not the caller's. ``base`` (the
    connection's extension) supplies ``server_cert``, ``tls_version`` and
    ``cipher_suite``.
    """
    cert = chain = xfcc = None
    repeated = False
    for name, value in headers:
        if name == _CLIENT_CERT:
            repeated = repeated or cert is not None
            cert = value
        elif name == _CLIENT_CERT_CHAIN:
            chain = value if chain is None else chain + b"," + value
        elif name == _XFCC:
            xfcc = value if xfcc is None else xfcc + b"," + value
    ext: dict[str, Any] = {
        "server_cert": None, "tls_version": None, "cipher_suite": None,
        **(base or {}),
        "client_cert_chain": [], "client_cert_name": None, "client_cert_error": None,
    }
    if cert is None and xfcc is None:
        return ext
    try:
        if repeated:
            raise _Unreadable("more than one Client-Cert header")
        if cert is not None:
            leaf = _leaf(cert.decode("latin-1"))
            rest = [_byte_sequence(i) for i in _split(chain.decode("latin-1"), ",")
                    if i.strip()][:_MAX_CHAIN] if chain is not None else []
        else:
            assert xfcc is not None
            leaf, rest = _from_xfcc(xfcc.decode("latin-1"))
        facts = certificate_facts(leaf)  # a certificate at all?
    except _Unreadable as exc:
        ext["client_cert_error"] = f"forwarded client certificate: {exc}"
        return ext
    except ValueError:
        ext["client_cert_error"] = "forwarded client certificate: not a certificate"
        return ext
    ext["client_cert_chain"] = [ssl.DER_cert_to_PEM_cert(der) for der in (leaf, *rest)]
    ext["client_cert_name"] = facts.subject
    return ext


def use_forwarded_certificate(scope: Scope) -> None:
    """For a request from a trusted proxy: its ``tls`` extension becomes the forwarded
    certificate (or none). Call only after deciding the peer is a trusted proxy.

    A plain-HTTP request without certificate headers is left as it is.
    """
    ext = scope.get("extensions") or {}
    base = ext.get("tls")
    headers = scope.get("headers") or ()
    if base is None and not any(name in FORWARDED_CERT_HEADERS for name, _ in headers):
        return
    scope["extensions"] = {**ext, "tls": forwarded_tls(headers, base=base)}
