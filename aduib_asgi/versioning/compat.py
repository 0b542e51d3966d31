"""v1 compatibility (PROTOCOL.md section 9): upgrade v1 requests, downgrade responses.

A request is v1 when its ``aduib_rpc`` is ``"1.0"`` or it was posted to
``{base}/v1/rpc``. :func:`upgrade_v1` turns its payload into a v2 envelope
payload *before validation* (``meta`` -> ``metadata.headers``, ``meta.stream``
kept as the streaming flag, a missing id generated, v1 method spellings
normalised) and :func:`install_v1_shaper` makes every envelope answered for
the request v1-shaped (``aduib_rpc: "1.0"``, ``status`` success|error,
``error`` {code, message, data}) — whoever produces it: dispatcher, error
mapper, or a middleware's rejection. Both functions are total: they never raise.

:func:`prepare_payload` is the hook :func:`aduib_asgi.body.parse_envelope` calls
on every decoded envelope; it also turns malformed version members into 1001.
"""

from __future__ import annotations

import uuid
from typing import Any

import pydantic_core

from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError
from aduib_asgi.responses import set_envelope_shaper
from aduib_asgi.versioning import VERSIONS_KEY, parse_version, version_error
from aduib_asgi.versioning.methods import normalize_method

__all__ = [
    "V1_KEY",
    "V1_STREAM_KEY",
    "V1_VERSION",
    "downgrade_v1",
    "install_v1_shaper",
    "is_v1",
    "prepare_payload",
    "upgrade_v1",
    "v1_shaper",
]

V1_VERSION = "1.0"
#: ``ctx.extras`` key set (to the original request id) once a request was upgraded from v1.
V1_KEY = "aduib.v1"
#: ``ctx.extras`` key: True when a v1 request asked for streaming (``meta.stream``).
V1_STREAM_KEY = "aduib.v1.stream"

_MISSING = object()


def is_v1(payload: Any) -> bool:
    """Whether a decoded body declares itself v1 (``aduib_rpc: "1.0"``)."""
    return isinstance(payload, dict) and payload.get("aduib_rpc") == V1_VERSION


