"""The demo services of DEMO.md. Names and behaviour are a fixed contract."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio

from aduib_asgi.context import RequestContext
from aduib_asgi.demo import models as m
from aduib_asgi.demo.stats import DemoStats
from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.errors import RpcError

__all__ = ["register_demo_services"]

_TEXT = b"The quick brown fox jumps over the lazy dog. "


def register_demo_services(registry: MethodRegistry, stats: DemoStats | None = None) -> None:
    """Register every demo service on ``registry`` (``stats``: counters they update)."""
    stats = stats if stats is not None else DemoStats()
    counters: dict[str, int] = {}
    counters_lock = threading.Lock()

    async def echo(data: dict[str, Any], ctx: RequestContext) -> Any:
        env = ctx.envelope  # `data` unchanged: null or absent stays null (DEMO.md)
        return env.data if env is not None and env.method.endswith("/Echo/echo") else data

    async def sleep(data: dict[str, Any]) -> dict[str, Any]:
        ms = _number(data, "ms", 0)
        await anyio.sleep(ms / 1000.0)
        return {"slept_ms": ms}

    async def fail(data: dict[str, Any]) -> None:
        code = data.get("code", 5000)
        if not isinstance(code, int) or isinstance(code, bool):
            raise RpcError(2003, "data.code must be an integer",
                           details=[{"type": "type_error", "field": "data.code",
                                     "reason": "not an integer"}])
        message = data.get("message")
        raise RpcError(code, message if isinstance(message, str) else None)

    async def crash(data: dict[str, Any]) -> None:
        raise RuntimeError("boom-secret")

    async def big(data: dict[str, Any]) -> dict[str, Any]:
        size = int(_number(data, "size", 1024))
        if size < 0 or size > 64 * 1024 * 1024:
            raise RpcError(2003, "data.size must be between 0 and 67108864",
                           details=[{"type": "value_error", "field": "data.size",
                                     "reason": "out of range"}])
        reps = size // len(_TEXT) + 1
        return {"text": (_TEXT * reps)[:size].decode("ascii")}

    async def context(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        remaining = ctx.remaining_ms()
        return {
            "tenant_id": ctx.tenant_id,
            "principal": ctx.principal,
            "roles": list(ctx.roles),
            "trace_id": ctx.trace_id,
            "span_id": ctx.span_id,
            "parent_span_id": ctx.parent_span_id,
            "negotiated_version": ctx.negotiated_version,
            "priority": ctx.priority,
            "deadline_remaining_ms": None if remaining is None else int(remaining),
            "request_id": ctx.request_id,
            "content_type": ctx.request_codec.media_type if ctx.request_codec else
            "application/json",
            "accept": ctx.response_codec.media_type if ctx.response_codec else
            "application/json",
        }

    def incr(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        by = _number(data, "by", 1)
        if not isinstance(by, int):
            raise RpcError(2003, "data.by must be an integer",
                           details=[{"type": "type_error", "field": "data.by",
                                     "reason": "not an integer"}])
        tenant = ctx.tenant_id or "default"
        with counters_lock:
            counters[tenant] = counters.get(tenant, 0) + by
            return {"value": counters[tenant]}

    registry.register("rpc.v2/Echo/echo", echo)
    registry.register("rpc.v2/Echo/sleep", sleep, doc_input=m.SleepIn, doc_output=m.SleepOut)
    registry.register("rpc.v2/Echo/fail", fail, doc_input=m.FailIn)
    registry.register("rpc.v2/Echo/crash", crash)
    registry.register("rpc.v2/Echo/big", big, doc_input=m.BigIn, doc_output=m.BigOut)
    registry.register("rpc.v2/Echo/context", context, doc_output=m.ContextOut)
    registry.register("rpc.v2/Counter/incr", incr, doc_input=m.IncrIn, doc_output=m.IncrOut)

    async def admin_secret(data: dict[str, Any]) -> dict[str, Any]:
        return {"secret": "ok"}

    # Role rule read by the auth layer (anonymous → 3000, other roles → 3011).
    registry.register("rpc.v2/Admin/secret", admin_secret, roles=["admin"],
                      doc_output=m.SecretOut)

    async def legacy_old(data: dict[str, Any]) -> dict[str, Any]:
        return {"old": True}

    # Deprecated: answers Deprecation (RFC 9745) and Sunset (RFC 8594) headers.
    registry.register("rpc.v2/Legacy/old", legacy_old, deprecated="2025-01-01",
                      sunset="2027-01-01", doc_output=m.OldOut)

    async def slow_work(data: dict[str, Any]) -> dict[str, Any]:
        await anyio.sleep(_number(data, "ms", 0) / 1000.0)
        return {"done": data.get("tag")}

    # Idempotent (server-side retry allowed); one in flight, queued by qos.priority.
    registry.register("rpc.v2/Slow/work", slow_work, idempotent=True, concurrency=1,
                      doc_input=m.WorkIn, doc_output=m.WorkOut)

    async def stream(data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        count = int(_number(data, "count", 1))
        interval = _number(data, "interval_ms", 0) / 1000.0
        fail_at = data.get("fail_at")
        fail_code = data.get("fail_code", 5000)
        if fail_at is not None:
            fail_at = int(_number(data, "fail_at", 0))
        if not isinstance(fail_code, int) or isinstance(fail_code, bool):
            raise RpcError(2003, "data.fail_code must be an integer",
                           details=[{"type": "type_error", "field": "data.fail_code",
                                     "reason": "not an integer"}])
        stats.echo_streams_open += 1
        try:
            for i in range(count):
                if i and interval:
                    await anyio.sleep(interval)
                if i == fail_at:
                    raise RpcError(fail_code, f"Echo/stream failed at index {i}")
                yield {"index": i}
        finally:
            stats.echo_streams_open -= 1
            stats.echo_streams_closed += 1

    # Server streaming (POST .../v2/rpc/stream, or the WebSocket .../v2/rpc/ws).
    registry.register("rpc.v2/Echo/stream", stream, doc_input=m.StreamIn,
                      doc_output=m.StreamItem)

    async def ping(data: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    # Rate limited to 3 requests per 10 seconds per tenant (read by RateLimitMiddleware).
    # (the policy is named "limited": `[tenants.NAME.ratelimit] limited = ...` overrides it)
    registry.register("rpc.v2/Limited/ping", ping,
                      rate_limit={"name": "limited", "limit": "3/10 seconds"},
                      doc_output=m.PingOut)


def _number(data: dict[str, Any], key: str, default: int) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RpcError(2003, f"data.{key} must be a number",
                       details=[{"type": "type_error", "field": f"data.{key}",
                                 "reason": "not a number"}])
    if not math.isfinite(value):  # msgpack (and lenient JSON) carry inf and nan
        raise RpcError(2003, f"data.{key} must be a finite number",
                       details=[{"type": "value_error", "field": f"data.{key}",
                                 "reason": "not finite"}])
    if value < 0:
        raise RpcError(2003, f"data.{key} must not be negative",
                       details=[{"type": "value_error", "field": f"data.{key}",
                                 "reason": "negative"}])
    return value
