"""The frame state machine, the SSE encoders and end-always-last over random behaviours."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.models import StreamMessage
from aduib_asgi.streaming import (
    EnvelopeSseEncoder,
    Frame,
    FrameMachine,
    MessageSseEncoder,
    Partial,
    StreamRun,
    StreamState,
    StreamStateError,
    sse_event,
)
from tests.stream_harness import parse_sse

# -- state machine --------------------------------------------------------------------


def test_sequence_starts_at_one_and_has_no_gaps() -> None:
    m = FrameMachine()
    assert m.state is StreamState.CREATED
    frames = [m.data(1), m.partial(2), m.heartbeat(), m.data(3), m.end()]
    assert [f.sequence for f in frames] == [1, 2, 3, 4, 5]
    assert all(abs(f.timestamp_ms - time.time() * 1000) < 60_000 for f in frames)
    end = frames[-1]
    assert end.type == "end"
    assert end.control == {"final": True, "total_count": 2}  # partials are not data frames
    assert m.state is StreamState.COMPLETED


def test_error_then_only_end() -> None:
    m = FrameMachine()
    m.data("x")
    err = m.error(RpcError(5000))
    assert err.type == "error" and m.state is StreamState.ERRORED
    for bad in (lambda: m.data(1), m.heartbeat, lambda: m.cancel("r"), lambda: m.error(
            RpcError(5000))):
        with pytest.raises(StreamStateError):
            bad()
    assert m.end().control == {"final": True, "total_count": 1}
    assert m.state is StreamState.ERRORED


def test_cancel_then_end_and_nothing_after_end() -> None:
    m = FrameMachine()
    c = m.cancel("user asked")
    assert c.control == {"reason": "user asked"} and m.state is StreamState.CANCELLED
    m.end()
    with pytest.raises(StreamStateError):
        m.end()
    with pytest.raises(StreamStateError):
        m.data(1)


def test_heartbeat_ping_ids_increase() -> None:
    m = FrameMachine()
    assert [m.heartbeat().control for _ in range(2)] == [{"ping_id": "1"}, {"ping_id": "2"}]


def test_partial_wrapper_makes_partial_frames() -> None:
    m = FrameMachine()
    assert m.item(Partial({"a": 1})).type == "partial"
    assert m.item({"a": 1}).type == "data"


# -- SSE encoding -----------------------------------------------------------------------


def test_sse_event_escapes_newlines_in_data() -> None:
    raw = sse_event("line1\nline2\r\nline3\rline4", event="data", id=7)
    assert raw == (b"id: 7\nevent: data\ndata: line1\ndata: line2\ndata: line3\n"
                   b"data: line4\n\n")
    assert parse_sse(raw)[0]["data"] == "line1\nline2\nline3\nline4"


def test_sse_event_trailing_newline_and_field_injection() -> None:
    assert sse_event("a\n") == b"data: a\ndata: \n\n"
    assert sse_event("") == b"data: \n\n"
    # a newline in id/event cannot start a new field
    raw = sse_event("x", event="data\ndata: evil", id="1\nretry: 1", retry=3000)
    assert raw == b"id: 1retry: 1\nevent: datadata: evil\nretry: 3000\ndata: x\n\n"


def test_message_encoder_is_a_valid_stream_message_event() -> None:
    ctx = RequestContext()
    enc = MessageSseEncoder(ctx, retry_ms=2500)
    m = FrameMachine()
    first = enc.encode(m.data({"text": "two\nlines"}))
    second = enc.encode(m.end())
    ev = parse_sse(first)[0]
    assert ev["id"] == "1" and ev["event"] == "data" and ev["retry"] == "2500"
    msg = StreamMessage.model_validate_json(ev["data"])
    assert msg.payload.data == {"text": "two\nlines"} and msg.sequence == 1
    assert "retry" not in parse_sse(second)[0]  # the hint is sent once
    assert first.count(b"\ndata: ") == 1


def test_envelope_encoder_sends_envelopes_pings_and_nothing_for_end() -> None:
    ctx = RequestContext(request_id="r1")
    enc = EnvelopeSseEncoder(ctx)
    m = FrameMachine()
    data = parse_sse(enc.encode(m.data({"i": 0})))[0]
    assert set(data) == {"comments", "data"}  # no id/event/retry lines
    env = json.loads(data["data"])
    assert env["id"] == "r1" and env["status"] == "success" and env["result"] == {"i": 0}
    assert json.loads(parse_sse(enc.encode(m.partial(1)))[0]["data"])["status"] == "partial"
    assert enc.encode(m.heartbeat()) == b": ping\n\n"
    err = json.loads(parse_sse(enc.encode(m.error(RpcError(4001))))[0]["data"])
    assert err["status"] == "error" and err["error"]["code"] == 4001
    assert enc.encode(m.end()) == b""


# -- end-always-last over random generator behaviours ------------------------------------


class ListSink:
    """Collects frames; records an HTTP error when one is answered before the first frame."""

    http_errors = True
    flow_controlled = False

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.started = 0
        self.finished = 0
        self.http_error: RpcError | None = None

    async def start(self) -> None:
        self.started += 1

    async def send_frame(self, frame: Frame) -> None:
        assert self.started == 1 and not self.finished
        self.frames.append(frame)

    async def finish(self) -> None:
        self.finished += 1

    async def fail_before_start(self, exc: BaseException) -> None:
        assert not self.started
        self.http_error = exc if isinstance(exc, RpcError) else RpcError(5000)

    async def acquire_credit(self) -> None:
        return None


behaviours = st.sampled_from(["normal", "raise", "cancel", "timeout"])


async def _run_behaviour(kind: str, n: int, k: int, partial_every: int) -> tuple[ListSink, bool]:
    ctx = RequestContext(request_id="p")
    sink = ListSink()
    run = StreamRun(ctx, sink, heartbeat_interval=0)
    cleaned = False
    if kind == "timeout":
        ctx.deadline = time.monotonic() + 0.05

    async def gen() -> AsyncIterator[Any]:
        nonlocal cleaned
        try:
            for i in range(n):
                if i == k:
                    if kind == "raise":
                        raise RpcError(6000, "dependency down")
                    if kind == "cancel":
                        run.cancel("stop")
                        await anyio.sleep(math.inf)
                    if kind == "timeout":
                        await anyio.sleep(math.inf)
                yield Partial(i) if partial_every and i % partial_every == 0 else i
        finally:
            cleaned = True

    with anyio.fail_after(10):
        await run.run(gen())
    return sink, cleaned


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=behaviours, n=st.integers(0, 8), k=st.integers(0, 8),
       partial_every=st.integers(0, 3))
def test_end_always_last(kind: str, n: int, k: int, partial_every: int) -> None:
    sink, cleaned = anyio.run(_run_behaviour, kind, n, k, partial_every)
    assert cleaned
    triggered = kind != "normal" and k < n
    if triggered and kind in ("raise", "timeout") and k == 0:
        # nothing was sent before the failure: a plain HTTP error, never a stream
        assert sink.frames == [] and sink.started == 0
        assert sink.http_error is not None
        assert sink.http_error.code == (6000 if kind == "raise" else 5003)
        return
    frames = sink.frames
    assert [f.sequence for f in frames] == list(range(1, len(frames) + 1))
    types = [f.type for f in frames]
    assert types.count("end") == 1 and types[-1] == "end"
    assert sink.finished == 1
    produced = min(n, k) if triggered else n
    payload = types[:produced]
    assert set(payload) <= {"data", "partial"} and len(payload) == produced
    assert frames[-1].control is not None
    assert frames[-1].control["total_count"] == types.count("data")
    tail = types[produced:-1]
    if not triggered:
        assert tail == []
    elif kind == "cancel":
        assert tail == ["cancel"] and frames[-2].control == {"reason": "stop"}
    else:
        assert tail == ["error"]
        err = frames[-2].error
        assert err is not None and err.code == (6000 if kind == "raise" else 5003)


@pytest.mark.anyio
@pytest.mark.parametrize("coding", [None, b"gzip"])
async def test_a_deadline_during_a_blocked_send_leaves_no_gap(coding: bytes | None) -> None:
    """A deadline that cuts a send waiting on a slow reader ends the response there.

    Nothing follows the cut frame: no sequence gap, and a compressed body stays
    decodable (it ends early, as after a lost connection).
    """
    import json
    import zlib

    from aduib_asgi.demo.server import DemoConfig, build_demo_app
    from tests.stream_harness import parse_sse

    app = build_demo_app(DemoConfig(heartbeat=0))
    body = json.dumps({"aduib_rpc": "2.0", "id": "s1", "method": "rpc.v2/Echo/stream",
                       "data": {"count": 50, "interval_ms": 0},
                       "qos": {"timeout_ms": 300}}).encode()
    headers = [(b"host", b"t"), (b"content-type", b"application/json")]
    if coding:
        headers.append((b"accept-encoding", coding))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/aduib_rpc/v2/rpc/stream",
             "raw_path": b"/aduib_rpc/v2/rpc/stream", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("t", 80), "headers": headers}
    sent = False
    gone = anyio.Event()
    delivered: list[dict[str, Any]] = []
    bodies = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body":
            bodies += 1
            if bodies == 3:  # the reader stalls, as uvicorn's drain() before a write
                await anyio.sleep(1.0)
        delivered.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            gone.set()

    with anyio.fail_after(10):
        await app(scope, receive, send)
    raw = b"".join(m.get("body", b"") for m in delivered if m["type"] == "http.response.body")
    if coding:
        raw = zlib.decompressobj(31).decompress(raw)  # decodable: nothing after the cut
    frames = [json.loads(e["data"]) for e in parse_sse(raw) if "data" in e]
    sequences = [f["sequence"] for f in frames]
    assert sequences == list(range(1, len(sequences) + 1))  # no gap
    assert all(f["type"] == "data" for f in frames)  # nothing sent after the cut frame
    assert len(frames) == 2  # the two frames the reader took before it stalled
