"""Request and response envelopes and the structures they carry (PROTOCOL.md section 2)."""

from __future__ import annotations

import re
import uuid
from enum import IntEnum, StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# \Z, not $: "$" also matches before a trailing newline ("...\n" would pass)
METHOD_PATTERN = re.compile(r"^rpc\.v2/([A-Za-z_][A-Za-z0-9_.\-]*)/([A-Za-z_][A-Za-z0-9_\-]*)\Z")
_HEX32 = re.compile(r"^[0-9a-f]{32}\Z")
_HEX16 = re.compile(r"^[0-9a-f]{16}\Z")
_VERSION = re.compile(r"^\d{1,4}\.\d{1,4}\Z")


def parse_method(method: str) -> tuple[str, str] | None:
    """Split ``rpc.v2/{service}/{handler}`` into (service, handler); None if malformed."""
    m = METHOD_PATTERN.match(method)
    return (m.group(1), m.group(2)) if m else None


class _Model(BaseModel):
    # Unknown members are ignored, never rejected (PROTOCOL.md section 2).
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TraceContext(_Model):
    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    sampled: bool = True
    baggage: dict[str, str] = Field(default_factory=dict)

    @field_validator("trace_id")
    @classmethod
    def _trace_id(cls, v: str) -> str:
        if not _HEX32.match(v) or v == "0" * 32:
            raise ValueError("trace_id must be 32 lowercase hex characters, not all zero")
        return v

    @field_validator("span_id")
    @classmethod
    def _span_id(cls, v: str) -> str:
        if not _HEX16.match(v) or v == "0" * 16:
            raise ValueError("span_id must be 16 lowercase hex characters, not all zero")
        return v

    @field_validator("parent_span_id")
    @classmethod
    def _parent(cls, v: str | None) -> str | None:
        if v is not None and (not _HEX16.match(v) or v == "0" * 16):
            raise ValueError("parent_span_id must be 16 lowercase hex characters")
        return v

    @field_validator("baggage", mode="before")
    @classmethod
    def _baggage(cls, v: Any) -> Any:
        return {} if v is None else v


class AuthScheme(StrEnum):
    BEARER = "bearer"
    API_KEY = "api_key"
    MTLS = "mtls"


class AuthContext(_Model):
    scheme: AuthScheme | None = None
    # A secret: never logged (SecretStr hides it in repr) and never echoed.
    credentials: SecretStr | None = None
    principal: str | None = None
    roles: list[str] = Field(default_factory=list)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, v: Any) -> Any:
        return [] if v is None else v


class RequestMetadata(_Model):
    timestamp_ms: int | None = None
    client_id: str | None = None
    client_version: str | None = None
    auth: AuthContext | None = None
    tenant_id: str | None = None
    content_type: str | None = None
    accept: list[str] | None = None
    compression: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        return {} if v is None else v


_new_model = object.__new__
_set_attr = object.__setattr__
# BaseModel's slots, set through their descriptors (what object.__setattr__ finds for them)
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_MD_STATIC = {n: f.default for n, f in RequestMetadata.model_fields.items()
              if f.default_factory is None}
_MD_FACTORIES = tuple((n, f.default_factory) for n, f in RequestMetadata.model_fields.items()
                      if f.default_factory is not None)


def stamped_metadata(timestamp_ms: int) -> RequestMetadata:
    """``RequestMetadata(timestamp_ms=timestamp_ms)``, built from the model's own field
    defaults without a validation pass (the server's metadata for an envelope that
    sent none; equal to the validated one, at a third of the cost)."""
    values = _MD_STATIC.copy()
    for name, factory in _MD_FACTORIES:
        values[name] = factory()  # type: ignore[call-arg]
    values["timestamp_ms"] = timestamp_ms
    md = _new_model(RequestMetadata)
    _set_attr(md, "__dict__", values)
    _set_fields_set(md, {"timestamp_ms"})
    _set_extra(md, None)
    _set_private(md, None)
    return md


def stamp_metadata(env: RpcRequest, timestamp_ms: int) -> None:
    """``env.metadata = stamped_metadata(timestamp_ms)``, set as ``BaseModel.__setattr__``
    sets a field (no validation on assignment): the value, and the name in the fields set."""
    env.__dict__["metadata"] = stamped_metadata(timestamp_ms)
    env.__pydantic_fields_set__.add("metadata")


