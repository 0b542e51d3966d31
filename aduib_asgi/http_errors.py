"""Plain HTTP error responses of a wrapped app, as error-table errors.

A Starlette or FastAPI app answers its own ``HTTPException`` (and FastAPI its
request-validation errors) inside the app, so the exception never reaches the
error layer: what reaches it is a response. :func:`error_from_response` reads
such a response - Starlette's ``text/plain`` detail, FastAPI's ``{"detail": ...}``
JSON - and returns the :class:`~aduib_asgi.errors.RpcError` to answer instead,
with the same HTTP status (docs/fastapi.md has the table). Our own envelopes and
any other body are left alone (None).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aduib_asgi.errors import RpcError

__all__ = ["MAX_MAPPED_BODY", "STATUS_CODES", "error_from_response", "is_mappable"]

#: HTTP status → error code (same status kept); other 4xx → 2000, other 5xx → 5000.
STATUS_CODES: dict[int, int] = {
    400: 2000, 401: 3000, 403: 3011, 404: 4000, 405: 2000, 406: 1003, 409: 4011,
    410: 4020, 413: 2004, 415: 1003, 422: 2001, 429: 5020, 500: 5000, 501: 5001,
    502: 6000, 503: 5002, 504: 5003,
}
#: Larger error bodies are passed through as they are.
MAX_MAPPED_BODY = 64 * 1024

_DROP = frozenset({b"content-type", b"content-length", b"content-encoding",
                   b"transfer-encoding"})


def _content_type(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


def is_mappable(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response start may be a plain HTTP error worth holding back."""
    return status >= 400 and _content_type(headers) in (b"application/json", b"text/plain")


def _field(loc: Any) -> str:
    if isinstance(loc, list | tuple):
        return ".".join(str(p) for p in loc)
    return str(loc)


def _validation_details(items: list[Any]) -> list[dict[str, Any]]:
    """FastAPI's ``exc.errors()`` as detail entries (never the offending input)."""
    return [{"type": str(i.get("type", "value_error")), "field": _field(i.get("loc", "")),
             "reason": str(i.get("msg", ""))} for i in items if isinstance(i, dict)]


def error_from_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes
                        ) -> tuple[RpcError, list[tuple[bytes, bytes]]] | None:
    """The error (and the headers to keep) for a plain HTTP error response, else None."""
    ctype = _content_type(headers)
    message: str | None = None
    details: list[dict[str, Any]] | None = None
    if ctype == b"application/json":
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        if not isinstance(doc, dict) or set(doc) != {"detail"}:
            return None  # our envelope, or the app's own error body
        detail = doc["detail"]
        if isinstance(detail, list):
            details = _validation_details(detail)
        elif isinstance(detail, str):
            message = detail
    elif ctype == b"text/plain":
        message = body.decode("utf-8", "replace").strip() or None
    else:
        return None
    code = STATUS_CODES.get(status, 2000 if status < 500 else 5000)
    if status >= 500:
        message = None  # the table's generic message: never an internal text
    elif code == 2001 and details:
        message = "Invalid request"
    kept = [(n, v) for n, v in headers if n.lower() not in _DROP]
    return RpcError(code, message, details=details, http_status=status), kept
