"""``application/avro``: envelopes as Avro binary (fastavro) with the shipped ``envelope.avsc``.

Records ``aduib.rpc.v2.Request`` and ``aduib.rpc.v2.Response`` carry the
envelope's fixed members as typed fields (``trace_context`` and ``error`` are
records) and its open-ended JSON members (``data``, ``result``, ``metadata``,
``qos``, ``details[].metadata``) as JSON text, so any JSON value round-trips
without a recursive Avro union. Bodies are schemaless (no container header):
both sides know the schema. Only envelopes travel as Avro; other values make
:meth:`AvroCodec.encode` raise, and the response falls back to JSON.
Needs the ``aduib-asgi[avro]`` extra.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from typing import Any

import pydantic_core

from aduib_asgi.extras import require

require("fastavro", "avro", "AvroCodec (application/avro)")
import fastavro
import fastavro.schema

from aduib_asgi.errors import RpcError

__all__ = ["SCHEMAS", "AvroCodec", "load_schemas"]


def load_schemas() -> dict[str, Any]:
    """The records of ``envelope.avsc`` by full name, each parsed standalone."""
    text = resources.files("aduib_asgi.codecs").joinpath("envelope.avsc").read_text("utf-8")
    expanded: Any = fastavro.schema.expand_schema(json.loads(text))
    return {s["name"]: fastavro.parse_schema(s) for s in expanded}  # references inlined


SCHEMAS = load_schemas()
_REQUEST = SCHEMAS["aduib.rpc.v2.Request"]
_RESPONSE = SCHEMAS["aduib.rpc.v2.Response"]
_JSON_REQUEST_FIELDS = ("data", "metadata", "qos")


def _text(value: Any) -> str | None:
    return None if value is None else pydantic_core.to_json(value).decode("utf-8")


def _from_text(value: str | None) -> Any:
    return None if value is None else pydantic_core.from_json(value, allow_inf_nan=False)


def _read(data: bytes, schema: Any) -> dict[str, Any]:
    buf = io.BytesIO(data)
    record: Any = fastavro.schemaless_reader(buf, schema, None)
    if buf.tell() != len(data):
        raise ValueError("trailing bytes after the record")
    return record


class AvroCodec:
    """Request/Response envelopes as Avro records."""

    media_type = "application/avro"
    content_type_header = b"application/avro"
    #: Only request envelopes can be decoded (other endpoints answer 415).
    envelope_only = True

    def decode(self, data: bytes) -> Any:
        """A serialized ``Request`` record -> envelope dict (1003 when it does not parse)."""
        try:
            rec = _read(data, _REQUEST)
            for key in _JSON_REQUEST_FIELDS:
                rec[key] = _from_text(rec[key])
        except Exception as exc:  # EOFError, ValueError, UnicodeDecodeError, ...
            raise RpcError(1003, f"Invalid Avro Request: {type(exc).__name__}") from None
        return {k: v for k, v in rec.items() if v is not None}

    def encode(self, value: Any) -> bytes:
        """A response envelope dict -> serialized ``Response`` record."""
        if not (isinstance(value, dict) and "status" in value and "aduib_rpc" in value):
            raise TypeError("application/avro carries response envelopes only")
        rec = dict(value)
        rec["result"] = _text(value.get("result"))
        rec["metadata"] = _text(value.get("metadata"))
        err = value.get("error")
        if err is not None:
            err = dict(err)
            err["details"] = [{**d, "metadata": _text(d.get("metadata"))}
                              for d in err.get("details") or ()]
            rec["error"] = err
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, _RESPONSE, rec)
        return buf.getvalue()

    # Client-side helpers (tests, examples, other clients of this server).

    @staticmethod
    def encode_request(envelope: dict[str, Any]) -> bytes:
        """A request envelope dict -> serialized ``Request`` record."""
        rec = dict(envelope)
        for key in _JSON_REQUEST_FIELDS:
            rec[key] = _text(envelope.get(key))
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, _REQUEST, rec)
        return buf.getvalue()

    @staticmethod
    def decode_response(data: bytes) -> dict[str, Any]:
        """A serialized ``Response`` record -> envelope dict."""
        rec = _read(data, _RESPONSE)
        rec["result"] = _from_text(rec["result"])
        rec["metadata"] = _from_text(rec["metadata"])
        if rec.get("error") is not None:
            for d in rec["error"]["details"]:
                d["metadata"] = _from_text(d["metadata"])
        return {k: v for k, v in rec.items() if v is not None}
