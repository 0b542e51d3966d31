"""``application/protobuf``: the envelope messages of ``aduib_rpc.proto``, descriptor-built.

The messages are declared once in :data:`MESSAGES` below; the shipped
``aduib_rpc.proto`` is rendered from the same table (a test keeps them equal),
and the descriptors are built at import time in a private pool, so no
generated ``_pb2`` module has to match the installed protobuf runtime.
``data`` is a ``google.protobuf.Struct`` and ``result`` a ``google.protobuf.Value``;
Struct numbers are doubles, so integral numbers come back as ``int``.
Bodies of other endpoints travel as a ``google.protobuf.Value``.
Needs the ``aduib-asgi[protobuf]`` extra.
"""

from __future__ import annotations

import math
from typing import Any

from aduib_asgi.extras import require

require("google.protobuf", "protobuf", "ProtobufCodec (application/protobuf)")
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    struct_pb2,
)
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from aduib_asgi.errors import RpcError

__all__ = ["MESSAGES", "PACKAGE", "ProtobufCodec", "render_proto"]

PACKAGE = "aduib.rpc.v2"

# (name, type, number, label) — label: "" singular, "optional" (presence), "repeated",
# or "map" (type is the value type of a map<string, type>).
_Field = tuple[str, str, int, str]

MESSAGES: dict[str, list[_Field]] = {
    "TraceContext": [
        ("trace_id", "string", 1, "optional"), ("span_id", "string", 2, "optional"),
        ("parent_span_id", "string", 3, "optional"), ("sampled", "bool", 4, "optional"),
        ("baggage", "string", 5, "map"),
    ],
    "AuthContext": [
        ("scheme", "string", 1, "optional"), ("credentials", "string", 2, "optional"),
        ("principal", "string", 3, "optional"), ("roles", "string", 4, "repeated"),
    ],
    "RequestMetadata": [
        ("timestamp_ms", "int64", 1, "optional"), ("client_id", "string", 2, "optional"),
        ("client_version", "string", 3, "optional"), ("auth", "AuthContext", 4, ""),
        ("tenant_id", "string", 5, "optional"), ("content_type", "string", 6, "optional"),
        ("accept", "string", 7, "repeated"), ("compression", "string", 8, "optional"),
        ("headers", "string", 9, "map"),
    ],
    "RetryConfig": [
        ("max_attempts", "int32", 1, "optional"), ("initial_delay_ms", "int64", 2, "optional"),
        ("max_delay_ms", "int64", 3, "optional"), ("backoff_multiplier", "double", 4, "optional"),
        ("retryable_codes", "int32", 5, "repeated"),
    ],
    "QosConfig": [
        ("priority", "int32", 1, "optional"), ("timeout_ms", "int64", 2, "optional"),
        ("retry", "RetryConfig", 3, ""), ("idempotency_key", "string", 4, "optional"),
    ],
    "Request": [
        ("aduib_rpc", "string", 1, "optional"), ("id", "string", 2, "optional"),
        ("method", "string", 3, "optional"), ("name", "string", 4, "optional"),
        ("data", "google.protobuf.Struct", 5, ""),
        ("supported_versions", "string", 6, "repeated"),
        ("trace_context", "TraceContext", 7, ""), ("metadata", "RequestMetadata", 8, ""),
        ("qos", "QosConfig", 9, ""),
    ],
    "ErrorDetail": [
        ("type", "string", 1, "optional"), ("field", "string", 2, "optional"),
        ("reason", "string", 3, "optional"), ("metadata", "google.protobuf.Struct", 4, ""),
    ],
    "DebugInfo": [
        ("stack_trace", "string", 1, "optional"), ("internal_message", "string", 2, "optional"),
        ("timestamp_ms", "int64", 3, "optional"),
    ],
    "RpcError": [
        ("code", "int32", 1, "optional"), ("name", "string", 2, "optional"),
        ("message", "string", 3, "optional"), ("details", "ErrorDetail", 4, "repeated"),
        ("debug", "DebugInfo", 5, ""),
    ],
    "Pagination": [
        ("total", "int64", 1, "optional"), ("page", "int64", 2, "optional"),
        ("page_size", "int64", 3, "optional"), ("has_next", "bool", 4, "optional"),
        ("cursor", "string", 5, "optional"),
    ],
    "RateLimitInfo": [
        ("limit", "int64", 1, "optional"), ("remaining", "int64", 2, "optional"),
        ("reset_at_ms", "int64", 3, "optional"),
    ],
    "ResponseMetadata": [
        ("timestamp_ms", "int64", 1, "optional"), ("duration_ms", "int64", 2, "optional"),
        ("server_id", "string", 3, "optional"), ("server_version", "string", 4, "optional"),
        ("pagination", "Pagination", 5, ""), ("rate_limit", "RateLimitInfo", 6, ""),
        ("headers", "string", 7, "map"),
    ],
    "Response": [
        ("aduib_rpc", "string", 1, "optional"), ("id", "string", 2, "optional"),
        ("status", "string", 3, "optional"), ("result", "google.protobuf.Value", 4, ""),
        ("error", "RpcError", 5, ""), ("negotiated_version", "string", 6, "optional"),
        ("trace_context", "TraceContext", 7, ""), ("metadata", "ResponseMetadata", 8, ""),
    ],
}

