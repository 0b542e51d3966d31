"""Observability: structured logs, RPC metrics, audit events, response outcome."""

from aduib_asgi.observability.audit import (
    AuditEvent,
    AuditSink,
    CollectingAuditSink,
    LoggingAuditSink,
)
from aduib_asgi.observability.logs import (
    CONTEXT_FIELDS,
    JsonFormatter,
    RequestContextFilter,
    add_request_context,
    configure_logging,
)
from aduib_asgi.observability.metrics import RpcMetrics, prometheus_meter_provider

__all__ = [
    "CONTEXT_FIELDS",
    "AuditEvent",
    "AuditSink",
    "CollectingAuditSink",
    "JsonFormatter",
    "LoggingAuditSink",
    "RequestContextFilter",
    "RpcMetrics",
    "add_request_context",
    "configure_logging",
    "prometheus_meter_provider",
]
