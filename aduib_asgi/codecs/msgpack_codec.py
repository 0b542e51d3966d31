"""``application/msgpack`` (aliases ``application/x-msgpack``, ``application/vnd.msgpack``)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pydantic_core

from aduib_asgi.errors import RpcError

__all__ = ["MsgpackCodec"]


def _default(value: Any) -> Any:
    return pydantic_core.to_jsonable_python(value)


#: Deeper than this is refused (JSON's decoder has a bound of the same order).
MAX_DEPTH = 200


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"MessagePack ext type {code} is not a protocol value")


def _check(value: Any, depth: int = 0) -> None:
    """Refuse what the protocol's other codecs (JSON) cannot carry; bytes are allowed."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity are not protocol numbers")
    elif isinstance(value, dict):
        for v in value.values():
            _check(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check(v, depth + 1)
    elif isinstance(value, msgpack.Timestamp):
        raise ValueError("MessagePack timestamps are not protocol values")


class MsgpackCodec:
    """MessagePack via the ``msgpack`` C extension.

    Decoding is bounded: map keys must be strings, nesting is limited to
    ``MAX_DEPTH`` levels, and container/string lengths by the body size.
    Anything undecodable (bad syntax, truncation, trailing bytes, invalid UTF-8)
    or that JSON cannot carry (NaN/Infinity, ext types, timestamps) is 1003;
    binary values are allowed (JSON answers carry them base64-encoded).
    """

    media_type = "application/msgpack"
    content_type_header = b"application/msgpack"

    def decode(self, data: bytes) -> Any:
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
            _check(value)
        except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, ...
            raise RpcError(1003, f"Invalid MessagePack: {exc}"
                           if isinstance(exc, ValueError) and str(exc) else
                           f"Invalid MessagePack: {type(exc).__name__}") from None
        return value

    def encode(self, value: Any) -> bytes:
        out: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
        return out
