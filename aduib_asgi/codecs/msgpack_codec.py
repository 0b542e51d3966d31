"""``application/msgpack`` (aliases ``application/x-msgpack``, ``application/vnd.msgpack``)."""

from __future__ import annotations

from typing import Any

import msgpack
import pydantic_core

from aduib_asgi.errors import RpcError

__all__ = ["MsgpackCodec"]


def _default(value: Any) -> Any:
    return pydantic_core.to_jsonable_python(value)


class MsgpackCodec:
    """MessagePack via the ``msgpack`` C extension.

    Decoding is bounded: map keys must be strings, nesting is limited by the
    unpacker's stack (1024 levels), and container/string lengths by the body size.
    Anything undecodable (bad syntax, truncation, trailing bytes, invalid UTF-8)
    is 1003.
    """

    media_type = "application/msgpack"
    content_type_header = b"application/msgpack"

    def decode(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, ...
            raise RpcError(1003, f"Invalid MessagePack: {type(exc).__name__}") from None

    def encode(self, value: Any) -> bytes:
        out: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
        return out
