"""The HealthService: registered checks aggregated into one status."""

from aduib_asgi.health.checks import HealthCheck, HealthRegistry, aggregate
from aduib_asgi.health.probes import ProbeMiddleware, ReadinessMonitor
from aduib_asgi.health.service import HealthService, install_health_service

__all__ = ["HealthCheck", "HealthRegistry", "HealthService", "ProbeMiddleware",
           "ReadinessMonitor", "aggregate", "install_health_service"]
