"""Building the demo application: the full default stack over the demo services.

The stack is split in two (docs/configuration.md):

- long-lived, built once: the dispatcher (services, tasks, health), the
  deadline, admission, idempotency and circuit-breaker layers (their state:
  bulkheads and in-flight counts, the idempotency store, breaker states), the
  rate-limit storage and counters, the metrics instruments; ``[admission]``
  limits are applied to the admission layer in place (:func:`apply_admission`);
- per configuration snapshot (:func:`outer_layers`): the access log, error,
  compression, content, version, trace, tenant, auth and rate-limit layers,
  rebuilt from a new configuration and swapped in by the
  :class:`~aduib_asgi.config.ConfigManager` in one assignment.

Probes (``/aduib_rpc/healthz``, ``/readyz``) are answered in front of both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp

from aduib_asgi.config import ConfigManager, ConfigSource, FileSource, RuntimeConfig
from aduib_asgi.config.model import AdmissionSection
from aduib_asgi.demo.security import demo_auth_options
from aduib_asgi.demo.services import register_demo_services
from aduib_asgi.demo.stats import DemoStats, install_stats_route, stats_enabled
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.extras import MissingExtra
from aduib_asgi.health import ProbeMiddleware, ReadinessMonitor, install_health_service
from aduib_asgi.identity import ClientIdentityMiddleware
from aduib_asgi.middleware.admission import AdmissionMiddleware
from aduib_asgi.middleware.auth import AuthMiddleware
from aduib_asgi.middleware.circuit import CircuitBreakerMiddleware
from aduib_asgi.middleware.compression import CompressionMiddleware
from aduib_asgi.middleware.content import ContentNegotiationMiddleware
from aduib_asgi.middleware.deadline import DeadlineMiddleware
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.idempotency import IdempotencyMiddleware
from aduib_asgi.middleware.ratelimit import (
    RateLimitMiddleware,
    RateLimitPolicy,
    make_limiter,
    policies_from_registry,
)
from aduib_asgi.middleware.ratelimit_tenants import TenantRateLimitMiddleware
from aduib_asgi.middleware.tenant import TenantScopeMiddleware
from aduib_asgi.middleware.trace import TracePropagationMiddleware
from aduib_asgi.middleware.version import VersionNegotiationMiddleware
from aduib_asgi.observability.access import AccessLogMiddleware
from aduib_asgi.observability.metrics import (
    PrometheusApp,
    RpcMetrics,
    prometheus_meter_provider,
)
from aduib_asgi.qos import BreakerSettings, ShutdownController
from aduib_asgi.stack import Layer, build_stack, check_order, dispatcher_facts, fuse
from aduib_asgi.storage import idempotency_store_from_url
from aduib_asgi.storage.budget import DEFAULT_PER_TENANT, DEFAULT_TOTAL, ByteBudget
from aduib_asgi.streaming.cancel_bus import install_cancel_bus
from aduib_asgi.tasks import install_task_service
from aduib_asgi.versioning import DEFAULT_VERSIONS

__all__ = ["DemoConfig", "apply_admission", "build_demo_app", "demo_policies", "outer_layers"]

#: ``per`` of a configured policy -> the rate-limit layer's ``key_by``.
_PER = {"tenant": ("tenant",), "principal": ("principal",), "client": ("client",),
        "global": ()}

logger = logging.getLogger("aduib_asgi.demo")

#: Durations the RPC metrics hold back before recording them through the SDK together.
METRICS_BATCH = 64


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
    #: ``--config PATH``: a TOML (or ``.json``) file, watched and reloaded on SIGHUP.
    config_path: str | None = None
    #: More configuration sources (after the file; later ones win).
    config_sources: Sequence[ConfigSource] = ()
    #: How often the sources are polled for a change (seconds).
    config_poll_s: float = 1.0
    #: Seconds between two readiness checks (``/aduib_rpc/readyz``).
    readiness_interval_s: float = 2.0
    #: Access log rendering when the configuration has no ``[log]`` section.
    log_json: bool = False
    #: One access log line per call when the configuration has no ``[log]`` section
    #: (``--no-access-log``: False). Off, the access layer is left out of the stack
    #: (a ``[log] access = true`` snapshot puts it back).
    access_log: bool = True
    #: Level of the package's loggers when the configuration has no ``[log]``
    #: section (None: leave logging alone).
    log_level: str | None = None
    #: Called with each applied configuration (after the demo's own callbacks).
    on_config: Sequence[Callable[[RuntimeConfig], None]] = ()

    @property
    def debug(self) -> bool:
        return self.env == "dev"


class _ResponsesUncompressed(CompressionMiddleware):
    """``[compression] enabled = false``: compressed requests are still decoded
    (and capped); responses are never compressed."""

    def choose(self, accept_encoding: bytes) -> Any:
        return None

    def from_metadata(self, ctx: Any) -> Any:
        return None


def demo_policies(registry: MethodRegistry, config: RuntimeConfig) -> list[RateLimitPolicy]:
    """The configured ``[[ratelimit.policies]]``, else the demo's built-in ones."""
    if config.ratelimit is None:
        return policies_from_registry(registry)
    return [RateLimitPolicy(name=p.name, limit=p.limit, methods=p.methods,
                            services=p.services, paths=p.paths, key_by=_PER[p.per],
                            cost=p.cost)
            for p in config.ratelimit.policies]


