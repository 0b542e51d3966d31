"""VersionNegotiationMiddleware: negotiate the protocol version of each request.

Sits right inside the content-negotiation layer (it reads the decoded
envelope). With ``supported_versions`` in the envelope it picks the highest
version both sides speak (numeric MAJOR.MINOR: "2.10" > "2.9"); without it,
the envelope's ``aduib_rpc`` must be supported. Otherwise: 400, code 1001,
with a detail listing the server's versions. The result is
``ctx.negotiated_version``; the response envelope's ``negotiated_version`` and
method resolution (version ranges, 4020 GONE) read it from there.

Without an envelope (a plain app, or no content layer in front) it negotiates
from headers: ``Aduib-Rpc-Supported-Versions: 2.0, 1.0`` and/or
``Aduib-Rpc-Version: 2.0``; the answer carries ``Aduib-Rpc-Negotiated-Version``.
A request with neither header passes through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

from aduib_asgi.body import parse_envelope
from aduib_asgi.context import CONTEXT_KEY, RequestContext, run_with_context
from aduib_asgi.errors import RpcError
from aduib_asgi.responses import refuse
from aduib_asgi.versioning import DEFAULT_VERSIONS, VERSIONS_KEY, ServerVersions
from aduib_asgi.versioning.compat import V1_KEY

__all__ = [
    "NEGOTIATED_VERSION_HEADER",
    "SUPPORTED_VERSIONS_HEADER",
    "VERSION_HEADER",
    "VersionNegotiationMiddleware",
]

#: Request header: the version the caller speaks (like the envelope's ``aduib_rpc``).
VERSION_HEADER = b"aduib-rpc-version"
#: Request header: the versions the caller supports, comma separated.
SUPPORTED_VERSIONS_HEADER = b"aduib-rpc-supported-versions"
#: Response header (header-based negotiation only): the version negotiated.
NEGOTIATED_VERSION_HEADER = b"aduib-rpc-negotiated-version"


class VersionNegotiationMiddleware:
    """Negotiates ``ctx.negotiated_version``; 1001 when there is no common version.

    ``versions``: what the server speaks (default ``("2.0", "1.0")``).
    ``base_path``: where the RPC endpoints live (a request to
    ``{base_path}/v1/rpc`` is a v1 request whatever its body says).
    """

    layer_name = "version"
    #: scope type -> the method ``__call__`` runs with the context (aduib_asgi.stack fuses)
    context_methods: ClassVar[dict[str, str]] = {"http": "_handle", "websocket": "_handle"}

    def __init__(
        self,
        app: ASGIApp,
        *,
        versions: Iterable[str] = DEFAULT_VERSIONS,
        base_path: str = "/aduib_rpc",
    ) -> None:
        self.app = app
        self.versions = ServerVersions(versions)
        self.v1_path = base_path.rstrip("/") + "/v1/rpc"
        self._answer = {v: (NEGOTIATED_VERSION_HEADER, v.encode("ascii"))
                        for v in self.versions.versions}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t != "http" and t != "websocket":
            await self.app(scope, receive, send)
            return
        ctx = scope.get(CONTEXT_KEY)  # run_with_context, without its call when it exists
        if ctx is not None:
            await self._handle(scope, receive, send, ctx)
        else:
            await run_with_context(self._handle, scope, receive, send)

    def _handle(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> Awaitable[None]:
        """Negotiate; the awaitable that runs the app (or sends the 1001 error).

        Not a coroutine itself: a negotiated request costs the stack no frame here.
        """
        ctx.extras[VERSIONS_KEY] = self.versions
        env = ctx.envelope
        try:
            if env is not None:
                if scope["path"] == self.v1_path and V1_KEY not in ctx.extras:
                    # Decoded as v2 by the content layer: upgrade it as the v1 endpoint says.
                    env = parse_envelope(ctx, ctx.payload, v1=True)
                requested = env.supported_versions
                # The common case: no list, an exact server spelling (negotiate's first step)
                version = self.versions.exact.get(env.aduib_rpc) if requested is None else None
                ctx.negotiated_version = version if version is not None else \
                    self.versions.negotiate(env.aduib_rpc, requested)
            else:
                listed = ctx.header(SUPPORTED_VERSIONS_HEADER)
                spoken = ctx.header(VERSION_HEADER)
                if listed is not None or spoken is not None:
                    self._from_headers(ctx, listed, spoken)
        except RpcError as exc:
            return refuse(scope, send, exc, ctx=ctx)
        return self.app(scope, receive, send)

    def _from_headers(self, ctx: RequestContext, listed: bytes | None,
                      spoken: bytes | None) -> None:
        requested = None
        if listed is not None:
            requested = [v.strip() for v in listed.decode("latin-1").split(",") if v.strip()]
        version = spoken.decode("latin-1").strip() if spoken is not None else None
        negotiated = self.versions.negotiate(version, requested)
        ctx.negotiated_version = negotiated
        ctx.add_response_header(*self._answer[negotiated])
