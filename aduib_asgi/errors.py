"""The one error table of the Aduib RPC Protocol v2 (PROTOCOL.md section 3).

Every middleware and the dispatcher produce errors from this module only:
raise :class:`RpcError` (or a family subclass) with a code, and the table gives
the name, the HTTP status, the gRPC status, whether it is retryable and the log
level. Nothing else in the package maps codes to statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR_TABLE",
    "AuthenticationError",
    "AuthorizationError",
    "ClientError",
    "DependencyError",
    "ErrorSpec",
    "NotFoundError",
    "ProtocolError",
    "RpcError",
    "ServerError",
    "error_spec",
    "http_status_for",
]


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One row of the error table."""

    code: int
    name: str
    message: str
    http_status: int
    grpc_status: str
    retryable: bool
    log_level: int


def _row(
    code: int,
    name: str,
    message: str,
    http: int,
    grpc: str,
    retryable: bool = False,
    level: int = logging.INFO,
) -> ErrorSpec:
    return ErrorSpec(code, name, message, http, grpc, retryable, level)


_W = logging.WARNING
_E = logging.ERROR

ERROR_TABLE: dict[int, ErrorSpec] = {
    s.code: s
    for s in (
        _row(1000, "PROTOCOL_ERROR", "Protocol error", 400, "INVALID_ARGUMENT"),
        _row(1001, "UNSUPPORTED_VERSION", "Unsupported protocol version", 400,
             "FAILED_PRECONDITION"),
        _row(1002, "INVALID_MESSAGE", "Invalid message", 400, "INVALID_ARGUMENT"),
        _row(1003, "SERIALIZATION_ERROR", "Serialization error", 400, "INVALID_ARGUMENT"),
        _row(1004, "COMPRESSION_ERROR", "Compression error", 400, "INVALID_ARGUMENT"),
        _row(2000, "BAD_REQUEST", "Bad request", 400, "INVALID_ARGUMENT"),
        _row(2001, "INVALID_PARAMS", "Invalid params", 400, "INVALID_ARGUMENT"),
        _row(2002, "MISSING_REQUIRED_FIELD", "Missing required field", 400, "INVALID_ARGUMENT"),
        _row(2003, "INVALID_FIELD_VALUE", "Invalid field value", 400, "INVALID_ARGUMENT"),
        _row(2004, "REQUEST_TOO_LARGE", "Request too large", 413, "RESOURCE_EXHAUSTED"),
        _row(3000, "UNAUTHENTICATED", "Authentication required", 401, "UNAUTHENTICATED"),
        _row(3001, "INVALID_TOKEN", "Invalid token", 401, "UNAUTHENTICATED"),
        _row(3002, "TOKEN_EXPIRED", "Token expired", 401, "UNAUTHENTICATED"),
        _row(3010, "UNAUTHORIZED", "Unauthorized", 403, "PERMISSION_DENIED"),
        _row(3011, "PERMISSION_DENIED", "Permission denied", 403, "PERMISSION_DENIED"),
        _row(3012, "INSUFFICIENT_SCOPE", "Insufficient scope", 403, "PERMISSION_DENIED"),
        _row(4000, "NOT_FOUND", "Not found", 404, "NOT_FOUND"),
        _row(4001, "METHOD_NOT_FOUND", "Method not found", 404, "NOT_FOUND"),
        _row(4002, "SERVICE_NOT_FOUND", "Service not found", 404, "NOT_FOUND"),
        _row(4010, "ALREADY_EXISTS", "Already exists", 409, "ALREADY_EXISTS"),
        _row(4011, "CONFLICT", "Conflict", 409, "ABORTED"),
        _row(4020, "GONE", "Gone", 410, "NOT_FOUND"),
        _row(5000, "INTERNAL_ERROR", "Internal server error", 500, "INTERNAL", level=_E),
        _row(5001, "NOT_IMPLEMENTED", "Not implemented", 501, "UNIMPLEMENTED", level=_W),
        _row(5002, "SERVICE_UNAVAILABLE", "Service unavailable", 503, "UNAVAILABLE", True, _W),
        _row(5003, "TIMEOUT", "Deadline exceeded", 504, "DEADLINE_EXCEEDED", True, _W),
        _row(5010, "CIRCUIT_BREAKER_OPEN", "Circuit breaker open", 503, "UNAVAILABLE", True, _W),
        _row(5020, "RATE_LIMITED", "Rate limited", 429, "RESOURCE_EXHAUSTED", True),
        _row(5021, "RESOURCE_EXHAUSTED", "Resource exhausted", 429, "RESOURCE_EXHAUSTED", True),
        _row(6000, "DEPENDENCY_ERROR", "Dependency error", 502, "UNAVAILABLE", True, _E),
        _row(6001, "UPSTREAM_TIMEOUT", "Upstream timeout", 504, "DEADLINE_EXCEEDED", True, _W),
        _row(6002, "UPSTREAM_UNAVAILABLE", "Upstream unavailable", 503, "UNAVAILABLE", True, _W),
    )
}

