"""A hostile WebSocket client for memory tests: raw sockets, one message per connection.

Each connection offers ``permessage-deflate``; when the server accepts it, the
message goes as one compressed frame (``size`` zero bytes deflate to ~1/1000),
else as ``size`` plain bytes. :func:`rss_mb` reads a process's resident set.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import zlib
from dataclasses import dataclass

from tests.raw_clients import ws_handshake


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _frame(payload: bytes, *, compressed: bool) -> bytes:
    """One masked, final binary frame (RSV1 set when ``compressed``)."""
    mask = os.urandom(4)
    first = 0x80 | (0x40 if compressed else 0) | 0x2
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def _deflated_zeros(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = c.compress(b"\0" * size) + c.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # permessage-deflate drops the 00 00 ff ff tail


@dataclass
class Result:
    """One connection: was deflate accepted, the close code the server sent (None: none)."""

    deflate: bool = False
    close_code: int | None = None
    error: str | None = None


def _close_code(sock: socket.socket, timeout: float) -> int | None:
    """Read frames until a close frame; its status code (None if the socket ended)."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while True:
            while len(buf) < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            n = buf[1] & 0x7F
            head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            while len(buf) < head:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            if n == 126:
                n = struct.unpack("!H", buf[2:4])[0]
            elif n == 127:
                n = struct.unpack("!Q", buf[2:10])[0]
            while len(buf) < head + n:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            opcode, payload, buf = buf[0] & 0x0F, buf[head:head + n], buf[head + n:]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    except OSError:
        return None


def bomb(port: int, connections: int, size: int, *, path: str = "/aduib_rpc/v2/rpc/ws",
         hold: threading.Event | None = None, timeout: float = 30) -> list[Result]:
    """``connections`` concurrent WebSockets, each sending one message of ``size`` bytes
    (decompressed); the close code each got. With ``hold``, sockets stay open until
    it is set (so the server's memory can be read while they are)."""
    compressed = _deflated_zeros(size)
    results = [Result() for _ in range(connections)]
    socks: list[socket.socket] = []

    def one(r: Result) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            socks.append(s)
            head = ws_handshake(s, "127.0.0.1", path,
                                "Sec-WebSocket-Extensions: permessage-deflate\r\n")
            r.deflate = b"permessage-deflate" in head.lower()
            payload = compressed if r.deflate else b"\0" * size
            with contextlib.suppress(OSError):  # the server may close before reading all
                s.sendall(_frame(payload, compressed=r.deflate))
            r.close_code = _close_code(s, timeout)
        except OSError as exc:
            r.error = repr(exc)

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    if hold is not None:
        hold.wait(timeout)
    for s in socks:
        s.close()
    return results
