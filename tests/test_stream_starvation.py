"""Streams never starve the event loop (OPERATIONS.md §5, issue 13 item 1), in-process.

The transport here behaves like uvicorn's: ``send`` never yields to the loop
(a fast reader; or, after a disconnect, a server that drops the write and
returns at once). The handlers yield items without ever awaiting. Before the
fix the stream pump then kept the loop to itself: the disconnect watcher, the
WebSocket reader and every other task starved until the handler ran out.
Each test checks, for one transport and one kind of handler, that

* another task keeps running while the stream is hot,
* the client going away stops the handler early (it never reaches its end),
* the handler's cleanup (its ``finally``) runs within a second of the drop.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from starlette.types import ASGIApp, Message

from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from tests.stream_harness import STREAM, WS

pytestmark = pytest.mark.anyio

#: Items a handler would produce if nothing stopped it (~seconds of a starved loop).
LIMIT = 300_000
#: Frames the client takes before it goes away.
DROP_AFTER = 2000


class Probe:
    """What a handler did: items produced, whether and when its ``finally`` ran."""

    def __init__(self) -> None:
        self.items = 0
        self.cleaned_at: float | None = None


def make_app(probe: Probe) -> ASGIApp:
    reg = MethodRegistry()

    async def agen(data: Any) -> AsyncIterator[dict[str, int]]:
        try:
            for i in range(LIMIT):  # never awaits
                probe.items += 1
                yield {"i": i}
        finally:
            probe.cleaned_at = time.monotonic()

    def sync_gen(data: Any) -> Iterator[dict[str, int]]:
        try:
            for i in range(LIMIT):
                probe.items += 1
                yield {"i": i}
        finally:
            probe.cleaned_at = time.monotonic()

    async def async_returns_agen(data: Any) -> AsyncIterator[dict[str, int]]:
        return agen(data)

    async def async_returns_sync(data: Any) -> Iterator[dict[str, int]]:
        return sync_gen(data)

    async def short(data: Any) -> AsyncIterator[int]:
        for i in range(3):
            await anyio.sleep(0.01)
            yield i

    reg.register("rpc.v2/Hot/agen", agen)
    reg.register("rpc.v2/Hot/short", short)
    reg.register("rpc.v2/Hot/sync", sync_gen)
    # async handlers returning a stream (stream_mode="server" marks them streaming)
    reg.register("rpc.v2/Hot/async", async_returns_agen, stream_mode="server")
    reg.register("rpc.v2/Hot/async_sync", async_returns_sync, stream_mode="server")
    dispatcher = RpcDispatcher(reg)
    dispatcher.streaming.configure(window=0)  # no acks: nothing in the WS path waits
    return ErrorMappingMiddleware(dispatcher)


HANDLERS = ["rpc.v2/Hot/agen", "rpc.v2/Hot/sync", "rpc.v2/Hot/async", "rpc.v2/Hot/async_sync"]


def body(method: str) -> bytes:
    return json.dumps({"aduib_rpc": "2.0", "id": "s1", "method": method}).encode()


class Ticker:
    """Another task on the loop: counts its turns while it runs."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await anyio.sleep(0)  # one tick per turn of the loop
            self.ticks += 1


class DroppingHttp:
    """An HTTP client that takes ``DROP_AFTER`` body chunks, then goes away.

    ``send`` never yields; after the drop it discards (as uvicorn does).
    """

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.chunks = 0
        self.status: int | None = None
        self.gone = anyio.Event()
        self.dropped_at: float | None = None
        self.ticks_at_drop = 0
        self._body_sent = False

    def scope(self) -> dict[str, Any]:
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "POST", "scheme": "http", "path": STREAM,
                "raw_path": STREAM.encode(), "query_string": b"", "root_path": "",
                "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
                "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                            (b"aduib-stream-framing", self.framing.encode())]}

    async def receive(self, payload: bytes) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.gone.is_set():
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message.get("body"):
            self.chunks += 1
            if self.chunks >= DROP_AFTER:
                self.dropped_at = time.monotonic()
                self.gone.set()


async def run_dropping_http(method: str, framing: str) -> tuple[Probe, DroppingHttp, Ticker]:
    probe, client, ticker = Probe(), DroppingHttp(framing), Ticker()
    app = make_app(probe)
    payload = body(method)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await app(client.scope(), lambda: client.receive(payload), client.send)
            tg.cancel_scope.cancel()
    return probe, client, ticker


@pytest.mark.parametrize("framing", ["message", "envelope"])
@pytest.mark.parametrize("method", HANDLERS)
async def test_sse_stream_dropped_by_its_client_stops_and_cleans_up(
        method: str, framing: str) -> None:
    probe, client, ticker = await run_dropping_http(method, framing)
    assert client.status == 200 and client.dropped_at is not None
    assert ticker.ticks > 0, "no other task ran while the stream was hot"
    assert probe.items < LIMIT, "the handler ran to its end after the client left"
    assert probe.cleaned_at is not None
    assert probe.cleaned_at - client.dropped_at < 1.0


