"""``GET {base}/v2/capabilities``: what this server actually supports.

Built on each call from what is installed and registered — protocol versions
from the version layer's configuration (``DEFAULT_VERSIONS`` without it),
content types from the codec registry, compressions from the compression
registry (only what can be imported right now), streaming/bidirectional from
the endpoints the dispatcher serves, and one MethodDescriptor per registration;
``config_version`` when the app runs under a configuration manager.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher.registry import MethodRegistry, MethodSpec
from aduib_asgi.models import MethodDescriptor, ServiceCapabilities
from aduib_asgi.responses import send_envelope
from aduib_asgi.versioning import DEFAULT_VERSIONS, VERSIONS_KEY, ServerVersions

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import RpcDispatcher

__all__ = [
    "CAPABILITIES_PATH",
    "build_capabilities",
    "capabilities_endpoint",
    "installed_compressions",
    "installed_content_types",
    "method_descriptor",
]

CAPABILITIES_PATH = "/v2/capabilities"
#: Scope key set by :class:`aduib_asgi.config.ReloadableApp`: the applied
#: configuration's version, reported as ``config_version``.
CONFIG_VERSION_KEY = "aduib.config_version"
_DEFAULT_VERSIONS = ServerVersions(DEFAULT_VERSIONS)


def installed_content_types() -> list[str]:
    """Media types of every codec the codec registry can load right now."""
    from aduib_asgi import codecs

    return list(codecs.default_registry().media_types())


def installed_compressions() -> list[str]:
    """Content codings the compression package can load right now, then ``identity``.

    Imported at call time, so that a missing optional library (``brotli``) or a
    build without :mod:`aduib_asgi.compression` is reflected as it is.
    """
    names: list[str] = []
    try:
        module: Any = importlib.import_module("aduib_asgi.compression")
    except ImportError:
        module = None
    available = getattr(module, "available_codings", None)
    if callable(available):
        names = [str(name) for name in available()]
    if "identity" not in names:
        names.append("identity")
    return names


def _schema(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    schema: dict[str, Any] = model.model_json_schema()
    return schema


def method_descriptor(spec: MethodSpec, versions: ServerVersions) -> MethodDescriptor:
    """The MethodDescriptor of one registration."""
    return MethodDescriptor(
        name=spec.method,
        service=spec.service,
        handler=spec.handler,
        streaming=spec.streaming,
        idempotent=spec.idempotent,
        deprecated=spec.deprecated,
        sunset=spec.sunset.isoformat() if spec.sunset is not None else None,
        versions=versions.in_range(spec.since_key, spec.removed_key),
        input_schema=_schema(spec.input_model),
        output_schema=_schema(spec.output_model),
    )


def build_capabilities(
    registry: MethodRegistry,
    *,
    versions: ServerVersions | None = None,
    streaming: bool = False,
    bidirectional: bool = False,
) -> ServiceCapabilities:
    """ServiceCapabilities from what is installed and registered right now."""
    versions = versions or _DEFAULT_VERSIONS
    return ServiceCapabilities(
        protocol_versions=list(versions.versions),
        content_types=installed_content_types(),
        compressions=installed_compressions(),
        streaming=streaming,
        bidirectional=bidirectional,
        methods=[method_descriptor(spec, versions) for spec in registry],
    )


def capabilities_endpoint(dispatcher: RpcDispatcher) -> Any:
    """The endpoint serving :func:`build_capabilities` for ``dispatcher``."""
    stream_path = dispatcher.base_path + "/v2/rpc/stream"
    ws_path = dispatcher.base_path + "/v2/rpc/ws"

    async def capabilities(
        scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        versions = ctx.extras.get(VERSIONS_KEY)
        caps = build_capabilities(
            dispatcher.registry,
            versions=versions if isinstance(versions, ServerVersions) else None,
            streaming=stream_path in dispatcher._routes,
            bidirectional=ws_path in dispatcher._ws_routes,
        )
        body = caps.model_dump(mode="json")
        version = scope.get(CONFIG_VERSION_KEY)  # the snapshot this request runs on
        if version is not None:
            body["config_version"] = version
        await send_envelope(send, ctx, body, 200)

    return capabilities
