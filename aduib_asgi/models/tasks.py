"""Task service models (PROTOCOL.md section 10, wire_contract.md section 5)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aduib_asgi.models.envelope import Priority


class TaskStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


class TaskEventType(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


INT64_MAX = 2**63 - 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskProgress(_Model):
    # Integers: the 2.0.1 client requires both ``current`` and ``total`` as ints.
    current: int = 0
    total: int = 0
    message: str | None = None
    percentage: float | None = None


def _priority(v: Any) -> Any:
    # The 2.0.1 client sends a one-element list ``[n]`` by default.
    if isinstance(v, list | tuple):
        if len(v) != 1:
            raise ValueError("priority must be an int 0-3 or a one-element list")
        v = v[0]
    return Priority.NORMAL if v is None else v


class TaskSubmitRequest(_Model):
    target_method: str
    params: dict[str, Any] | None = None
    priority: Priority = Priority.NORMAL
    max_attempts: int = Field(1, ge=1, le=100)
    # int64 bounds (the .proto's type): larger values used to kill the workers.
    timeout_ms: int | None = Field(None, ge=0, le=INT64_MAX)
    scheduled_at_ms: int | None = Field(None, ge=-INT64_MAX, le=INT64_MAX)
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None

    _p = field_validator("priority", mode="before")(_priority)


class TaskSubmitResponse(_Model):
    task_id: str
    status: TaskStatus
    created_at_ms: int


class TaskRecord(_Model):
    task_id: str
    target_method: str | None = None
    params: dict[str, Any] | None = None
    status: TaskStatus = TaskStatus.PENDING
    priority: Priority = Priority.NORMAL
    created_at_ms: int
    scheduled_at_ms: int | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    attempt: int = 0
    max_attempts: int = 1
    next_retry_at_ms: int | None = None
    timeout_ms: int | None = None
    progress: TaskProgress | None = None
    result: Any = None
    error: Any = None
    tenant_id: str | None = None
    metadata: dict[str, Any] | None = None

    _p = field_validator("priority", mode="before")(_priority)


class TaskQueryRequest(_Model):
    task_id: str


class TaskQueryResponse(_Model):
    task: TaskRecord


class TaskCancelRequest(_Model):
    task_id: str
    reason: str | None = None


class TaskCancelResponse(_Model):
    task_id: str
    status: TaskStatus
    canceled: bool


class TaskSubscribeRequest(_Model):
    task_id: str
    events: list[TaskEventType] | None = None


class TaskEvent(_Model):
    event: str
    task: TaskRecord
    timestamp_ms: int
