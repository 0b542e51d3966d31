"""Models describing the demo methods' ``data`` and results (DEMO.md), for OpenAPI.

They are registered as ``doc_input``/``doc_output`` options: they document the
methods without validating them, so the handlers' own checks (2003 with a
``details`` entry) stay the demo's contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BigIn", "BigOut", "ContextOut", "FailIn", "IncrIn", "IncrOut", "OldOut", "PingOut",
    "SecretOut", "SleepIn", "SleepOut", "StreamIn", "StreamItem", "WorkIn", "WorkOut",
]


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")  # other members are ignored


class SleepIn(_In):
    ms: float = Field(0, ge=0, description="How long to sleep, in milliseconds (cancellable).")


class SleepOut(BaseModel):
    slept_ms: float


class FailIn(_In):
    code: int = Field(5000, description="The error code to answer (its table row's status).")
    message: str | None = Field(None, description="The error message (default: the table's).")


class BigIn(_In):
    size: int = Field(1024, ge=0, le=64 * 1024 * 1024, description="Bytes of text to return.")


class BigOut(BaseModel):
    text: str


class ContextOut(BaseModel):
    tenant_id: str | None
    principal: str | None
    roles: list[str]
    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    negotiated_version: str | None
    priority: int | None
    deadline_remaining_ms: int | None
    request_id: str | None
    content_type: str
    accept: str


class IncrIn(_In):
    by: int = Field(1, ge=0, description="Added to the caller's tenant's counter.")


class IncrOut(BaseModel):
    value: int


class SecretOut(BaseModel):
    secret: str


class OldOut(BaseModel):
    old: bool


class WorkIn(_In):
    ms: float = Field(0, ge=0, description="How long the work takes, in milliseconds.")
    tag: Any = Field(None, description="Returned as `done`.")


class WorkOut(BaseModel):
    done: Any = None


class StreamIn(_In):
    count: int = Field(1, ge=0, description="How many data frames.")
    interval_ms: float = Field(0, ge=0, description="Pause between frames.")
    fail_at: int | None = Field(None, ge=0, description="Index at which the stream fails.")
    fail_code: int = Field(5000, description="The code of that failure.")


class StreamItem(BaseModel):
    index: int


class PingOut(BaseModel):
    pong: bool