def split_valid_method(method: str) -> tuple[str, str]:
    """(service, handler) of a method name that already matched :data:`METHOD_PATTERN`
    (e.g. a validated ``RpcRequest.method``): neither part can contain ``/``, so a split
    gives :func:`parse_method`'s groups without a second regex match."""
    _, service, handler = method.split("/")
    return service, handler


class Pagination(_Model):
    total: int | None = None
    page: int | None = None
    page_size: int | None = None
    has_next: bool | None = None
    cursor: str | None = None


class RateLimitInfo(_Model):
    limit: int
    remaining: int
    reset_at_ms: int


class ResponseMetadata(_Model):
    timestamp_ms: int | None = None
    duration_ms: int | None = None
    server_id: str | None = None
    server_version: str | None = None
    pagination: Pagination | None = None
    rate_limit: RateLimitInfo | None = None
    headers: dict[str, str] | None = None


class Priority(IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class RetryConfig(_Model):
    max_attempts: int = Field(3, ge=1, le=100)
    initial_delay_ms: int = Field(100, ge=0)
    max_delay_ms: int = Field(10000, ge=0)
    backoff_multiplier: float = Field(2.0, ge=1.0)
    retryable_codes: list[int] | None = None


class QosConfig(_Model):
    priority: Priority = Priority.NORMAL
    timeout_ms: int | None = Field(None, ge=0)
    retry: RetryConfig | None = None
    idempotency_key: str | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        return Priority.NORMAL if v is None else v


class ErrorDetail(_Model):
    type: str = "error"
    field: str | None = None
    reason: str = ""
    metadata: dict[str, Any] | None = None


class DebugInfo(_Model):
    stack_trace: str | None = None
    internal_message: str | None = None
    timestamp_ms: int | None = None


class RpcErrorModel(_Model):
    code: int
    name: str
    message: str
    details: list[ErrorDetail] | None = None
    debug: DebugInfo | None = None


#: Method names that passed the ``method`` check, so that a name seen before costs a set
#: lookup rather than a regex match. Bounded: past the bound names are checked every time
#: (whatever a client sends, at most this many names of at most 256 characters are kept).
_VALID_METHODS: set[str] = set()
_MAX_VALID_METHODS = 1024


def _new_id() -> str:
    return str(uuid.uuid4())


class RpcRequest(_Model):
    """The request envelope. A missing ``id`` is generated (UUID v4) and echoed."""

    aduib_rpc: str = "2.0"
    id: str = Field(default_factory=_new_id)
    method: str
    name: str | None = None
    data: dict[str, Any] | None = None
    supported_versions: list[str] | None = None
    trace_context: TraceContext | None = None
    metadata: RequestMetadata | None = None
    qos: QosConfig | None = None
    # 2.0.1 clients send ``meta`` (headers, timeout_ms, stream); kept for the
    # layers that honour it (meta.timeout_ms acts like qos.timeout_ms).
    meta: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> Any:
        if v is None or v == "":
            return _new_id()
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("aduib_rpc", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if v is None or v == "2.0":
            return "2.0"
        if isinstance(v, str) and not _VERSION.match(v):
            raise ValueError("aduib_rpc must be a MAJOR.MINOR version string")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v in _VALID_METHODS:
            return v
        if len(v) > 256 or not METHOD_PATTERN.match(v):
            raise ValueError("method must have the form rpc.v2/{service}/{handler}")
        if len(_VALID_METHODS) < _MAX_VALID_METHODS:
            _VALID_METHODS.add(v)
        return v

    @field_validator("supported_versions")
    @classmethod
    def _supported(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for item in v:
                if not _VERSION.match(item):
                    raise ValueError(f"version {item!r} is not MAJOR.MINOR")
        return v

    @field_validator("trace_context", mode="wrap")
    @classmethod
    def _trace(cls, v: Any, handler: Any) -> Any:
        # An invalid trace context is ignored (new trace), never an error.
        try:
            return handler(v)
        except ValidationError:
            return None

    @property
    def service_and_handler(self) -> tuple[str, str] | None:
        return parse_method(self.method)


class RpcResponse(_Model):
    aduib_rpc: str = "2.0"
    id: str | None = None
    status: Literal["success", "error", "partial"] = "success"
    result: Any = None
    error: RpcErrorModel | None = None
    negotiated_version: str | None = None
    trace_context: TraceContext | None = None
    metadata: ResponseMetadata | None = None

    @model_validator(mode="after")
    def _one_of(self) -> RpcResponse:
        if self.result is not None and self.error is not None:
            raise ValueError("a response carries result or error, not both")
        if self.status == "error" and self.error is None:
            raise ValueError("an error response carries error")
        return self
