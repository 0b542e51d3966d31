"""The server's share, in-process: uvicorn's HTTP protocol driven without sockets.

:class:`ProtocolRunner` builds one uvicorn HTTP protocol object (stock httptools,
or the demo's guarded class from :func:`aduib_asgi.server.protocols.http_protocol`)
on a fake transport and feeds it the echo request bytes, one keep-alive request
after the other, awaiting the complete response each time. What is timed is
everything a server does per request except the kernel's socket work: parsing
the request, building the scope, running the app, serialising the response,
the keep-alive timers, and the demo's head guard. The ``server`` group of the
bench uses it to tell the protocol classes' cost apart from the app's, with far
less noise than HTTP mode (no load generator sharing the cores).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp

from aduib_asgi.bench.apps import ECHO_BODY, RPC_PATH
from aduib_asgi.bench.driver import Runner

__all__ = ["ProtocolRunner", "protocol_class"]

REQUEST = (f"POST {RPC_PATH} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
           "Content-Type: application/json\r\n"
           f"Content-Length: {len(ECHO_BODY)}\r\n\r\n").encode() + ECHO_BODY


class _Transport(asyncio.Transport):
    """Collects what the protocol writes; wakes the runner at the end of a response."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray()
        self.need = -1
        self.status = b""
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15:eol if eol >= 0 else len(head)]) if at >= 0 else 0
            self.status = bytes(self.buf[9:12])
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            del self.buf[:self.need]
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def protocol_class(guarded: bool, parser: str = "httptools") -> Any:
    """uvicorn's own protocol class, or the demo's (head bounds, connection budget)."""
    if not guarded:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    from aduib_asgi.bench.serve import _protocol

    return _protocol(parser, True)


class ProtocolRunner(Runner):
    """``round(n)``: ``n`` keep-alive requests through one protocol object."""

    def __init__(self, app: ASGIApp, *, guarded: bool = False) -> None:
        import uvicorn
        from uvicorn.server import ServerState

        from aduib_asgi.bench.serve import server_options

        opts = server_options("asyncio")
        opts.pop("loop")
        self.config = uvicorn.Config(app, http=protocol_class(guarded), ws="none",
                                     log_level="warning", **opts)
        self.config.load()
        self.state = ServerState()
        self.proto: Any = None
        self.transport: _Transport | None = None

    def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport = _Transport()
        self.proto = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.state, app_state={}, _loop=loop)
        self.proto.connection_made(self.transport)

    async def _one(self) -> bytes:
        if self.transport is None or self.transport.closed:
            self._connect()
        assert self.transport is not None
        t = self.transport
        t.waiter = asyncio.get_running_loop().create_future()
        self.proto.data_received(REQUEST)
        await t.waiter
        return t.status

    async def check(self) -> str | None:
        try:
            status = await asyncio.wait_for(self._one(), 10)
        except Exception as exc:
            return f"raised {type(exc).__name__}: {exc}"
        return None if status == b"200" else f"answered HTTP {status.decode()}, expected 200"

    async def round(self, n: int) -> float:
        one = self._one
        t0 = time.perf_counter()
        for _ in range(n):
            await one()
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.proto is not None and self.transport is not None and not self.transport.closed:
            self.transport.closed = True
            self.proto.connection_lost(None)
