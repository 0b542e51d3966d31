"""ServiceCapabilities and MethodDescriptor (PROTOCOL.md section 1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class MethodDescriptor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    service: str
    handler: str
    streaming: bool = False
    client_streaming: bool = False
    idempotent: bool = False
    deprecated: bool = False
    sunset: str | None = None
    versions: list[str] = Field(default_factory=list)
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None


class ServiceCapabilities(BaseModel):
    model_config = ConfigDict(extra="ignore")

    protocol_versions: list[str]
    content_types: list[str]
    compressions: list[str]
    streaming: bool = True
    bidirectional: bool = False
    methods: list[MethodDescriptor] = Field(default_factory=list)
