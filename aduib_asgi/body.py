"""Reading, decoding and validating a request body — once per request.

The content-negotiation layer (or, without it, the dispatcher) calls these and
stores the results on the request context: ``ctx.body`` (bytes), ``ctx.payload``
(decoded value) and ``ctx.envelope`` (validated :class:`RpcRequest`). Later
layers read the context; an inner app that still wants the bytes gets them
replayed by :func:`replay_receive`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.types import Message, Receive

from aduib_asgi.auth.rbac import AUTHORIZE_KEY, authorize_method
from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError, details_from_validation
from aduib_asgi.models import RpcRequest
from aduib_asgi.models.envelope import split_valid_method, stamp_metadata
from aduib_asgi.versioning import VERSIONS_KEY
from aduib_asgi.versioning.compat import prepare_payload

__all__ = [
    "DEFAULT_MAX_BODY",
    "ClientDisconnected",
    "parse_envelope",
    "read_body",
    "replay_receive",
]

DEFAULT_MAX_BODY = 16 * 1024 * 1024


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


async def read_body(receive: Receive, *, limit: int = DEFAULT_MAX_BODY,
                    first: Message | None = None) -> bytes:
    """Receive the whole body, failing with 2004 (413) as soon as it passes ``limit``.

    ``first``: a message already received from ``receive`` (read before the rest).
    """
    chunks: list[bytes] = []
    total = 0
    message = first
    while True:
        if message is None:
            message = await receive()
        mtype = message["type"]
        if mtype == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise RpcError(2004, f"Request body exceeds {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif mtype == "http.disconnect":
            raise ClientDisconnected()
        message = None
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


class _Replay:
    """Per-request ``receive`` of :func:`replay_receive`."""

    __slots__ = ("body", "receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        body = self.body
        if body is None:
            return await self.receive()
        self.body = None
        return {"type": "http.request", "body": body, "more_body": False}


#: ``replay_receive(body, receive)``: a ``receive`` that yields ``body`` once, then
#: defers to the real one (the class itself: no wrapper call per request).
replay_receive: Callable[[bytes, Receive], Receive] = _Replay


def _readable_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        rid = payload.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= 256:
            return rid
        if isinstance(rid, int) and not isinstance(rid, bool):
            return str(rid)
    return None


def parse_envelope(ctx: RequestContext, payload: Any, *, v1: bool = False,
                   authorize: bool = True) -> RpcRequest:
    """Validate a decoded body as the request envelope and record it on ``ctx``.

    Not an object, or failing validation → 1002 with one detail per bad field
    (the request id is still echoed when it was readable). Malformed version
    members are 1001; a v1 payload (``aduib_rpc: "1.0"``, or ``v1=True`` for
    the v1 endpoint) is upgraded first and answered in v1 shape. The auth
    layer's late check runs for the method unless ``authorize=False``.
    """
    if not isinstance(payload, dict):
        raise RpcError(1002, "The request envelope must be an object",
                       details=[{"type": "type_error", "field": "", "reason": "not an object"}])
    # The version hook (versioning.compat.prepare_payload): v1 upgrade, version members
    # checked, negotiation when the version layer ran first. A v2 "2.0" envelope without
    # ``supported_versions`` and nothing to negotiate passes it unchanged: not called.
    if v1 or payload.get("aduib_rpc", "2.0") != "2.0" or "supported_versions" in payload \
            or (ctx.negotiated_version is None and VERSIONS_KEY in ctx.extras):
        payload = prepare_payload(ctx, payload, v1=v1)
    try:  # what RpcRequest.model_validate(payload) does, without its Python frame
        env = RpcRequest.__pydantic_validator__.validate_python(payload)
    except ValidationError as exc:
        rid = _readable_id(payload)
        if rid is not None:
            ctx.request_id = rid
        raise RpcError(1002, "Invalid request envelope",
                       details=details_from_validation(exc)) from None
    ctx.envelope = env
    ctx.payload = payload
    ctx.request_id = env.id
    method = ctx.method = env.method
    ctx.service, ctx.handler = split_valid_method(method)
    if env.qos is not None:
        ctx.priority = int(env.qos.priority)
    md = env.metadata
    if md is None:  # the server fills timestamp_ms when absent (PROTOCOL.md section 2)
        stamp_metadata(env, ctx.timestamp_ms)
    else:
        if md.timestamp_ms is None:
            md.timestamp_ms = ctx.timestamp_ms
        if md.headers:
            ctx.add_envelope_headers(md.headers)
    meta = env.meta
    if meta is not None:  # 2.0.1 clients: meta.headers (also sent as HTTP headers)
        extra = meta.get("headers")
        if isinstance(extra, dict) and extra:
            ctx.add_envelope_headers(extra)
    # Parsed after an auth layer ran (the dispatcher without a content layer in
    # front, the v1 endpoint): its rules now apply. ``authorize=False``: the caller
    # passes the gate (aduib_asgi.gate), which applies them after the tenant.
    if authorize and AUTHORIZE_KEY in ctx.extras:
        authorize_method(ctx, method)
    return env
