"""Endpoints of the versioning concern, installed into every RpcDispatcher.

- ``GET {base}/v2/capabilities`` (see :mod:`aduib_asgi.dispatcher.capabilities`);
- ``GET {base}/v2/openapi.json`` (see :mod:`aduib_asgi.dispatcher.openapi`);
- ``POST {base}/v1/rpc``: the v1 endpoint. The body is upgraded to v2 (whatever
  its ``aduib_rpc`` says), answered in v1 shape, and served by the v2 unary
  endpoint — or by the streaming endpoint when ``meta.stream`` is set and one
  is installed (5001 otherwise), in envelope framing unless the request's
  ``Aduib-Stream-Framing`` header says otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from aduib_asgi.body import parse_envelope
from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher.capabilities import CAPABILITIES_PATH, capabilities_endpoint
from aduib_asgi.dispatcher.openapi import OPENAPI_PATH, openapi_endpoint
from aduib_asgi.errors import RpcError
from aduib_asgi.versioning.compat import V1_KEY, V1_STREAM_KEY, install_v1_shaper

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import Endpoint, RpcDispatcher

__all__ = ["V1_PATH", "install_version_routes"]

V1_PATH = "/v1/rpc"
_FRAMING = b"aduib-stream-framing"


def install_version_routes(dispatcher: RpcDispatcher) -> None:
    """Add the capabilities, OpenAPI and v1 endpoints to ``dispatcher``."""
    dispatcher.add_route(CAPABILITIES_PATH, capabilities_endpoint(dispatcher), methods=("GET",))
    dispatcher.add_route(OPENAPI_PATH, openapi_endpoint(dispatcher), methods=("GET",))
    dispatcher.add_route(V1_PATH, _v1_endpoint(dispatcher), methods=("POST",))


def _v1_endpoint(dispatcher: RpcDispatcher) -> Endpoint:
    unary_path = dispatcher.base_path + "/v2/rpc"
    stream_path = dispatcher.base_path + "/v2/rpc/stream"

    async def v1_rpc(scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        if V1_KEY not in ctx.extras:
            install_v1_shaper(ctx)  # errors while reading the body are v1-shaped too
            if ctx.envelope is not None:  # decoded as v2 by a layer in front
                parse_envelope(ctx, ctx.payload, v1=True)
            else:
                parse_envelope(ctx, await dispatcher.read_payload(receive, ctx), v1=True)
        path = unary_path
        if ctx.extras.get(V1_STREAM_KEY):
            path = stream_path
            if ctx.stream_framing is None and ctx.header(_FRAMING) is None:
                # v1 clients read each SSE event as a response envelope.
                ctx.stream_framing = "envelope"
                ctx.add_response_header(_FRAMING, b"envelope")
        route = dispatcher._routes.get(path)
        if route is None:
            raise RpcError(5001, "Streaming is not available on this server")
        await route.endpoint(scope, receive, send, ctx)

    return v1_rpc
