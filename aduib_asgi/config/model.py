"""The runtime configuration: a validated pydantic model (OPERATIONS.md section 2).

Every section is optional. A section left out is ``None`` in the model and
means "keep the application's built-in behaviour" for that part; a section
present replaces that part whole (``[auth.api_keys]`` present = exactly those
keys). Unknown keys are refused, so a typo never silently does nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from limits import parse as parse_limit
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aduib_asgi.versioning import parse_version

__all__ = [
    "AdmissionSection",
    "AuthSection",
    "CompressionSection",
    "IdentitySpec",
    "LogSection",
    "PolicySpec",
    "RateLimitSection",
    "RuntimeConfig",
    "ServerSection",
    "TenantSection",
    "VersionsSection",
    "config_version",
]

_STRICT = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_limit(value: str) -> str:
    try:
        parse_limit(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit in the `limits` notation "
                         "(e.g. '3/10 seconds', '100 per minute')") from None
    return value


class ServerSection(BaseModel):
    model_config = _STRICT
    #: ``dev`` shows debug info (stack traces, exception text) in errors; ``prod`` hides it.
    env: Literal["dev", "prod"] = "prod"


class VersionsSection(BaseModel):
    model_config = _STRICT
    supported: tuple[str, ...] = ("2.0", "1.0")

    @field_validator("supported")
    @classmethod
    def _versions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one protocol version is needed")
        for v in value:
            if parse_version(v) is None:
                raise ValueError(f"{v!r} is not a MAJOR.MINOR protocol version")
        return value


class CompressionSection(BaseModel):
    model_config = _STRICT
    #: False: responses are never compressed (compressed requests are still accepted).
    enabled: bool = True
    minimum_size: int = Field(512, ge=0, le=1 << 30)


class IdentitySpec(BaseModel):
    model_config = _STRICT
    principal: str = Field(min_length=1, max_length=256)
    roles: tuple[str, ...] = ()


class AuthSection(BaseModel):
    model_config = _STRICT
    require_auth: bool = False
    anonymous_methods: tuple[str, ...] = ()
    #: ``X-API-Key`` value -> identity (None: keep the application's keys).
    api_keys: dict[str, IdentitySpec] | None = None
    #: static bearer token -> identity (None: keep the application's tokens).
    bearer_tokens: dict[str, IdentitySpec] | None = None
    #: client-certificate identity (principal or any SAN) -> roles.
    mtls_roles: dict[str, tuple[str, ...]] | None = None

    @field_validator("api_keys", "bearer_tokens")
    @classmethod
    def _secrets(cls, value: dict[str, IdentitySpec] | None) -> dict[str, IdentitySpec] | None:
        for secret in value or {}:
            if not secret or len(secret) > 4096 or any(c <= " " or c == "\x7f" for c in secret):
                # a header value cannot carry it; never echo the secret itself
                raise ValueError("a credential must be 1-4096 printable characters "
                                 "without spaces")
        return value


class PolicySpec(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    limit: str
    methods: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    #: what the buckets are partitioned by.
    per: Literal["tenant", "principal", "client", "global"] = "tenant"
    cost: int = Field(1, ge=1, le=1_000_000)

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: str) -> str:
        return _check_limit(value)


class RateLimitSection(BaseModel):
    model_config = _STRICT
    policies: tuple[PolicySpec, ...] = ()

    @field_validator("policies")
    @classmethod
    def _unique(cls, value: tuple[PolicySpec, ...]) -> tuple[PolicySpec, ...]:
        names = [p.name for p in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"policy names must be unique; repeated: {dupes}")
        return value


class TenantSection(BaseModel):
    model_config = _STRICT
    #: policy name -> the limit this tenant gets instead of the policy's.
    ratelimit: dict[str, str] = Field(default_factory=dict)

    @field_validator("ratelimit")
    @classmethod
    def _limits(cls, value: dict[str, str]) -> dict[str, str]:
        for limit in value.values():
            _check_limit(limit)
        return value


class AdmissionSection(BaseModel):
    """Concurrency limits of the admission layer (bulkheads, docs/qos.md)."""

    model_config = _STRICT
    #: Requests of any kind at once (one global bulkhead); left out: no global limit.
    max_concurrency: int | None = Field(default=None, ge=1, le=1_000_000)
    #: method (``rpc.v2/Slow/work``), service (``Slow``) or HTTP path (``/aduib_rpc/v1/rpc``)
    #: -> concurrent calls. A method named here replaces its registered ``concurrency``.
    limits: dict[str, Annotated[int, Field(ge=1, le=1_000_000)]] = Field(default_factory=dict)
    #: Concurrent requests per tenant; left out: no per-tenant limit.
    tenant_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    #: Waiters per bulkhead (priority-ordered); beyond it the lowest priority is shed.
    max_queue: int = Field(default=64, ge=0, le=100_000)
    #: Longest wait for a slot (the request's deadline may end it sooner).
    queue_timeout_s: float = Field(default=10.0, ge=0, le=3600)
    #: ``Retry-After`` of a refusal (429 / 5021, 503 / 5002).
    retry_after_s: int = Field(default=1, ge=0, le=3600)

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: dict[str, int]) -> dict[str, int]:
        for key in value:
            if not key or len(key) > 256:
                raise ValueError("a limit's key (method, service or /path) must be 1-256 "
                                 "characters")
        return value


class LogSection(BaseModel):
    model_config = _STRICT
    level: Literal["debug", "info", "warning", "error", "critical"] = "warning"
    #: rendering of log lines, the access log's included.
    format: Literal["text", "json"] = "text"
    #: one access log line per call (logger ``aduib_asgi.access``, level INFO: it is
    #: written whatever ``level`` says).
    access: bool = True

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class RuntimeConfig(BaseModel):
    """The whole configuration; ``None`` sections keep the built-in behaviour."""

    model_config = _STRICT

    server: ServerSection | None = None
    versions: VersionsSection | None = None
    compression: CompressionSection | None = None
    auth: AuthSection | None = None
    ratelimit: RateLimitSection | None = None
    tenants: dict[str, TenantSection] | None = None
    admission: AdmissionSection | None = None
    log: LogSection | None = None

    @model_validator(mode="after")
    def _overrides_name_policies(self) -> RuntimeConfig:
        # with a [ratelimit] section, an override must name one of its policies
        # (without one, the application checks against its built-in policies)
        if self.ratelimit is not None and self.tenants:
            names = {p.name for p in self.ratelimit.policies}
            for tenant, section in self.tenants.items():
                for policy in section.ratelimit:
                    if policy not in names:
                        raise ValueError(f"tenants.{tenant}.ratelimit.{policy}: no rate-limit "
                                         f"policy named {policy!r}")
        return self

    @property
    def version(self) -> str:
        """A content hash of the configuration (``config_version`` in capabilities)."""
        return config_version(self)


def config_version(config: BaseModel) -> str:
    """sha256 over the canonical JSON of ``config``, first 16 hex digits."""
    blob = json.dumps(config.model_dump(mode="json", exclude_none=True), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
