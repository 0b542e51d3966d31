"""StreamMessage frames (PROTOCOL.md section 5)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from aduib_asgi.models.envelope import RpcErrorModel


class StreamMessageType(StrEnum):
    DATA = "data"
    PARTIAL = "partial"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    END = "end"
    CANCEL = "cancel"
    ACK = "ack"


class StreamControl(BaseModel):
    model_config = ConfigDict(extra="ignore")

    final: bool | None = None
    total_count: int | None = None
    ping_id: str | None = None
    reason: str | None = None
    ack_sequence: int | None = None


class StreamPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: Any = None
    error: RpcErrorModel | None = None
    control: StreamControl | None = None


class StreamMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: StreamMessageType
    sequence: int
    timestamp_ms: int
    payload: StreamPayload = StreamPayload()
