"""StreamMessage frames and the one state machine every stream runs on (PROTOCOL.md §5).

:class:`FrameMachine` numbers frames (``sequence`` from 1, +1 per frame, no
gaps), stamps ``timestamp_ms`` and enforces the life cycle::

    CREATED -> ACTIVE -> COMPLETED | ERRORED | CANCELLED

A stream always closes with exactly one ``end`` frame (``control.final``,
``control.total_count`` = number of ``data`` frames): after ``error`` or
``cancel`` only ``end`` is allowed, and nothing is allowed after ``end``.
Encoders (SSE in both framings, WebSocket JSON/msgpack) turn :class:`Frame`
objects into bytes; none of them numbers or orders frames itself.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from aduib_asgi.errors import RpcError
from aduib_asgi.models.stream import StreamMessageType

__all__ = [
    "DATA",
    "END",
    "ERROR",
    "Frame",
    "FrameMachine",
    "Partial",
    "StreamState",
    "StreamStateError",
]

# plain str constants (hot-path comparisons), the values of the wire enum
DATA: str = StreamMessageType.DATA.value
PARTIAL: str = StreamMessageType.PARTIAL.value
HEARTBEAT: str = StreamMessageType.HEARTBEAT.value
ERROR: str = StreamMessageType.ERROR.value
END: str = StreamMessageType.END.value
CANCEL: str = StreamMessageType.CANCEL.value
ACK: str = StreamMessageType.ACK.value

FRAME_TYPES = frozenset({DATA, PARTIAL, HEARTBEAT, ERROR, END, CANCEL, ACK})


class StreamState(Enum):
    CREATED = "created"
    ACTIVE = "active"
    COMPLETED = "completed"
    ERRORED = "errored"
    CANCELLED = "cancelled"


class StreamStateError(RuntimeError):
    """A frame was requested that the stream's state does not allow."""


class Partial:
    """Wrap an item yielded by a stream handler to send it as a ``partial`` frame."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Frame:
    """One StreamMessage. ``data``/``error``/``control`` are the payload members."""

    __slots__ = ("cause", "control", "data", "error", "sequence", "timestamp_ms", "type")

    def __init__(
        self,
        type: str,
        sequence: int,
        timestamp_ms: int,
        data: Any = None,
        error: RpcError | None = None,
        control: dict[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.sequence = sequence
        self.timestamp_ms = timestamp_ms
        self.data = data
        self.error = error
        self.control = control
        #: The exception behind an ``error`` frame (for ``debug`` in development mode).
        self.cause: BaseException | None = None

    def payload(self, debug: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.error is not None:
            err = self.error.to_dict()
            if debug is not None:
                err["debug"] = debug
            return {"error": err}
        if self.control is not None:
            return {"control": self.control}
        if self.type == DATA or self.type == PARTIAL:
            return {"data": self.data}
        return {}

    def to_dict(self, debug: dict[str, Any] | None = None) -> dict[str, Any]:
        """The StreamMessage as a JSON-like dict."""
        return {
            "type": self.type,
            "sequence": self.sequence,
            "timestamp_ms": self.timestamp_ms,
            "payload": self.payload(debug),
        }

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, seq={self.sequence})"


_OPEN = (StreamState.CREATED, StreamState.ACTIVE)


class FrameMachine:
    """Numbers frames and enforces the stream life cycle (exactly one ``end``, last)."""

    __slots__ = ("_ping", "data_count", "ended", "sequence", "state")

    def __init__(self) -> None:
        self.state = StreamState.CREATED
        self.sequence = 0
        self.data_count = 0
        self.ended = False
        self._ping = 0

    @property
    def is_open(self) -> bool:
        """Data, partial and heartbeat frames are still allowed."""
        return self.state in _OPEN

    def _next(self, type: str, data: Any = None, error: RpcError | None = None,
              control: dict[str, Any] | None = None) -> Frame:
        self.sequence += 1
        return Frame(type, self.sequence, int(time.time() * 1000), data, error, control)

    def _require_open(self, what: str) -> None:
        if self.state not in _OPEN:
            raise StreamStateError(f"no {what} frame after the stream is {self.state.value}")

    def data(self, value: Any) -> Frame:
        self._require_open(DATA)
        self.state = StreamState.ACTIVE
        self.data_count += 1
        return self._next(DATA, value)

    def partial(self, value: Any) -> Frame:
        self._require_open(PARTIAL)
        self.state = StreamState.ACTIVE
        return self._next(PARTIAL, value)

    def item(self, value: Any) -> Frame:
        """A ``data`` frame, or ``partial`` for a :class:`Partial` item."""
        if type(value) is Partial:
            return self.partial(value.value)
        return self.data(value)

    def retract(self, frame: Frame) -> None:
        """Take back the last data/partial ``frame``, which could not be sent (no gap)."""
        if frame.sequence == self.sequence and frame.type in (DATA, PARTIAL):
            self.sequence -= 1
            if frame.type == DATA:
                self.data_count -= 1

    def heartbeat(self) -> Frame:
        self._require_open(HEARTBEAT)
        self._ping += 1
        return self._next(HEARTBEAT, control={"ping_id": str(self._ping)})

    def error(self, error: RpcError, cause: BaseException | None = None) -> Frame:
        self._require_open(ERROR)
        self.state = StreamState.ERRORED
        frame = self._next(ERROR, error=error)
        frame.cause = cause
        return frame

    def cancel(self, reason: str | None = None) -> Frame:
        self._require_open(CANCEL)
        self.state = StreamState.CANCELLED
        return self._next(CANCEL, control={"reason": reason or "canceled"})

    def end(self) -> Frame:
        if self.ended:
            raise StreamStateError("the stream already ended")
        self.ended = True
        if self.state in _OPEN:
            self.state = StreamState.COMPLETED
        return self._next(END, control={"final": True, "total_count": self.data_count})

    def mark_cancelled(self) -> None:
        """End the life cycle without frames (the client went away: nobody to tell)."""
        if self.state in _OPEN:
            self.state = StreamState.CANCELLED
        self.ended = True
