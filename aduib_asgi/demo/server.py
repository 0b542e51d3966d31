"""Building the demo application: the full default stack over the demo services."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp

from aduib_asgi.demo.security import demo_auth_options
from aduib_asgi.demo.services import register_demo_services
from aduib_asgi.demo.stats import DemoStats, install_stats_route, stats_enabled
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.extras import MissingExtra
from aduib_asgi.health import install_health_service
from aduib_asgi.identity import ClientIdentityMiddleware
from aduib_asgi.middleware.admission import AdmissionMiddleware
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.circuit import CircuitBreakerMiddleware
from aduib_asgi.middleware.compression import CompressionMiddleware
from aduib_asgi.middleware.content import ContentNegotiationMiddleware
from aduib_asgi.middleware.deadline import DeadlineMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.middleware.ratelimit import RateLimitMiddleware, policies_from_registry
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware
from aduib_asgi.observability.metrics import (
    PrometheusApp,
    RpcMetrics,
    prometheus_meter_provider,
)
from aduib_asgi.qos import BreakerSettings, ShutdownController
from aduib_asgi.stack import Layer, build_stack
from aduib_asgi.storage import idempotency_store_from_url
from aduib_asgi.storage.budget import DEFAULT_PER_TENANT, DEFAULT_TOTAL, ByteBudget
from aduib_asgi.streaming.cancel_bus import install_cancel_bus
from aduib_asgi.tasks import install_task_service

__all__ = ["DemoConfig", "build_demo_app"]

logger = logging.getLogger("aduib_asgi.demo")


@dataclass
class DemoConfig:
    """The demo's settings (command-line flags of ``aduib-asgi demo``)."""

    #: "prod" (default) hides debug details; "dev" adds tracebacks to error envelopes.
    env: str = "prod"
    redis_url: str | None = None
    stream_framing: str = "message"
    heartbeat: float = 15.0
    #: Bytes of stored state (idempotency records, task records, rate-limit buckets)
    #: one tenant may hold, and all tenants together (docs/limits.md).
    tenant_budget: int = DEFAULT_PER_TENANT
    total_budget: int = DEFAULT_TOTAL
    #: Largest response the idempotency layer stores for replay.
    replay_limit: int = 1024 * 1024
    #: Draining state shared with the CLI's SIGTERM handler (graceful shutdown).
    shutdown: ShutdownController = field(default_factory=ShutdownController)
    #: Client certificates identify callers (``--tls-client-ca``).
    mtls: bool = False
    #: Every request needs a verified client certificate (``--tls-require-client-cert``).
    mtls_required: bool = False
    #: ``{principal or SAN: [roles]}`` for certificate callers (``--mtls-role``).
    mtls_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Proxies (IPs/CIDRs) whose forwarded client address and certificate count
    #: (``--trusted-proxy``, the identity layer); empty: the client is the peer.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def debug(self) -> bool:
        return self.env == "dev"


def build_demo_app(config: DemoConfig | None = None) -> ASGIApp:
    """The demo ASGI app: every middleware, in the default order, over the dispatcher."""
    config = config or DemoConfig()
    registry = MethodRegistry()
    stats = DemoStats()
    register_demo_services(registry, stats)
    dispatcher = RpcDispatcher(registry, debug=config.debug)
    dispatcher.streaming.configure(default_framing=config.stream_framing,
                                   heartbeat_interval=config.heartbeat)
    install_health_service(dispatcher)
    # One byte budget for every store of client-driven state: in this process for
    # the memory stores, in Redis (shared by the instances) with --redis.
    limits = {"per_tenant": config.tenant_budget, "total": config.total_budget}
    budget = ByteBudget(**limits)
    shared: dict[str, Any] = limits if config.redis_url else {"budget": budget}
    store = config.redis_url or "memory://"
    tasks = install_task_service(dispatcher, store, store_options=shared)
    if config.redis_url:  # rpc/cancel reaches calls on every instance sharing the Redis
        install_cancel_bus(dispatcher, config.redis_url)
    # GET /aduib_rpc/metrics: Prometheus exposition of the RPC metrics (the
    # `prometheus` extra; without it the demo runs with metrics off and says so).
    meter_provider = None
    try:
        meter_provider, prom_registry = prometheus_meter_provider()
    except MissingExtra as exc:
        logger.warning("metrics off: %s", exc)
    else:
        dispatcher.add_route("/metrics", PrometheusApp(prom_registry).endpoint,
                             methods=("GET", "HEAD"))
    layers = [
        Layer.of(ErrorMappingMiddleware, debug=config.debug),
        # who the client is (aduib_asgi.identity): its address and certificate, through
        # trusted proxies only
        *([Layer.of(ClientIdentityMiddleware, trusted_proxies=config.trusted_proxies)]
          if config.trusted_proxies else []),
        Layer.of(CompressionMiddleware),
        Layer.of(ContentNegotiationMiddleware),
        Layer.of(VersionNegotiationMiddleware),
        # Spans (when an OTel SDK is configured) and the RPC metrics.
        Layer.of(TracePropagationMiddleware, metrics=RpcMetrics(meter_provider)),
        Layer.of(TenantScopeMiddleware, default="default"),
        # DEMO.md credentials; Admin/secret's roles=["admin"] option is read from the registry.
        Layer.of(AuthMiddleware, **demo_auth_options(
            registry, mtls=config.mtls or bool(config.trusted_proxies),
            mtls_required=config.mtls_required,
            mtls_roles=config.mtls_roles)),
        # Limited/ping: 3 per 10 s per tenant (its rate_limit option); shared via --redis.
        Layer.of(RateLimitMiddleware, policies=policies_from_registry(registry),
                 storage=store, storage_options=None if config.redis_url else shared),
        Layer.of(DeadlineMiddleware, max_timeout_ms=300_000, registry=registry),
        Layer.of(AdmissionMiddleware, registry=registry, shutdown=config.shutdown),
        Layer.of(IdempotencyMiddleware, store=idempotency_store_from_url(store, **shared),
                 max_body_size=config.replay_limit),
        # Echo/fail answers whatever code it is asked for: exempt from breaking.
        Layer.of(CircuitBreakerMiddleware, registry=registry,
                 settings=BreakerSettings(min_requests=50, window_s=10.0, open_s=5.0),
                 overrides={"rpc.v2/Echo/fail": None}),
    ]
    app = build_stack(dispatcher, layers)
    if stats_enabled():  # GET /aduib_rpc/debug/stats, only with ADUIB_DEMO_STATS=1
        install_stats_route(dispatcher, stats, tasks, lambda: app)
    return app