_SCALARS = {
    "string": FieldDescriptor.TYPE_STRING, "bool": FieldDescriptor.TYPE_BOOL,
    "int32": FieldDescriptor.TYPE_INT32, "int64": FieldDescriptor.TYPE_INT64,
    "double": FieldDescriptor.TYPE_DOUBLE,
}


def render_proto() -> str:
    """The ``.proto`` source of :data:`MESSAGES` (what ``aduib_rpc.proto`` holds)."""
    lines = [
        "// Aduib RPC Protocol v2 envelopes for application/protobuf.",
        "// Rendered from aduib_asgi/codecs/protobuf_codec.py MESSAGES; do not edit by hand.",
        'syntax = "proto3";', "", f"package {PACKAGE};", "",
        'import "google/protobuf/struct.proto";', "",
    ]
    for name, fields in MESSAGES.items():
        lines.append(f"message {name} {{")
        for fname, ftype, num, label in fields:
            if label == "map":
                lines.append(f"  map<string, {ftype}> {fname} = {num};")
            else:
                prefix = f"{label} " if label else ""
                lines.append(f"  {prefix}{ftype} {fname} = {num};")
        lines.extend(["}", ""])
    return "\n".join(lines)


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="aduib_rpc.proto", package=PACKAGE, syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )
    for name, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for fname, ftype, num, label in fields:
            f = msg.field.add(name=fname, number=num, json_name=fname)
            if label == "map":
                entry = msg.nested_type.add(name=_map_entry_name(fname))
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=FieldDescriptor.TYPE_STRING,
                                label=FieldDescriptor.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_SCALARS[ftype],
                                label=FieldDescriptor.LABEL_OPTIONAL)
                f.label = FieldDescriptor.LABEL_REPEATED
                f.type = FieldDescriptor.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{name}.{entry.name}"
                continue
            f.label = (FieldDescriptor.LABEL_REPEATED if label == "repeated"
                       else FieldDescriptor.LABEL_OPTIONAL)
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            else:
                f.type = FieldDescriptor.TYPE_MESSAGE
                f.type_name = f".{ftype}" if ftype.startswith("google.") else f".{PACKAGE}.{ftype}"
            if label == "optional":  # proto3 presence: a synthetic oneof per field
                f.proto3_optional = True
                f.oneof_index = len(msg.oneof_decl)
                msg.oneof_decl.add(name=f"_{fname}")
    pool.Add(fdp)
    return pool


def _map_entry_name(field: str) -> str:
    return "".join(p.capitalize() for p in field.split("_")) + "Entry"