def outer_layers(config: RuntimeConfig, demo: DemoConfig, *, registry: MethodRegistry,
                 metrics: RpcMetrics, storage: Any) -> list[Layer]:
    """The configurable layers (outermost first) for one configuration snapshot."""
    env = config.server.env if config.server is not None else demo.env
    compression = config.compression
    log = config.log
    layers = []
    if log.access if log is not None else demo.access_log:
        json_format = log.format == "json" if log is not None else demo.log_json
        layers.append(Layer.of(AccessLogMiddleware, json_format=json_format))
    policies = demo_policies(registry, config)
    overrides = {t: s.ratelimit for t, s in (config.tenants or {}).items() if s.ratelimit}
    ratelimit = (Layer.of(TenantRateLimitMiddleware, policies=policies, overrides=overrides,
                          storage=storage) if overrides else
                 Layer.of(RateLimitMiddleware, policies=policies, storage=storage))
    layers += [
        Layer.of(ErrorMappingMiddleware, debug=env == "dev"),
        # who the client is (aduib_asgi.identity): its address and certificate, through
        # trusted proxies only
        *([Layer.of(ClientIdentityMiddleware, trusted_proxies=demo.trusted_proxies)]
          if demo.trusted_proxies else []),
        Layer.of(CompressionMiddleware if compression is None or compression.enabled
                 else _ResponsesUncompressed,
                 minimum_size=compression.minimum_size if compression is not None else 512),
        Layer.of(ContentNegotiationMiddleware),
        Layer.of(VersionNegotiationMiddleware,
                 versions=config.versions.supported if config.versions is not None
                 else DEFAULT_VERSIONS),
        # Spans (when an OTel SDK is configured) and the RPC metrics.
        Layer.of(TracePropagationMiddleware, metrics=metrics),
        Layer.of(TenantScopeMiddleware, default="default"),
        # DEMO.md credentials; Admin/secret's roles=["admin"] option is read from the registry.
        Layer.of(AuthMiddleware, **demo_auth_options(
            registry, config.auth, mtls=demo.mtls or bool(demo.trusted_proxies),
            mtls_required=demo.mtls_required, mtls_roles=demo.mtls_roles)),
        # Limited/ping: 3 per 10 s per tenant (its rate_limit option); shared via --redis.
        ratelimit,
    ]
    return layers


def _ratelimit_storage(url: str | None, budget: ByteBudget) -> Any:
    """One rate-limit storage for every snapshot (counters survive a reload)."""
    if url is None:  # limits' memory storage, its buckets charged to the byte budget
        return make_limiter("memory://", budget=budget).storage
    return make_limiter(url, socket_timeout=0.5, socket_connect_timeout=0.5).storage


