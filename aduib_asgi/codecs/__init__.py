"""Content codecs: bytes <-> JSON-like values, one per media type.

A codec turns a request body into a JSON-like value (dicts, lists, str, int,
float, bool, None) and a response value back into bytes. The registry maps
media types (and aliases) to codecs; the content-negotiation layer picks one
per request and stores it on the request context, so the dispatcher and the
error renderer encode straight into the negotiated type.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pydantic_core

from aduib_asgi.errors import RpcError

__all__ = ["JSON", "Codec", "CodecRegistry", "JsonCodec", "default_registry"]


@runtime_checkable
class Codec(Protocol):
    """Encodes and decodes one media type."""

    media_type: str
    #: ``Content-Type`` header value, precomputed.
    content_type_header: bytes

    def decode(self, data: bytes) -> Any:
        """Bytes to a JSON-like value; raise RpcError 1003 when undecodable."""
        ...

    def encode(self, value: Any) -> bytes:
        """A JSON-like value to bytes."""
        ...


class JsonCodec:
    """``application/json`` via pydantic-core's JSON (fast, nesting-bounded)."""

    media_type = "application/json"
    content_type_header = b"application/json"

    def decode(self, data: bytes) -> Any:
        try:
            return pydantic_core.from_json(data)
        except ValueError as exc:
            raise RpcError(1003, f"Invalid JSON: {exc}") from None

    def encode(self, value: Any) -> bytes:
        return pydantic_core.to_json(value)


JSON = JsonCodec()


class CodecRegistry:
    """Media type (lower-case, no parameters) -> codec, with aliases."""

    def __init__(self) -> None:
        self._codecs: dict[str, Codec] = {}
        self._primary: list[str] = []

    def register(self, codec: Codec, *aliases: str) -> None:
        self._codecs[codec.media_type] = codec
        if codec.media_type not in self._primary:
            self._primary.append(codec.media_type)
        for alias in aliases:
            self._codecs[alias.lower()] = codec

    def get(self, media_type: str) -> Codec | None:
        return self._codecs.get(media_type)

    def media_types(self) -> list[str]:
        """Primary media types, in registration order."""
        return list(self._primary)

    def all_names(self) -> list[str]:
        """Primary media types and aliases."""
        return list(self._codecs)


def default_registry() -> CodecRegistry:
    """A registry holding every codec that is installed."""
    reg = CodecRegistry()
    reg.register(JSON)
    return reg
