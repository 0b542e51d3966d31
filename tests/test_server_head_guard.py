"""The httptools head guard in-process: sizes at the bound, one timer per loop, not per head.

(The same guards against a real ``aduib-asgi demo`` process: tests/test_server_heads.py.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from aduib_asgi.server.protocols import http_protocol

pytestmark = pytest.mark.anyio

LIMIT = 1024


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def guard(timeout: float = 10.0) -> type:
    return http_protocol("httptools", max_head_bytes=LIMIT, head_timeout_s=timeout)


def connect(cls: type | None = None) -> tuple[Any, Transport]:
    cls = cls if cls is not None else guard()
    config = uvicorn.Config(app, http=cls, ws="none", log_level="warning", lifespan="off")
    config.load()
    proto = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={},
        _loop=asyncio.get_running_loop())
    t = Transport()
    proto.connection_made(t)
    return proto, t


def head(size: int, body: bytes = b"") -> bytes:
    """A request head of exactly ``size`` bytes (blank line included), then ``body``."""
    start = b"POST / HTTP/1.1\r\nHost: a\r\n"
    tail = b"Content-Length: %d\r\n\r\n" % len(body)
    pad = size - len(start) - len(tail) - len(b"X-Pad: \r\n")
    assert pad > 0
    out = start + b"X-Pad: " + b"p" * pad + b"\r\n" + tail
    assert len(out) == size
    return out + body


async def settle(t: Transport) -> bytes:
    for _ in range(200):
        if t.closed or (t.out.count(b"HTTP/1.1 ") and t.out.endswith(b"ok")):
            break
        await asyncio.sleep(0.005)
    return bytes(t.out)


@pytest.mark.parametrize("size, status", [(LIMIT, b"200"), (LIMIT + 1, b"431")])
async def test_a_head_in_one_chunk_at_and_over_the_bound(size: int, status: bytes) -> None:
    proto, t = connect()
    proto.data_received(head(size, b"x" * 5000))  # the chunk is far over the bound
    out = await settle(t)
    assert out.startswith(b"HTTP/1.1 " + status), out[:80]
    proto.connection_lost(None)


@pytest.mark.parametrize("size, status", [(LIMIT, b"200"), (LIMIT + 1, b"431")])
async def test_a_head_over_several_chunks_at_and_over_the_bound(size: int, status: bytes) -> None:
    proto, t = connect()
    data = head(size, b"y" * 3000)
    for i in range(0, len(data), 300):  # the head completes in a chunk that carries body too
        proto.data_received(data[i:i + 300])
        if t.closed:
            break
    out = await settle(t)
    assert out.startswith(b"HTTP/1.1 " + status), out[:80]
    proto.connection_lost(None)


async def test_keep_alive_requests_arm_no_timer_per_head() -> None:
    loop = asyncio.get_running_loop()
    armed: list[Any] = []
    original = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
        if getattr(callback, "__name__", "") in ("_sweep", "_head_timed_out"):  # the guard's
            armed.append(when)
        return original(when, callback, *args, **kw)

    loop.call_at = call_at  # type: ignore[method-assign]
    try:
        proto, t = connect()
        for _ in range(50):
            proto.data_received(head(200, b"z"))
            for _ in range(100):
                if t.out.count(b"HTTP/1.1 200") == 1:
                    break
                await asyncio.sleep(0.001)
            assert t.out.startswith(b"HTTP/1.1 200") and not t.closed
            t.out.clear()
        proto.connection_lost(None)
    finally:
        del loop.call_at
    assert len(armed) == 1  # the first head's deadline; every later head rides on it


async def test_each_waiting_connection_times_out_at_its_own_deadline() -> None:
    cls = guard(timeout=1.0)
    a, ta = connect(cls)
    await asyncio.sleep(1.0)
    b, tb = connect(cls)  # same class settings, its clock starts a second later
    for _ in range(400):
        if ta.closed:
            break
        await asyncio.sleep(0.01)
    assert ta.closed and ta.out.startswith(b"HTTP/1.1 408")
    assert not tb.closed  # its deadline is a second later
    for _ in range(600):
        if tb.closed:
            break
        await asyncio.sleep(0.01)
    assert tb.closed and tb.out.startswith(b"HTTP/1.1 408")
    a.connection_lost(None)
    b.connection_lost(None)


async def test_a_head_completed_in_its_chunk_leaves_no_waiting_entry() -> None:
    cls = guard()
    proto, t = connect(cls)
    assert proto in cls._waiting  # waiting for its first head since connect
    for _ in range(3):
        proto.data_received(head(200, b"z"))
        assert proto not in cls._waiting
        assert (await settle(t)).startswith(b"HTTP/1.1 200")
        t.out.clear()
    proto.connection_lost(None)
    assert not cls._waiting


async def test_a_later_head_that_stalls_times_out_from_its_first_byte() -> None:
    cls = guard(timeout=1.0)
    proto, t = connect(cls)
    proto.data_received(head(200, b"z"))
    assert (await settle(t)).startswith(b"HTTP/1.1 200")
    t.out.clear()
    await asyncio.sleep(0.7)  # idle keep-alive: no head clock runs
    proto.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    assert proto in cls._waiting
    await asyncio.sleep(0.5)  # 1.2 s after connect, 0.5 s into the head
    assert not t.closed
    for _ in range(400):
        if t.closed:
            break
        await asyncio.sleep(0.01)
    assert t.closed and t.out.startswith(b"HTTP/1.1 408"), bytes(t.out)
    proto.connection_lost(None)


async def test_a_partial_head_pipelined_after_a_request_times_out() -> None:
    cls = guard(timeout=1.0)
    proto, t = connect(cls)
    proto.data_received(head(200, b"z") + b"POST / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    assert proto in cls._waiting
    for _ in range(400):
        if t.closed:
            break
        await asyncio.sleep(0.01)
    out = bytes(t.out)
    assert t.closed and out.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in out, out
    proto.connection_lost(None)


async def test_a_pipelined_partial_head_over_the_bound_closes_at_once() -> None:
    cls = guard()
    proto, t = connect(cls)
    proto.data_received(head(200, b"z") + b"POST / HTTP/1.1\r\nX-Big: " + b"b" * (LIMIT + 10))
    assert t.closed and proto not in cls._waiting  # not buffered up to the timeout
    proto.connection_lost(None)
