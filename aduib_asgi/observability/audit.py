"""Audit events for authentication and authorization decisions, through a pluggable sink.

An :class:`AuditEvent` never carries credentials: only who (principal, scheme,
and for certificate callers the certificate's subject, issuer, serial and SHA-256
fingerprint, never the PEM),
what (method, tenant, request id) and the outcome (``allow``/``deny`` and the
error code). The default sink logs one structured record per event on the
``aduib_asgi.audit`` logger (``record.audit`` holds the event as a dict).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from aduib_asgi.logsafe import safe

__all__ = ["AuditEvent", "AuditSink", "CollectingAuditSink", "LoggingAuditSink"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One AuthN/AuthZ decision."""

    outcome: str  # "allow" | "deny"
    code: int  # 0 when allowed, else the error code sent
    request_id: str | None
    method: str | None
    tenant_id: str | None
    principal: str | None
    scheme: str | None
    reason: str = ""
    timestamp_ms: int = 0
    #: The client's address through trusted proxies (aduib_asgi.identity), when known.
    client: str | None = None
    #: the caller's verified client certificate (never the certificate itself)
    cert_subject: str | None = None
    cert_issuer: str | None = None
    cert_serial: str | None = None
    cert_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditSink(Protocol):
    """Receives audit events; must be quick and must not raise (errors are logged)."""

    def __call__(self, event: AuditEvent) -> None: ...


class LoggingAuditSink:
    """Default sink: one log record per event (``allow`` at INFO, ``deny`` at WARNING)."""

    def __init__(self, logger: logging.Logger | str = "aduib_asgi.audit") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def __call__(self, event: AuditEvent) -> None:
        level = logging.INFO if event.outcome == "allow" else logging.WARNING
        if self.logger.isEnabledFor(level):
            self.logger.log(
                level, "auth %s %s principal=%s scheme=%s code=%s client=%s%s", event.outcome,
                safe(event.method), safe(event.principal), safe(event.scheme), event.code,
                safe(event.client),
                (f" cert_subject={safe(event.cert_subject)!r}"
                 f" cert_issuer={safe(event.cert_issuer)!r}"
                 f" cert_serial={event.cert_serial} cert_sha256={event.cert_sha256}")
                if event.cert_sha256 else "",
                extra={"audit": event.as_dict()},
            )


class CollectingAuditSink:
    """Keeps events in a list (tests, or forwarding in batches); bounded."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.events: list[AuditEvent] = []
        self.maxlen = maxlen

    def __call__(self, event: AuditEvent) -> None:
        if len(self.events) < self.maxlen:
            self.events.append(event)


def now_ms() -> int:
    return int(time.time() * 1000)


AuditCallable = Callable[[AuditEvent], None]
