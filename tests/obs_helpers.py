"""Helpers for the trace/tenant/auth/observability tests: a small RPC app over the real stack."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import anyio
from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.body import parse_envelope, read_body, replay_receive
from aduib_asgi.context import RequestContext, get_context, run_with_context
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware.errors import ErrorMappingMiddleware
from aduib_asgi.middleware.tenant import get_tenant
from aduib_asgi.stack import Layer, build_stack

handler_log = logging.getLogger("tests.handler")


class EnvelopeLayer:
    """Stands in for the content-negotiation layer: decodes the JSON envelope onto ctx."""

    layer_name = "content"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await run_with_context(self._handle, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      ctx: RequestContext) -> None:
        body = await read_body(receive)
        ctx.body = body
        with contextlib.suppress(RpcError, ValueError):  # the dispatcher reports it
            parse_envelope(ctx, json.loads(body))
        await self.app(scope, replay_receive(body, receive), send)


def seen(ctx: RequestContext | None) -> dict[str, Any]:
    assert ctx is not None
    return {
        "tenant_id": ctx.tenant_id,
        "tenant_var": get_tenant(),
        "principal": ctx.principal,
        "roles": list(ctx.roles),
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
        "parent_span_id": ctx.parent_span_id,
        "request_id": ctx.request_id,
    }


def make_registry() -> MethodRegistry:
    r = MethodRegistry()

    async def context(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        out = seen(ctx)
        sc = trace.get_current_span().get_span_context()
        out["otel_span_id"] = f"{sc.span_id:016x}" if sc.is_valid else None
        return out

    def sync_context(data: dict[str, Any]) -> dict[str, Any]:
        out = seen(get_context())
        out["thread"] = threading.current_thread().name
        return out

    async def interleave(data: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        before = (get_tenant(), get_context() is ctx)
        await anyio.sleep(data.get("ms", 0) / 1000)
        after = (get_tenant(), get_context() is ctx)
        return {"before": before[0], "after": after[0], "same_ctx": before[1] and after[1],
                "tenant_id": ctx.tenant_id}

    async def fail(data: dict[str, Any]) -> None:
        raise RpcError(int(data.get("code", 5000)), data.get("message"))

    async def crash(data: dict[str, Any]) -> None:
        raise RuntimeError("boom-secret")

    async def log(data: dict[str, Any]) -> dict[str, Any]:
        handler_log.warning("handled %s", data.get("tag"))
        return {"ok": True}

    async def secret(data: dict[str, Any]) -> dict[str, Any]:
        return {"secret": "ok"}

    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return data

    r.register("rpc.v2/T/context", context)
    r.register("rpc.v2/T/sync_context", sync_context)
    r.register("rpc.v2/T/interleave", interleave)
    r.register("rpc.v2/T/fail", fail)
    r.register("rpc.v2/T/crash", crash)
    r.register("rpc.v2/T/log", log)
    r.register("rpc.v2/T/echo", echo)
    r.register("rpc.v2/Admin/secret", secret, roles=["admin"])
    return r


def rpc_app(layers: Sequence[Layer], registry: MethodRegistry | None = None, *,
            debug: bool = True, envelope: bool = True) -> ASGIApp:
    """errors → (envelope decoding) → layers → dispatcher."""
    dispatcher = RpcDispatcher(registry or make_registry(), debug=debug)
    stack = [Layer.of(ErrorMappingMiddleware, debug=debug)]
    if envelope:
        stack.append(Layer.of(EnvelopeLayer))
    return build_stack(dispatcher, [*stack, *layers])


def call(method: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "method": method, "data": data or {}}
    body.update(extra)
    return body