_POOL = _build_pool()
_CLASSES: dict[str, type[Message]] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
    for name in MESSAGES
}
RequestMessage = _CLASSES["Request"]
ResponseMessage = _CLASSES["Response"]
ValueMessage = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("google.protobuf.Value"))

_WELL_KNOWN = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
# Field kinds by full name (FieldDescriptor.label is gone in newer runtimes).
_REPEATED = {f"{PACKAGE}.{m}.{f[0]}"
             for m, fs in MESSAGES.items() for f in fs if f[3] == "repeated"}
_MAPS = {f"{PACKAGE}.{m}.{f[0]}" for m, fs in MESSAGES.items() for f in fs if f[3] == "map"}


def _number(v: float) -> float | int:
    if not math.isfinite(v):  # JSON cannot carry them: 1003, as for a JSON body
        raise ValueError("NaN and Infinity are not protocol numbers")
    if v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _json_value(v: Any) -> Any:
    """google.protobuf.Value/Struct/ListValue message -> JSON-like value."""
    full = v.DESCRIPTOR.full_name
    if full == "google.protobuf.Struct":
        return {k: _json_value(x) for k, x in v.fields.items()}
    if full == "google.protobuf.ListValue":
        return [_json_value(x) for x in v.values]
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return _json_value(v.struct_value)
    if kind == "list_value":
        return [_json_value(x) for x in v.list_value.values]
    if kind == "number_value":
        return _number(v.number_value)
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None


def _to_dict(msg: Any) -> dict[str, Any]:
    """A message -> dict of the fields that are present (ints stay ints)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        full = field.full_name
        if full in _MAPS:
            out[field.name] = dict(value)
        elif field.message_type is not None:
            if field.message_type.full_name in _WELL_KNOWN:
                out[field.name] = _json_value(value)
            elif full in _REPEATED:
                out[field.name] = [_to_dict(x) for x in value]
            else:
                out[field.name] = _to_dict(value)
        elif full in _REPEATED:
            out[field.name] = list(value)
        else:
            out[field.name] = value
    return out


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


class ProtobufCodec:
    """Request/Response envelopes as ``aduib.rpc.v2`` messages; other values as ``Value``."""

    media_type = "application/protobuf"
    content_type_header = b"application/protobuf"

    def decode(self, data: bytes) -> Any:
        """A serialized ``Request`` -> envelope dict (1003 when it does not parse)."""
        try:
            msg = RequestMessage.FromString(data)
            return _to_dict(msg)
        except Exception as exc:  # DecodeError, RecursionError on hostile nesting
            raise RpcError(1003, f"Invalid protobuf Request: {type(exc).__name__}") from None

    def decode_value(self, data: bytes) -> Any:
        """A serialized ``google.protobuf.Value`` (bodies of non-envelope endpoints)."""
        try:
            return _json_value(ValueMessage.FromString(data))
        except Exception as exc:
            raise RpcError(1003, f"Invalid protobuf Value: {type(exc).__name__}") from None

    def encode(self, value: Any) -> bytes:
        """A response envelope as ``Response``; any other JSON-like value as ``Value``."""
        if isinstance(value, dict) and "status" in value and "aduib_rpc" in value:
            msg = json_format.ParseDict(_drop_none(value), ResponseMessage(),
                                        ignore_unknown_fields=True)
        else:
            msg = json_format.ParseDict(value, ValueMessage())
        return bytes(msg.SerializeToString())

    # Client-side helpers (tests, examples, other clients of this server).

    @staticmethod
    def encode_request(envelope: dict[str, Any]) -> bytes:
        """A request envelope dict -> serialized ``Request``."""
        msg = json_format.ParseDict(_drop_none(envelope), RequestMessage(),
                                    ignore_unknown_fields=True)
        return bytes(msg.SerializeToString())

    @staticmethod
    def decode_response(data: bytes) -> dict[str, Any]:
        """A serialized ``Response`` -> envelope dict."""
        return _to_dict(ResponseMessage.FromString(data))
