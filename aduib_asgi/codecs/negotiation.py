"""Parsing ``Accept``-style headers (RFC 9110 §12.4) and choosing a response codec."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aduib_asgi.codecs import Codec, CodecRegistry

__all__ = ["choose_codec", "media_type_of", "parse_qlist"]


def parse_qlist(value: str) -> list[tuple[str, float]]:
    """``"a;q=0.5, b"`` -> ``[("a", 0.5), ("b", 1.0)]``: lower-case tokens, q clamped to [0, 1].

    Parameters other than ``q`` are dropped; an unparsable q counts as 0
    (RFC 9110 allows ignoring the member; treating it as "not acceptable" is the
    conservative reading).
    """
    out: list[tuple[str, float]] = []
    for part in value.split(","):
        token, _, params = part.partition(";")
        token = token.strip().lower()
        if not token:
            continue
        q = 1.0
        if params:
            for param in params.split(";"):
                key, _, val = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        q = min(1.0, max(0.0, float(val.strip())))
                    except ValueError:
                        q = 0.0
        out.append((token, q))
    return out


def media_type_of(value: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return value.partition(";")[0].strip().lower()


def _q_for(names: Iterable[str], ranges: Sequence[tuple[str, float]]) -> tuple[float, int]:
    """(q, specificity) of the most specific range matching any of ``names``; (0, 0) if none."""
    best_q, best_spec = 0.0, 0
    for rng, q in ranges:
        if rng == "*/*":
            spec = 1
        elif rng.endswith("/*"):
            prefix = rng[:-1]
            spec = 2 if any(n.startswith(prefix) for n in names) else 0
        else:
            spec = 3 if rng in names else 0
        if spec > best_spec or (spec == best_spec and spec and q > best_q):
            best_q, best_spec = q, spec
    return best_q, best_spec


def choose_codec(
    ranges: Sequence[tuple[str, float]],
    registry: CodecRegistry,
    request_codec: Codec | None = None,
) -> Codec | None:
    """The codec to answer with, or None when nothing acceptable is supported.

    Highest q wins; ties go to the more specific match (``type/subtype`` over
    ``type/*`` over ``*/*``), then to the request's own codec, then to the
    registry's order. ``q=0`` excludes.
    """
    best: Codec | None = None
    best_key: tuple[float, int, int, int] = (0.0, 0, 0, 0)
    for index, codec in enumerate(registry.codecs()):
        q, spec = _q_for(registry.names_of(codec), ranges)
        if q <= 0.0:
            continue
        key = (q, spec, 1 if codec is request_codec else 0, -index)
        if best is None or key > best_key:
            best, best_key = codec, key
    return best