def _header_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return pydantic_core.to_json(value).decode("utf-8")
    except Exception:  # anything JSON cannot carry: its repr is still a string
        return repr(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return value is True or (isinstance(value, int | float) and value == 1)


def upgrade_v1(payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A v1 request payload as a v2 envelope payload, and whether it asked for streaming.

    ``meta`` entries become ``metadata.headers`` (string values; a nested
    ``meta.headers`` object is merged in), ``meta.stream`` is the streaming
    flag, ``id`` is kept (an int becomes its string; a missing one is a new
    UUID v4), ``method`` is normalised to ``rpc.v2/{service}/{handler}`` when
    it is a v1 spelling, ``data`` is kept as it is. ``aduib_rpc`` stays
    ``"1.0"`` so that version negotiation sees what the client speaks.
    Never raises; what cannot be upgraded is left for envelope validation.
    """
    out = dict(payload)
    out["aduib_rpc"] = V1_VERSION
    rid = payload.get("id")
    if rid is None or rid == "":
        out["id"] = str(uuid.uuid4())
    elif isinstance(rid, int) and not isinstance(rid, bool):
        out["id"] = str(rid)
    method = payload.get("method")
    canonical = normalize_method(method)
    if canonical is not None:
        out["method"] = canonical
    stream = False
    meta = payload.get("meta")
    if isinstance(meta, dict):
        metadata = payload.get("metadata")
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        headers_in = metadata.get("headers")
        headers: dict[str, str] = dict(headers_in) if isinstance(headers_in, dict) else {}
        for key, value in meta.items():
            name = str(key)
            if name == "stream":
                stream = _truthy(value)
            elif name == "headers" and isinstance(value, dict):
                for hk, hv in value.items():
                    headers.setdefault(str(hk), _header_value(hv))
            elif value is not None:
                headers.setdefault(name, _header_value(value))
        metadata["headers"] = headers
        out["metadata"] = metadata
    return out, stream


def downgrade_v1(env: dict[str, Any], original_id: Any = _MISSING) -> dict[str, Any]:
    """A v2 response envelope as a v1 response: ``aduib_rpc``, ``id``, ``status``, ``result``
    or ``error`` {code, message, data}. ``data`` carries the error's ``details``.

    ``original_id`` (the v1 request's id, e.g. an int) is echoed instead of the
    string id when given. Never raises.
    """
    error = env.get("error")
    failed = env.get("status") == "error" or error is not None
    out: dict[str, Any] = {"aduib_rpc": V1_VERSION}
    if original_id is not _MISSING and original_id is not None and original_id != "":
        out["id"] = original_id
    else:
        out["id"] = env.get("id")
    out["status"] = "error" if failed else "success"
    if failed:
        err: dict[str, Any] = {"code": 5000, "message": "Internal server error", "data": None}
        if isinstance(error, dict):
            code = error.get("code")
            if isinstance(code, int) and not isinstance(code, bool):
                err["code"] = code
            message = error.get("message")
            if isinstance(message, str):
                err["message"] = message
            err["data"] = error.get("details")
        out["error"] = err
        out["result"] = None
    else:
        out["result"] = env.get("result")
        out["error"] = None
    return out


def v1_shaper(ctx: RequestContext, env: dict[str, Any]) -> dict[str, Any]:
    """The envelope shaper installed for v1 requests."""
    return downgrade_v1(env, ctx.extras.get(V1_KEY, _MISSING))


def install_v1_shaper(ctx: RequestContext, original_id: Any = None) -> None:
    """Answer every envelope of this request in v1 shape."""
    ctx.extras[V1_KEY] = original_id
    set_envelope_shaper(ctx, v1_shaper)


def _check_versions(payload: dict[str, Any]) -> None:
    version = payload.get("aduib_rpc", "2.0")
    if version != "2.0" and version is not None and parse_version(version) is None:
        raise version_error(f"Malformed protocol version {version!r}", field="aduib_rpc",
                            reason="not a MAJOR.MINOR version")
    requested = payload.get("supported_versions")
    if requested is None:
        return
    if not isinstance(requested, list):
        raise version_error("supported_versions must be a list of MAJOR.MINOR versions",
                            field="supported_versions", reason="not a list")
    for i, item in enumerate(requested):
        if parse_version(item) is None:
            raise version_error(f"Malformed protocol version {item!r} in supported_versions",
                                field=f"supported_versions.{i}",
                                reason="not a MAJOR.MINOR version")


def prepare_payload(ctx: RequestContext, payload: dict[str, Any], *,
                    v1: bool = False) -> dict[str, Any]:
    """Before envelope validation: malformed versions -> 1001; v1 payloads upgraded.

    ``v1`` forces the upgrade (the request came to the v1 endpoint). An
    upgraded request gets the v1 envelope shaper, so every answer is v1-shaped.
    """
    try:
        return _prepare(ctx, payload, v1)
    except RpcError:
        if ctx.request_id is None:  # echo the id even though validation never ran
            rid = payload.get("id")
            if _echoable(rid) and 0 < len(str(rid)) <= 256:
                ctx.request_id = str(rid)
        raise


def _prepare(ctx: RequestContext, payload: dict[str, Any], v1: bool) -> dict[str, Any]:
    if v1 or payload.get("aduib_rpc") == V1_VERSION:
        original_id = payload.get("id")
        install_v1_shaper(ctx, original_id if _echoable(original_id) else None)
        _check_versions(payload)
        payload, stream = upgrade_v1(payload)
        if stream:
            ctx.extras[V1_STREAM_KEY] = True
    elif payload.get("aduib_rpc", "2.0") != "2.0" or "supported_versions" in payload:
        _check_versions(payload)
    versions = ctx.extras.get(VERSIONS_KEY)
    if versions is not None and ctx.negotiated_version is None:
        # The version layer ran before anyone decoded the envelope (no content
        # layer in front): negotiate now, where the envelope first appears.
        ctx.negotiated_version = versions.negotiate(
            payload.get("aduib_rpc") or "2.0", payload.get("supported_versions"))
    return payload


def _echoable(rid: Any) -> bool:
    return isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool))
