"""Streaming throughput: frames/second for SSE and WebSocket vs sse-starlette.

Every case streams the same async generator (``FRAMES`` dict items, no sleeps)
in-process: the ASGI ``send`` only counts bytes, ``receive`` delivers the
request and then waits (so each responder's disconnect watcher runs, as it
would under a server). Cases run in alternating rounds so that machine noise
hits every case alike; reported are the median frames/second over the rounds
and the ratios to sse-starlette and to a bare app measured in the same run.

Cases:
* bare ASGI: pre-encoded SSE events sent one per message (the floor: no encoding);
* sse-starlette: ``EventSourceResponse`` of ``ServerSentEvent(data=json, id, event)``;
* aduib SSE message framing: :func:`aduib_asgi.streaming.stream_response`
  (StreamMessage JSON per frame, state machine, heartbeat task, disconnect watcher);
* aduib SSE via the dispatcher: ``POST /v2/rpc/stream`` end to end (envelope
  parse, method resolution, in-flight registry) behind ErrorMappingMiddleware;
* aduib SSE envelope framing: the same endpoint with a full response envelope per item;
* aduib WebSocket: ``/v2/rpc/ws`` JSON text frames, window 0 (no acks), and
  with the default window of 64 and a client acking every 32 frames.

    .venv/bin/python benchmarks/streaming.py [--rounds 7] [--frames 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pydantic_core
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.context import RequestContext, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.streaming import stream_response

Case = Callable[[int], Awaitable[int]]


async def items(n: int) -> AsyncIterator[dict[str, Any]]:
    for i in range(n):
        yield {"index": i, "text": "hello"}


def http_scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 1), "server": ("bench", 80),
            "headers": [(b"content-type", b"application/json"), *(headers or [])]}


class Counter:
    """An ASGI send that counts body messages; a receive that then waits for the end."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.delivered = False
        self.messages = 0
        self.bytes = 0
        self.done = asyncio.Event()

    async def receive(self) -> Message:
        if not self.delivered:
            self.delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.messages += 1
                self.bytes += len(body)
            if not message.get("more_body", False):
                self.done.set()


async def case_bare(n: int) -> int:
    events = [b"id: %d\nevent: data\ndata: %s\n\n" % (i + 1, json.dumps(
        {"index": i, "text": "hello"}).encode()) for i in range(n)]
    c = Counter()
    await c.send({"type": "http.response.start", "status": 200, "headers": []})
    for ev in events:
        await c.send({"type": "http.response.body", "body": ev, "more_body": True})
    await c.send({"type": "http.response.body", "body": b"", "more_body": False})
    return c.messages


async def case_sse_starlette(n: int) -> int:
    async def gen() -> AsyncIterator[ServerSentEvent]:
        seq = 0
        async for item in items(n):
            seq += 1
            yield ServerSentEvent(data=pydantic_core.to_json(item).decode(), id=str(seq),
                                  event="data")

    c = Counter()
    await EventSourceResponse(gen())(http_scope("/sse"), c.receive, c.send)
    return c.messages


async def case_stream_response(n: int) -> int:
    async def handle(scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        await receive()
        await stream_response(scope, receive, send, ctx, items(n))

    c = Counter()
    await run_with_context(handle, http_scope("/sse"), c.receive, c.send)
    return c.messages


def make_dispatcher_app() -> Any:
    reg = MethodRegistry()

    async def stream(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for item in items(data["n"]):
            yield item

    reg.register("rpc.v2/Bench/stream", stream)
    return ErrorMappingMiddleware(RpcDispatcher(reg))


DISPATCHER_APP = make_dispatcher_app()


def _envelope(n: int) -> bytes:
    return json.dumps({"aduib_rpc": "2.0", "id": "b", "method": "rpc.v2/Bench/stream",
                       "data": {"n": n}}).encode()


async def case_dispatcher(n: int, framing: bytes = b"message") -> int:
    c = Counter(_envelope(n))
    await DISPATCHER_APP(http_scope("/aduib_rpc/v2/rpc/stream",
                                    [(b"aduib-stream-framing", framing)]), c.receive, c.send)
    return c.messages


async def case_dispatcher_envelope(n: int) -> int:
    return await case_dispatcher(n, b"envelope")


def _ws_case(window: int, ack_every: int) -> Case:
    async def run(n: int) -> int:
        DISPATCHER_APP.app.streaming.window = window
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        inbox.put_nowait({"type": "websocket.connect"})
        inbox.put_nowait({"type": "websocket.receive", "text": _envelope(n).decode()})
        count = 0

        async def send(message: Message) -> None:
            nonlocal count
            if message["type"] == "websocket.send":
                count += 1
                if ack_every and count % ack_every == 0:
                    seq = json.loads(message["text"])["sequence"]
                    inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(
                        {"type": "ack", "payload": {"control": {"ack_sequence": seq}}})})
            elif message["type"] == "websocket.close":
                inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws",
                 "path": "/aduib_rpc/v2/rpc/ws", "raw_path": b"/aduib_rpc/v2/rpc/ws",
                 "query_string": b"", "root_path": "", "headers": [], "subprotocols": []}
        await DISPATCHER_APP(scope, inbox.get, send)
        return count

    return run


CASES: list[tuple[str, Case]] = [
    ("bare ASGI (pre-encoded events)", case_bare),
    ("sse-starlette EventSourceResponse", case_sse_starlette),
    ("aduib stream_response (message)", case_stream_response),
    ("aduib /rpc/stream via dispatcher (message)", case_dispatcher),
    ("aduib /rpc/stream via dispatcher (envelope)", case_dispatcher_envelope),
    ("aduib WebSocket /rpc/ws (window off)", _ws_case(0, 0)),
    ("aduib WebSocket /rpc/ws (window 64, ack/32)", _ws_case(64, 32)),
]


async def main(rounds: int, frames: int) -> None:
    results: dict[str, list[float]] = {name: [] for name, _ in CASES}
    for _name, case in CASES:  # warm-up
        await case(min(frames, 1000))
    for _ in range(rounds):
        for name, case in CASES:
            t0 = time.perf_counter()
            sent = await case(frames)
            dt = time.perf_counter() - t0
            assert sent >= frames, (name, sent)
            results[name].append(frames / dt)
    med = {name: statistics.median(v) for name, v in results.items()}
    ref = med["sse-starlette EventSourceResponse"]
    bare = med["bare ASGI (pre-encoded events)"]
    print(f"{frames} frames per stream, {rounds} rounds, median frames/second")
    print(f"{'case':<46} {'frames/s':>12} {'vs sse-starlette':>17} {'vs bare':>9}")
    for name, _ in CASES:
        print(f"{name:<46} {med[name]:>12,.0f} {med[name] / ref:>16.2f}x "
              f"{med[name] / bare:>8.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--frames", type=int, default=20000)
    args = p.parse_args()
    asyncio.run(main(args.rounds, args.frames))