def build_demo_app(config: DemoConfig | None = None) -> ASGIApp:
    """The demo ASGI app: every middleware, in the default order, over the dispatcher.

    With ``config.config_path`` / ``config_sources``, the configuration is loaded
    now (an invalid one raises :class:`~aduib_asgi.config.ConfigError`) and
    watched while the app's lifespan runs; ``app.config_manager`` is the manager.
    """
    config = config or DemoConfig()
    registry = MethodRegistry()
    stats = DemoStats()
    register_demo_services(registry, stats)
    # debug info comes from the error layer of each snapshot ([server] env)
    dispatcher = RpcDispatcher(registry, debug=False)
    dispatcher.streaming.configure(default_framing=config.stream_framing,
                                   heartbeat_interval=config.heartbeat)
    health = install_health_service(dispatcher)
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
    inner_layers = [
        Layer.of(DeadlineMiddleware, max_timeout_ms=300_000, registry=registry),
        Layer.of(AdmissionMiddleware, registry=registry, shutdown=config.shutdown),
        Layer.of(IdempotencyMiddleware, store=idempotency_store_from_url(store, **shared),
                 max_body_size=config.replay_limit),
        # Echo/fail answers whatever code it is asked for: exempt from breaking.
        Layer.of(CircuitBreakerMiddleware, registry=registry,
                 settings=BreakerSettings(min_requests=50, window_s=10.0, open_s=5.0),
                 overrides={"rpc.v2/Echo/fail": None}),
    ]
    inner: ASGIApp = dispatcher
    built: list[Any] = []
    for layer in reversed(inner_layers):  # built once: their state outlives reloads
        inner = layer.cls(inner, **layer.kwargs)
        built.append(inner)
    fuse(inner)  # linked as build_stack links the layers it builds
    admission = next(b for b in built if isinstance(b, AdmissionMiddleware))
    # durations reach the SDK 64 at a time and at every scrape (RpcMetrics' batch)
    metrics = RpcMetrics(meter_provider, batch=METRICS_BATCH)
    storage = _ratelimit_storage(config.redis_url, budget)
    demo = config

    def build(cfg: RuntimeConfig) -> ASGIApp:
        layers = outer_layers(cfg, demo, registry=registry, metrics=metrics, storage=storage)
        return build_stack(inner, layers)

    sources: list[ConfigSource] = [FileSource(config.config_path)] if config.config_path else []
    sources += list(config.config_sources)
    manager = ConfigManager(sources, build, poll_interval=config.config_poll_s,
                            on_apply=[lambda cfg: apply_admission(admission, cfg),
                                      lambda cfg: apply_log_level(cfg, demo.log_level),
                                      *config.on_config])
    reloadable = manager.start()
    check_order([layer.name for layer in outer_layers(
        manager.config or RuntimeConfig(), demo, registry=registry, metrics=metrics,
        storage=storage)] + [layer.name for layer in inner_layers])
    monitor = ReadinessMonitor(health, interval=config.readiness_interval_s,
                               shutdown=config.shutdown)
    dispatcher.lifespan_hooks.append(monitor.running)
    # also without sources: SIGHUP then reloads nothing instead of ending the process
    dispatcher.lifespan_hooks.append(manager.watching)
    app: Any = ProbeMiddleware(dispatcher_facts(reloadable, dispatcher), monitor=monitor,
                               dispatcher=dispatcher)
    app.config_manager = manager
    if stats_enabled():  # GET /aduib_rpc/debug/stats, only with ADUIB_DEMO_STATS=1
        install_stats_route(dispatcher, stats, tasks, lambda: app)
    return app


def apply_admission(layer: AdmissionMiddleware, config: RuntimeConfig) -> None:
    """``[admission]`` (else the built-in limits: the registered ones only) for the
    long-lived admission layer, applied in the same event-loop step as the swap."""
    section = config.admission if config.admission is not None else AdmissionSection()
    layer.configure(max_concurrency=section.max_concurrency, limits=section.limits,
                    tenant_limit=section.tenant_limit, max_queue=section.max_queue,
                    queue_timeout_s=section.queue_timeout_s,
                    retry_after_s=section.retry_after_s)


def apply_log_level(config: RuntimeConfig, default: str | None = None) -> None:
    """``[log] level`` (else ``default``) for the package's loggers; the access
    log (``aduib_asgi.access``, INFO) is switched by ``[log] access`` instead."""
    level = config.log.level if config.log is not None else default
    if level is not None:
        logging.getLogger("aduib_asgi").setLevel(level.upper())