# Range fallback for codes that are not in the table (PROTOCOL.md section 3).
_RANGES: tuple[tuple[int, int, str, int, str, bool, int], ...] = (
    (1000, 2999, "BAD_REQUEST", 400, "INVALID_ARGUMENT", False, logging.INFO),
    (3000, 3009, "UNAUTHENTICATED", 401, "UNAUTHENTICATED", False, logging.INFO),
    (3010, 3999, "UNAUTHORIZED", 403, "PERMISSION_DENIED", False, logging.INFO),
    (4000, 4999, "NOT_FOUND", 404, "NOT_FOUND", False, logging.INFO),
    (5000, 5999, "INTERNAL_ERROR", 500, "INTERNAL", False, logging.ERROR),
    (6000, 6999, "DEPENDENCY_ERROR", 502, "UNAVAILABLE", True, logging.ERROR),
)

_FALLBACK_CACHE: dict[int, ErrorSpec] = {}


def error_spec(code: int) -> ErrorSpec:
    """The table row for ``code``; unknown codes fall back to their range."""
    spec = ERROR_TABLE.get(code)
    if spec is not None:
        return spec
    spec = _FALLBACK_CACHE.get(code)
    if spec is not None:
        return spec
    for lo, hi, name, http, grpc, retryable, level in _RANGES:
        if lo <= code <= hi:
            spec = ErrorSpec(code, name, name.replace("_", " ").capitalize(), http, grpc,
                             retryable, level)
            break
    else:
        spec = ErrorSpec(code, "INTERNAL_ERROR", "Internal server error", 500, "INTERNAL",
                         False, logging.ERROR)
    if len(_FALLBACK_CACHE) < 1024:
        _FALLBACK_CACHE[code] = spec
    return spec


def http_status_for(code: int) -> int:
    """The HTTP status for an error code (range fallback included)."""
    return error_spec(code).http_status


class RpcError(Exception):
    """An error from the table: carries code, message, details and HTTP extras.

    ``details`` is a list of ``{type, field, reason, metadata}`` dicts.
    ``headers`` are extra response headers (``Retry-After``, ``WWW-Authenticate``,
    ``Accept-Encoding``...). ``http_status`` overrides the table's status only
    where the table itself names an alternative (415/406 for 1003/1004, 422 for
    an idempotency key reused with another payload).
    """

    default_code = 5000

    def __init__(
        self,
        code: int | None = None,
        message: str | None = None,
        *,
        details: Iterable[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        http_status: int | None = None,
    ) -> None:
        self.code = self.default_code if code is None else int(code)
        self.spec = error_spec(self.code)
        self.message = message if message is not None else self.spec.message
        self.details: list[dict[str, Any]] = [dict(d) for d in details] if details else []
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.http_status = http_status if http_status is not None else self.spec.http_status
        super().__init__(self.message)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def retryable(self) -> bool:
        return self.spec.retryable

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` member of a response envelope (without ``debug``)."""
        out: dict[str, Any] = {"code": self.code, "name": self.name, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r})"


class ProtocolError(RpcError):
    """1xxx: the message could not be understood at the protocol level."""

    default_code = 1000


class ClientError(RpcError):
    """2xxx: the request is well-formed but its content is wrong."""

    default_code = 2000


class AuthenticationError(RpcError):
    """3000-3009: who the caller is could not be established."""

    default_code = 3000


class AuthorizationError(RpcError):
    """3010-3999: the caller may not do this."""

    default_code = 3010


class NotFoundError(RpcError):
    """4xxx: the target does not exist (or conflicts, or is gone)."""

    default_code = 4000


class ServerError(RpcError):
    """5xxx: the server failed or refused for its own reasons."""

    default_code = 5000


class DependencyError(RpcError):
    """6xxx: something the server depends on failed."""

    default_code = 6000


def detail(reason: str, *, field: str | None = None, type: str = "error",
           metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build one ``details`` entry."""
    out: dict[str, Any] = {"type": type, "reason": reason}
    if field is not None:
        out["field"] = field
    if metadata:
        out["metadata"] = dict(metadata)
    return out


def details_from_validation(exc: Any, *, prefix: str = "") -> list[dict[str, Any]]:
    """One ``details`` entry per field of a pydantic ``ValidationError``."""
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        out.append(detail(str(err.get("msg", "invalid")), field=field or None,
                          type=str(err.get("type", "validation"))))
    return out
