"""Raw-socket clients for drills against a real server: streams that read slowly or vanish.

httpx and websockets are polite clients; these are not: they read a few bytes,
stop reading, or drop the TCP connection without any goodbye.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from typing import Any

STREAM_PATH = "/aduib_rpc/v2/rpc/stream"
WS_PATH = "/aduib_rpc/v2/rpc/ws"


def envelope_bytes(method: str, data: Any = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "method": method, **extra}
    if data is not None:
        body["data"] = data
    return json.dumps(body).encode()


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def open_sse(url: str, body: bytes, *, framing: str = "message",
             headers: dict[str, str] | None = None, rcvbuf: int | None = None) -> socket.socket:
    """POST ``body`` to ``/rpc/stream``; the socket, response unread."""
    host, port = _addr(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((host, port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall((f"POST {STREAM_PATH} HTTP/1.1\r\nHost: {host}\r\n"
                  "Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
                  f"Aduib-Stream-Framing: {framing}\r\n{extra}"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    return sock


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_handshake(sock: socket.socket, host: str, path: str = WS_PATH,
                 extra_headers: str = "") -> bytes:
    """A WebSocket opening handshake on ``sock``; the 101 response head (byte by byte:
    nothing after it is consumed). ConnectionError when refused or closed."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("no WebSocket handshake answer")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode("latin-1"))
    return head


def open_ws(url: str, body: bytes) -> socket.socket:
    """Handshake on ``/rpc/ws`` and send ``body`` as the request; the socket, frames unread."""
    host, port = _addr(url)
    sock = socket.create_connection((host, port), timeout=30)
    ws_handshake(sock, host)
    sock.sendall(ws_frame(body))
    return sock


def read_some(sock: socket.socket, n: int) -> int:
    """Read at least ``n`` bytes (fewer if the server closes); returns the count."""
    got = 0
    while got < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    return got


def drop(sock: socket.socket) -> float:
    """Close without a goodbye (no WebSocket close frame); returns the monotonic time."""
    sock.close()
    return time.monotonic()
