"""Health service models (PROTOCOL.md section 10)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class HealthCheckRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    service: str | None = None


class HealthCheckResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: HealthStatus = HealthStatus.UNKNOWN
    services: dict[str, HealthStatus] | None = None
