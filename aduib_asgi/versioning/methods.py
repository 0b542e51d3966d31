"""Method-name parsing and normalisation — the one place every transport uses.

The canonical form is ``rpc.v2/{service}/{handler}``. :func:`normalize_method`
also maps the spellings older (v1) clients send — ``rpc.v1/{service}/{handler}``,
``{service}/{handler}`` and ``{service}.{handler}`` — to the canonical form.
The registry resolves names through it, the v1 upgrade rewrites names with it;
v2 envelopes must already carry the canonical form (the envelope model checks).
"""

from __future__ import annotations

from aduib_asgi.models import METHOD_PATTERN, parse_method

__all__ = ["MAX_METHOD_LENGTH", "normalize_method", "split_method"]

MAX_METHOD_LENGTH = 256
_V2 = "rpc.v2/"
_V1 = "rpc.v1/"


def normalize_method(name: object) -> str | None:
    """The canonical ``rpc.v2/{service}/{handler}`` for ``name``, or None if it is not one."""
    if not isinstance(name, str) or not name or len(name) > MAX_METHOD_LENGTH:
        return None
    if name.startswith(_V2):
        return name if METHOD_PATTERN.match(name) else None
    rest = name.strip()
    if rest.startswith(_V1):
        rest = rest[len(_V1):]
    if "/" in rest:
        service, _, handler = rest.rpartition("/")
    elif "." in rest:
        service, _, handler = rest.rpartition(".")
    else:
        return None
    candidate = f"{_V2}{service}/{handler}"
    if len(candidate) > MAX_METHOD_LENGTH or not METHOD_PATTERN.match(candidate):
        return None
    return candidate


def split_method(name: str) -> tuple[str, str] | None:
    """(service, handler) of a method name in any accepted spelling, or None."""
    canonical = normalize_method(name)
    return parse_method(canonical) if canonical is not None else None
