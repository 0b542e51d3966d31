"""Liveness and readiness probes for orchestrators (OPERATIONS.md section 1).

:class:`ProbeMiddleware` answers ``GET {base}/healthz`` and ``GET {base}/readyz``
itself, in front of everything else, so probes bypass authentication, rate
limits and admission and are never counted as RPC calls:

- ``healthz``: 200 ``{"status":"healthy"}`` while the process serves; no checks.
- ``readyz``: the last aggregated HealthCheckResponse of a :class:`ReadinessMonitor`
  (which runs the health checks in the background every ``interval`` seconds, so
  a probe never waits on a dependency); 200 when healthy or degraded, 503 when
  unhealthy or unknown, before the first result, and from the moment a graceful
  shutdown starts (:meth:`ReadinessMonitor.stop_ready`, or the shutdown
  controller draining).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.health.checks import HealthRegistry
from aduib_asgi.models import HealthCheckResponse, HealthStatus
from aduib_asgi.qos.shutdown import ShutdownController

__all__ = ["ProbeMiddleware", "ReadinessMonitor"]

logger = logging.getLogger("aduib_asgi.health")

_READY = frozenset({HealthStatus.HEALTHY, HealthStatus.DEGRADED})
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_HEALTHY = b'{"status":"healthy"}'


class ReadinessMonitor:
    """Runs the health checks periodically and keeps the last aggregated result."""

    def __init__(self, registry: HealthRegistry, *, interval: float = 2.0,
                 shutdown: ShutdownController | None = None) -> None:
        self.registry = registry
        self.interval = interval
        self.shutdown = shutdown
        self.last: HealthCheckResponse | None = None
        self.stopping = False

    def stop_ready(self) -> None:
        """A graceful shutdown starts: readiness answers 503 from now on."""
        if not self.stopping:
            self.stopping = True
            logger.warning("shutting down: readiness probe answers 503")

    @property
    def shutting_down(self) -> bool:
        return self.stopping or (self.shutdown is not None and self.shutdown.draining)

    async def check_once(self) -> HealthCheckResponse:
        result = await self.registry.check()
        assert result is not None  # the aggregate always exists
        if self.last is None or result.status != self.last.status:
            logger.info("readiness: %s", result.status.value)
        self.last = result
        return result

    async def run(self) -> None:
        """Check now, then every ``interval`` seconds, forever."""
        while True:
            try:
                await self.check_once()
            except Exception:  # the registry already turns failures into statuses
                logger.exception("readiness check failed")
            await anyio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReadinessMonitor]:
        """Run :meth:`run` in the background inside the block (an app's lifespan)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``readyz`` right now."""
        last = self.last
        body: dict[str, Any] = (last.model_dump(mode="json", exclude_none=True) if last
                                else {"status": HealthStatus.UNKNOWN.value})
        if self.shutting_down:
            body["status"] = HealthStatus.UNHEALTHY.value
            body["shutting_down"] = True
            return 503, body
        return (200 if last is not None and last.status in _READY else 503), body


class ProbeMiddleware:
    """Answers the two probes; everything else goes to ``app`` untouched."""

    layer_name = "probes"

    def __init__(self, app: ASGIApp, *, monitor: ReadinessMonitor | None = None,
                 base_path: str = "/aduib_rpc") -> None:
        self.app = app
        self.monitor = monitor
        base = base_path.rstrip("/")
        self.healthz = base + "/healthz"
        self.readyz = base + "/readyz"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == self.healthz or path == self.readyz:
                await self._probe(scope, send, path == self.healthz)
                return
        await self.app(scope, receive, send)

    async def _probe(self, scope: Scope, send: Send, live: bool) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b'{"error":"method not allowed"}',
                        [(b"allow", b"GET, HEAD")], head=False)
            return
        if live:
            status, body = 200, _HEALTHY
        elif self.monitor is None:
            status, body = 503, b'{"status":"unknown"}'
        else:
            code, data = self.monitor.readiness()
            status, body = code, json.dumps(data, separators=(",", ":")).encode()
        await _send(send, status, body, [], head=scope["method"] == "HEAD")


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]],
                *, head: bool) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