class DroppingWs:
    """A WebSocket client that takes ``DROP_AFTER`` frames, then disconnects.

    ``send`` never yields; after the drop it discards.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.frames = 0
        self.sent: list[dict[str, Any]] = []
        self.gone = anyio.Event()
        self.dropped_at: float | None = None
        self._incoming: list[Message] = [{"type": "websocket.connect"},
                                         {"type": "websocket.receive",
                                          "text": payload.decode()}]
        self.cancel_after: int | None = None
        self._more = anyio.Event()

    def scope(self) -> dict[str, Any]:
        return {"type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "scheme": "ws", "path": WS, "raw_path": WS.encode(), "query_string": b"",
                "root_path": "", "client": ("127.0.0.1", 5000),
                "server": ("testserver", 80), "headers": [(b"host", b"testserver")],
                "subprotocols": []}

    async def receive(self) -> Message:
        while not self._incoming:
            self._more = anyio.Event()
            await self._more.wait()
        return self._incoming.pop(0)

    def _push(self, message: Message) -> None:
        self._incoming.append(message)
        self._more.set()

    async def send(self, message: Message) -> None:
        if self.gone.is_set():
            return
        if message["type"] != "websocket.send":
            return
        self.frames += 1
        if self.cancel_after is not None:
            self.sent.append(json.loads(message["text"]))
            if self.frames == self.cancel_after:
                self._push({"type": "websocket.receive", "text": json.dumps(
                    {"type": "cancel", "payload": {"control": {"reason": "enough"}}})})
        elif self.frames >= DROP_AFTER:
            self.dropped_at = time.monotonic()
            self.gone.set()
            self._push({"type": "websocket.disconnect", "code": 1001})


@pytest.mark.parametrize("method", HANDLERS)
async def test_websocket_stream_dropped_by_its_client_stops_and_cleans_up(method: str) -> None:
    probe, ticker = Probe(), Ticker()
    app = make_app(probe)
    client = DroppingWs(body(method))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await app(client.scope(), client.receive, client.send)
            tg.cancel_scope.cancel()
    assert client.dropped_at is not None
    assert ticker.ticks > 0, "no other task ran while the stream was hot"
    assert probe.items < LIMIT, "the handler ran to its end after the client left"
    assert probe.cleaned_at is not None
    assert probe.cleaned_at - client.dropped_at < 1.0


async def test_websocket_cancel_reaches_a_handler_that_never_awaits() -> None:
    # The reader task must get a turn to see the client's cancel frame at all.
    probe = Probe()
    app = make_app(probe)
    client = DroppingWs(body("rpc.v2/Hot/agen"))
    client.cancel_after = DROP_AFTER
    with anyio.fail_after(60):
        await app(client.scope(), client.receive, client.send)
    types = [f["type"] for f in client.sent]
    assert types[-2:] == ["cancel", "end"]
    assert client.sent[-2]["payload"]["control"]["reason"] == "enough"
    assert probe.items < LIMIT and probe.cleaned_at is not None


async def test_a_hot_stream_leaves_the_loop_to_others_while_its_client_reads() -> None:
    # No disconnect at all: a fast reader of an endless stream. Other tasks keep running.
    probe, ticker = Probe(), Ticker()
    app = make_app(probe)
    client = DroppingHttp("message")
    payload = body("rpc.v2/Hot/agen")
    started = time.monotonic()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)

            async def stop_when_others_ran() -> None:
                while ticker.ticks < 200:
                    await anyio.sleep(0.002)
                client.dropped_at = time.monotonic()
                client.gone.set()

            tg.start_soon(stop_when_others_ran)
            await app(client.scope(), lambda: client.receive(payload), client.send)
            tg.cancel_scope.cancel()
    assert client.dropped_at is not None and client.dropped_at - started < 30
    assert probe.items < LIMIT and probe.cleaned_at is not None


async def test_disconnect_watcher_never_spins_on_a_receive_that_does_not_wait() -> None:
    # A receive that answers at once (here: empty body messages, then a disconnect after
    # 100,000 of them) must not keep the loop from the stream itself.
    probe = Probe()
    app = make_app(probe)
    client = DroppingHttp("message")
    calls = 0

    async def eager_receive() -> Message:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body("rpc.v2/Hot/short"),
                    "more_body": False}
        if calls > 100_000:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    ended: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            ended.append(b"end")
        await client.send(message)

    with anyio.fail_after(60):
        await app(client.scope(), eager_receive, send)
    assert ended and calls < 100_000, "the stream was starved by its own watcher"
