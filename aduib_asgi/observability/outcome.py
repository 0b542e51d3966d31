"""How a request ended: the error code of its response, for spans, metrics and audit.

Error envelopes are shaped in one place (:func:`aduib_asgi.responses.build_envelope`),
which calls the request's envelope shaper. :func:`watch_error_code` chains a tiny
shaper in front of any existing one that records ``error.code`` on the context, so
observability layers learn the code without decoding a response body.
"""

from __future__ import annotations

from typing import Any

from aduib_asgi.context import RequestContext
from aduib_asgi.responses import set_envelope_shaper, to_rpc_error

__all__ = ["ERROR_CODE_KEY", "error_code", "record_exception", "watch_error_code"]

#: ``ctx.extras`` key of the error code of the response (int), once known.
ERROR_CODE_KEY = "aduib.error_code"
_PROBE_KEY = "aduib.error_probe"
_SHAPER_KEY = "aduib.envelope_shaper"  # responses.set_envelope_shaper's slot


def _record(ctx: RequestContext, env: dict[str, Any]) -> dict[str, Any]:
    err = env.get("error")
    if err is not None:
        ctx.extras[ERROR_CODE_KEY] = err.get("code")
    return env


def watch_error_code(ctx: RequestContext) -> None:
    """Record the code of any error envelope built for this request (idempotent)."""
    extras = ctx.extras
    if _PROBE_KEY in extras:
        return
    extras[_PROBE_KEY] = True
    prev = extras.get(_SHAPER_KEY)
    if prev is None:
        extras[_SHAPER_KEY] = _record  # what set_envelope_shaper does, without the call
        return

    def chained(c: RequestContext, env: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = prev(c, _record(c, env))
        return out

    set_envelope_shaper(ctx, chained)


def record_exception(ctx: RequestContext, exc: BaseException) -> int:
    """Record the table code an escaping exception will be rendered with."""
    code = to_rpc_error(exc).code
    ctx.extras[ERROR_CODE_KEY] = code
    return code


def error_code(ctx: RequestContext) -> int | None:
    """The recorded error code, or None (success, or an error no envelope was built for)."""
    code = ctx.extras.get(ERROR_CODE_KEY)
    return code if isinstance(code, int) else None
