"""Streaming: StreamMessage frames over SSE (two framings) and WebSocket.

Public API for endpoints that stream (``/rpc/stream``, TaskService/Subscribe,
HealthService/Watch):

* :func:`stream_response` — serve an (async) iterable as ``text/event-stream``
  with the state machine, heartbeats, cancellation, deadline and both framings;
* :func:`select_framing` / :func:`send_stream_error` — pick the framing of a
  request and answer a failure before the first frame as a plain HTTP error;
* :class:`Partial` — yield it to send a ``partial`` frame; :func:`raw_item` —
  envelope-framing encoder that sends items as they are (TaskEvent, ...);
* :class:`FrameMachine` / :class:`StreamRun` — the state machine and the
  transport-independent runner, for new transports.
"""

from aduib_asgi.streaming.endpoints import (
    StreamingEndpoints,
    apply_envelope_timeout,
    install_streaming,
    open_source,
)
from aduib_asgi.streaming.engine import STREAM_KEY, FrameSink, StreamRun
from aduib_asgi.streaming.frames import Frame, FrameMachine, Partial, StreamState, StreamStateError
from aduib_asgi.streaming.inflight import InflightRegistry
from aduib_asgi.streaming.responder import STREAM_ABORT_KEY, SseSink, raw_item, stream_response
from aduib_asgi.streaming.sources import SyncIterator, as_async_iterator
from aduib_asgi.streaming.sse import (
    ENVELOPE,
    FRAMING_HEADER,
    MESSAGE,
    EnvelopeSseEncoder,
    MessageSseEncoder,
    select_framing,
    send_stream_error,
    sse_event,
)
from aduib_asgi.streaming.websocket import WsSink, serve_websocket

__all__ = [
    "ENVELOPE",
    "FRAMING_HEADER",
    "MESSAGE",
    "STREAM_ABORT_KEY",
    "STREAM_KEY",
    "EnvelopeSseEncoder",
    "Frame",
    "FrameMachine",
    "FrameSink",
    "InflightRegistry",
    "MessageSseEncoder",
    "Partial",
    "SseSink",
    "StreamRun",
    "StreamState",
    "StreamStateError",
    "StreamingEndpoints",
    "SyncIterator",
    "WsSink",
    "apply_envelope_timeout",
    "as_async_iterator",
    "install_streaming",
    "open_source",
    "raw_item",
    "select_framing",
    "send_stream_error",
    "serve_websocket",
    "sse_event",
    "stream_response",
]
