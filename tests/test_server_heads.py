"""The demo server bounds request heads (431 over 64 KiB, a head timeout) and
connections, on both HTTP parsers it offers: real processes, raw sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.demo_process import running_demo

PARSERS = ("h11", "httptools")
LIMIT = 64 * 1024
BODY = json.dumps({"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/echo",
                   "data": {"x": 1}}).encode()


def _addr(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _head(size: int) -> bytes:
    """A POST head of exactly ``size`` bytes (padded with an X-Pad header)."""
    head = (b"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(BODY))
    pad = size - len(head) - len(b"X-Pad: \r\n\r\n")
    return head + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"


def _read_all(sock: socket.socket, timeout: float = 20) -> bytes:
    """Everything until the server closes (or ``timeout``)."""
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def _response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a keep-alive connection."""
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _exchange(addr: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(addr, timeout=20) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(payload)
        sock.settimeout(20)
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""


def _echo_ok(addr: tuple[str, int]) -> bool:
    reply = _exchange(addr, _head(200) + BODY)
    return reply.startswith(b"HTTP/1.1 200")


@contextlib.contextmanager
def _stalled(addr: tuple[str, int], n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections that each sent half a head and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(addr, timeout=20)
            s.sendall(b"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("parser", PARSERS)
def test_head_over_64_kib_is_431_just_under_is_served(parser: str) -> None:
    with running_demo("--http", parser) as demo:
        addr = _addr(demo.url)
        assert _exchange(addr, _head(LIMIT) + BODY).startswith(b"HTTP/1.1 200")
        assert _exchange(addr, _head(LIMIT - 100) + BODY).startswith(b"HTTP/1.1 200")
        assert _exchange(addr, _head(LIMIT + 1) + BODY).startswith(b"HTTP/1.1 431")
        # an endless header is cut off at the bound, not buffered: 431, then closed
        with socket.create_connection(addr, timeout=20) as sock:
            sock.sendall(b"GET /aduib_rpc/health HTTP/1.1\r\nHost: t\r\nX-Big: ")
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                for _ in range(128):  # up to 8 MiB
                    sock.sendall(b"b" * 65536)
            assert _read_all(sock).startswith(b"HTTP/1.1 431")
        assert _echo_ok(addr)  # and the server is fine


@pytest.mark.parametrize("parser", PARSERS)
def test_head_stalled_midway_is_closed_after_the_timeout(parser: str) -> None:
    with running_demo("--http", parser, "--header-timeout", "1") as demo:
        addr = _addr(demo.url)
        with _stalled(addr, 1) as (sock,):
            started = time.monotonic()
            reply = _read_all(sock, timeout=30)  # the server closes it: no timeout here
            assert time.monotonic() - started < 25
        assert reply.startswith(b"HTTP/1.1 408")
        # a keep-alive connection's next request is timed from its first byte as well
        with socket.create_connection(addr, timeout=20) as sock:
            sock.sendall(_head(300) + BODY)
            assert _response(sock).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /aduib_rpc/health HTTP/1.1\r\nHo")
            assert _read_all(sock, timeout=30).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("parser", PARSERS)
def test_many_stalled_connections_leave_room_for_a_probe(parser: str) -> None:
    with running_demo("--http", parser) as demo:
        addr = _addr(demo.url)
        with _stalled(addr, 200):
            assert _echo_ok(addr)


def test_over_the_connection_budget_the_oldest_stalled_connection_is_closed() -> None:
    with running_demo("--max-connections", "50") as demo:
        addr = _addr(demo.url)
        with _stalled(addr, 120) as socks:
            assert _echo_ok(addr)  # room was made for it
            # the oldest stalled ones were closed to make room (EOF or reset)
            oldest = socks[0]
            oldest.settimeout(20)
            with contextlib.suppress(ConnectionResetError):
                assert oldest.recv(100) == b""
            # and the newest are still open, waiting
            newest = socks[-1]
            newest.settimeout(0.2)
            with pytest.raises(TimeoutError):
                newest.recv(100)


@pytest.mark.parametrize("parser", PARSERS)
def test_guards_compose_with_the_tls_scope_protocol(parser: str) -> None:
    """Another behaviour (the ASGI tls extension) stacks on the guarded class."""
    import asyncio
    import ssl

    import httpx
    import trustme
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from aduib_asgi.auth import MtlsAuthenticator
    from aduib_asgi.auth.tls import tls_protocol
    from aduib_asgi.middleware.auth import AuthMiddleware
    from aduib_asgi.server.protocols import http_protocol

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("client.example", common_name="bob")

    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"principal": request.scope["aduib.context"].principal})

    app = AuthMiddleware(Starlette(routes=[Route("/who", who)]),
                         authenticators=[MtlsAuthenticator()], require_auth=True)
    protocol = tls_protocol(http_protocol(parser, max_head_bytes=8192, head_timeout_s=5))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_cert.configure_cert(client_ctx)

    async def scenario() -> tuple[int, Any, bytes]:
        with server_cert.private_key_and_cert_chain_pem.tempfile() as pem, \
                ca.cert_pem.tempfile() as ca_file:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            config = uvicorn.Config(app, log_level="warning", lifespan="off", http=protocol,
                                    ssl_certfile=pem, ssl_ca_certs=ca_file,
                                    ssl_cert_reqs=ssl.CERT_OPTIONAL)
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            try:
                deadline = time.monotonic() + 20
                while not server.started and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert server.started
                async with httpx.AsyncClient(verify=client_ctx) as c:
                    r = await c.get(f"https://127.0.0.1:{port}/who")
                big = await asyncio.to_thread(_tls_exchange, port, client_ctx,
                                              b"GET /who HTTP/1.1\r\nHost: t\r\nX-Pad: "
                                              + b"p" * 9000 + b"\r\n\r\n")
            finally:
                server.should_exit = True
                await asyncio.wait_for(task, 20)
                sock.close()
        return r.status_code, r.json(), big

    status, body, big = asyncio.run(scenario())
    # the principal is the first SAN DNS name (SAN URI, else SAN DNS, else CN)
    assert status == 200 and body == {"principal": "client.example"}
    assert big.startswith(b"HTTP/1.1 431")


def _tls_exchange(port: int, ctx: Any, payload: bytes) -> bytes:
    import ssl

    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
            tls.sendall(payload)
        try:
            return tls.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return b""
