"""Drive streaming ASGI responses message by message (httpx's ASGITransport buffers them).

``HttpStream`` sends one HTTP request and exposes every ``send`` message as it
happens, and can simulate a client disconnect; ``WsClient`` does the same for a
WebSocket. Both run the app in a task group of the test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message

STREAM = "/aduib_rpc/v2/rpc/stream"
CANCEL = "/aduib_rpc/v2/rpc/cancel"
WS = "/aduib_rpc/v2/rpc/ws"


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """SSE events of a complete body: dicts with id/event/retry/data (joined) and comments."""
    events: list[dict[str, Any]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block:
            continue
        ev: dict[str, Any] = {"comments": []}
        data: list[str] = []
        for line in block.decode().split("\n"):
            if line.startswith(":"):
                ev["comments"].append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                ev[name] = value
        if data:
            ev["data"] = "\n".join(data)
        events.append(ev)
    return events


def frames_of(raw: bytes) -> list[dict[str, Any]]:
    """The StreamMessage JSON of every data-bearing event."""
    return [json.loads(e["data"]) for e in parse_sse(raw) if "data" in e]


class HttpStream:
    """One HTTP request; the response's messages arrive one by one."""

    def __init__(self, app: ASGIApp, path: str, body: bytes,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                        *headers],
        }
        self.body = body
        self._body_sent = False
        self.gone = anyio.Event()
        send, recv = anyio.create_memory_object_stream[Message](1000)
        self._out: MemoryObjectSendStream[Message] = send
        self.messages: MemoryObjectReceiveStream[Message] = recv
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.done = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        await self._out.send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.gone.set()

    def disconnect(self) -> None:
        self.gone.set()

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        finally:
            self._out.close()

    async def start(self) -> int:
        """Wait for the response start; returns the status."""
        msg = await self.messages.receive()
        assert msg["type"] == "http.response.start", msg
        self.status = msg["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in msg["headers"]}
        return msg["status"]

    async def chunk(self) -> bytes | None:
        """The next non-empty body chunk, or None at the end of the body."""
        while not self.done:
            try:
                msg = await self.messages.receive()
            except anyio.EndOfStream:
                self.done = True
                return None
            body = msg.get("body", b"")
            if not msg.get("more_body", False):
                self.done = True
            if body:
                self.chunks.append(body)
                return bytes(body)
        return None

    async def event(self) -> dict[str, Any] | None:
        """The next SSE event (one chunk holds one event)."""
        raw = await self.chunk()
        if raw is None:
            return None
        events = parse_sse(raw)
        assert len(events) == 1, raw
        return events[0]

    async def frame(self) -> dict[str, Any] | None:
        ev = await self.event()
        return None if ev is None else json.loads(ev["data"])

    async def rest(self) -> bytes:
        while await self.chunk() is not None:
            pass
        return b"".join(self.chunks)


@asynccontextmanager
async def http_stream(app: ASGIApp, body: Any, *, path: str = STREAM,
                      headers: list[tuple[bytes, bytes]] | None = None,
                      ) -> AsyncIterator[HttpStream]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    call = HttpStream(app, path, raw, headers or [])
    async with anyio.create_task_group() as tg:
        tg.start_soon(call.run)
        try:
            yield call
        finally:
            call.disconnect()


class WsClient:
    """One WebSocket connection to an ASGI app."""

    def __init__(self, app: ASGIApp, path: str, subprotocols: list[str]) -> None:
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "ws", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
            "headers": [(b"host", b"testserver")], "subprotocols": subprotocols,
        }
        c2s, self._c2s_recv = anyio.create_memory_object_stream[Message](1000)
        self._c2s: MemoryObjectSendStream[Message] = c2s
        s2c, s2c_recv = anyio.create_memory_object_stream[Message](100_000)
        self._s2c: MemoryObjectSendStream[Message] = s2c
        self.incoming: MemoryObjectReceiveStream[Message] = s2c_recv
        self.accepted: Message | None = None
        self.close_code: int | None = None

    async def run(self) -> None:
        await self._c2s.send({"type": "websocket.connect"})
        try:
            await self.app(self.scope, self._c2s_recv.receive, self._s2c.send)
        finally:
            self._s2c.close()

    async def accept(self) -> Message:
        msg = await self.incoming.receive()
        assert msg["type"] == "websocket.accept", msg
        self.accepted = msg
        return msg

    async def send_json(self, value: Any) -> None:
        await self._c2s.send({"type": "websocket.receive", "text": json.dumps(value)})

    async def send_text(self, text: str) -> None:
        await self._c2s.send({"type": "websocket.receive", "text": text})

    async def send_msgpack(self, value: Any) -> None:
        await self._c2s.send({"type": "websocket.receive",
                              "bytes": msgpack.packb(value, use_bin_type=True)})

    async def disconnect(self) -> None:
        await self._c2s.send({"type": "websocket.disconnect", "code": 1001})

    async def frame(self) -> dict[str, Any] | None:
        """The next frame (decoded), or None once the server closed the socket."""
        try:
            msg = await self.incoming.receive()
        except anyio.EndOfStream:
            return None
        if msg["type"] == "websocket.close":
            self.close_code = msg.get("code", 1000)
            return None
        assert msg["type"] == "websocket.send", msg
        if msg.get("text") is not None:
            return json.loads(msg["text"])
        return msgpack.unpackb(msg["bytes"], raw=False)

    async def rest(self) -> list[dict[str, Any]]:
        out = []
        while (f := await self.frame()) is not None:
            out.append(f)
        return out


@asynccontextmanager
async def ws_client(app: ASGIApp, *, path: str = WS,
                    subprotocols: list[str] | None = None) -> AsyncIterator[WsClient]:
    client = WsClient(app, path, subprotocols or [])
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        await client.accept()
        yield client
        tg.cancel_scope.cancel()
