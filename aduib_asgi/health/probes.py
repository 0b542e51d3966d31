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

The probes describe themselves in the OpenAPI document of the dispatcher they
front (:meth:`ProbeMiddleware.openapi`, registered with
``RpcDispatcher.document_route``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.errors import RpcError
from aduib_asgi.health.checks import HealthRegistry
from aduib_asgi.models import HealthCheckResponse, HealthStatus
from aduib_asgi.qos.shutdown import ShutdownController
from aduib_asgi.responses import send_error

__all__ = ["ProbeMiddleware", "ReadinessMonitor"]

logger = logging.getLogger("aduib_asgi.health")

_READY = frozenset({HealthStatus.HEALTHY, HealthStatus.DEGRADED})
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_HEALTHY = b'{"status":"healthy"}'
_ALLOWED = ("GET", "HEAD")
#: How far :func:`_find_dispatcher` follows ``.app`` from the wrapped app.
_MAX_HOPS = 64


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
    """Answers the two probes; everything else goes to ``app`` untouched.

    ``dispatcher``: the :class:`~aduib_asgi.dispatcher.RpcDispatcher` whose OpenAPI
    document describes the probes (default: the one found by following ``.app``
    from ``app``; none found, none described).
    """

    layer_name = "probes"

    def __init__(self, app: ASGIApp, *, monitor: ReadinessMonitor | None = None,
                 base_path: str = "/aduib_rpc", dispatcher: Any = None) -> None:
        self.app = app
        self.monitor = monitor
        base = base_path.rstrip("/")
        self.healthz = base + "/healthz"
        self.readyz = base + "/readyz"
        target = dispatcher if dispatcher is not None else _find_dispatcher(app)
        if target is not None:
            for path, live in ((self.healthz, True), (self.readyz, False)):
                target.document_route(path, _ALLOWED, _describer(live),
                                      models=(HealthCheckResponse,))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == self.healthz or path == self.readyz:
                await self._probe(scope, send, path == self.healthz)
                return
        await self.app(scope, receive, send)

    async def _probe(self, scope: Scope, send: Send, live: bool) -> None:
        if scope["method"] not in _ALLOWED:
            await send_error(scope, send, RpcError(
                2000, f"Method {scope['method']} not allowed", http_status=405,
                headers={"Allow": ", ".join(_ALLOWED)}))
            return
        if live:
            status, body = 200, _HEALTHY
        elif self.monitor is None:
            status, body = 503, b'{"status":"unknown"}'
        else:
            code, data = self.monitor.readiness()
            status, body = code, json.dumps(data, separators=(",", ":")).encode()
        await _send(send, status, body, [], head=scope["method"] == "HEAD")

    @staticmethod
    def openapi(live: bool, ref: Callable[[type[Any]], dict[str, Any]]) -> dict[str, Any]:
        """The OpenAPI operations of ``healthz`` (``live``) or ``readyz``, as answered
        above; ``ref(HealthCheckResponse)`` is that model's schema reference."""
        headers = {"Cache-Control": {"description": "Always `no-store`.",
                                     "schema": {"type": "string", "enum": ["no-store"]}}}
        common = {"tags": ["probes"], "security": [],
                  "description": "Answered in front of every layer: no authentication, rate "
                                 "limit or admission applies, and it is not counted as an RPC "
                                 "call. HEAD answers the same without a body."}
        if live:
            body = {"type": "object", "title": "Liveness", "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["healthy"]}}}
            return {"get": {
                **common, "operationId": "healthz",
                "summary": "Liveness probe (OPERATIONS.md §1): no dependency checks",
                "responses": {"200": {"description": "The process serves requests.",
                                      "headers": headers,
                                      "content": {"application/json": {"schema": body}}}}}}
        readiness = {"title": "Readiness", "allOf": [ref(HealthCheckResponse), {
            "type": "object", "properties": {"shutting_down": {
                "type": "boolean", "description": "Present (true) from the moment a "
                                                  "graceful shutdown starts."}}}]}
        content = {"application/json": {"schema": readiness}}
        return {"get": {
            **common, "operationId": "readyz",
            "summary": "Readiness probe (OPERATIONS.md §1): the last aggregated health check",
            "responses": {
                "200": {"description": "Healthy or degraded.", "headers": headers,
                        "content": content},
                "503": {"description": "Unhealthy; `unknown` before the first check result; "
                                       "`unhealthy` with `shutting_down` while draining.",
                        "headers": headers, "content": content}}}}


def _describer(live: bool) -> Callable[[Callable[[type[Any]], dict[str, Any]]], dict[str, Any]]:
    def describe(ref: Callable[[type[Any]], dict[str, Any]]) -> dict[str, Any]:
        return ProbeMiddleware.openapi(live, ref)
    return describe


def _find_dispatcher(app: Any) -> Any:
    """The first app with ``document_route`` following ``.app`` (None if there is none)."""
    node = app
    for _ in range(_MAX_HOPS):
        if node is None:
            return None
        if callable(getattr(node, "document_route", None)):
            return node
        node = getattr(node, "app", None)
    return None


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]],
                *, head: bool) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
