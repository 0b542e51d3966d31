"""Write the seed corpora (``tests/fuzz/corpus/<target>/``): small valid inputs.

``python -m tests.fuzz.make_seeds`` regenerates them; they are committed, so a
run starts from inputs that reach deep into each parser.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack

from aduib_asgi.codecs.avro_codec import AvroCodec
from aduib_asgi.codecs.protobuf_codec import ProtobufCodec
from aduib_asgi.compression import available_codings

CORPUS = Path(__file__).parent / "corpus"

ENVELOPES: list[dict[str, Any]] = [
    {"aduib_rpc": "2.0", "id": "r1", "method": "rpc.v2/Echo/echo", "data": {"a": [1, 2.5, "x"]}},
    {"aduib_rpc": "2.0", "method": "rpc.v2/Echo/stream", "data": {"count": 2},
     "supported_versions": ["2.0", "1.0"],
     "trace_context": {"trace_id": "0af7651916cd43dd8448eb211c80319c",
                       "span_id": "b7ad6b7169203331", "baggage": {"k": "v"}},
     "metadata": {"tenant_id": "acme", "auth": {"scheme": "bearer", "credentials": "t"},
                  "headers": {"x-a": "b"}, "accept": ["application/json"]},
     "qos": {"priority": 2, "timeout_ms": 500, "idempotency_key": "k-1",
             "retry": {"max_attempts": 2}}},
    {"aduib_rpc": "1.0", "id": 7, "method": "Echo.echo", "data": None,
     "meta": {"timeout_ms": 100, "stream": False}},
]
HEADER_VALUES = [
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    b"userId=alice,serverNode=DF%2028,isProduction=false;prop=1",
    b"acme", b'"a \\"quoted\\" key"', b"key-123", b"2.0, 1.0", b"2.10", b"envelope",
    b"application/msgpack;q=0.9, application/json;q=0.5, */*;q=0",
    b"gzip;q=1.0, zstd;q=0.5, br, *;q=0", b"250", b"high",
]


def _write(target: str, items: list[bytes]) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / hashlib.sha1(item).hexdigest()[:16]).write_bytes(item)


def main() -> None:
    as_json = [json.dumps(e).encode() for e in ENVELOPES]
    _write("codec_json", as_json)
    _write("codec_msgpack", [msgpack.packb(e) for e in ENVELOPES])
    v2 = [e for e in ENVELOPES if e["aduib_rpc"] == "2.0"]
    _write("codec_protobuf", [ProtobufCodec.encode_request(e) for e in v2])
    _write("codec_avro", [AvroCodec.encode_request(e) for e in v2])
    for name, coding in available_codings().items():
        body = as_json[1]
        one = coding.compress(body)
        _write(f"coding_{name}", [one, one + coding.compress(b"{}"), coding.compress(b"")])
    _write("headers_target", [b"\xff".join(HEADER_VALUES[i:i + 3]) for i in
                              range(0, len(HEADER_VALUES), 3)])
    _write("sse_target", [b"data\xff1\xff{\"a\":1}", b"end\xff2\xffline1\nline2\r\nline3\r"])
    http = []
    for path in range(6):
        for ctype, body in ((0, as_json[0]), (0, as_json[1]), (1, msgpack.packb(ENVELOPES[0])),
                            (0, json.dumps({"task_id": "x", "target_method":
                                            "rpc.v2/Echo/echo"}).encode())):
            values = b"\xff".join(HEADER_VALUES)
            http.append(bytes([path, ctype, 0, 0x5B]) + values + b"\xff" + body)
    gz = available_codings()["gzip"].compress(as_json[0])
    http.append(bytes([0, 0, 1, 0]) + b"\xff" * 12 + gz)
    _write("http_target", http)
    ws = [b"\x01" + as_json[1],
          b"\x01" + as_json[1] + b"\xff\x01" + json.dumps(
              {"type": "ack", "payload": {"control": {"ack_sequence": 1}}}).encode()
          + b"\xff\x01" + json.dumps({"type": "cancel", "payload": {"control": {
              "reason": "bye"}}}).encode(),
          b"\x00" + msgpack.packb(ENVELOPES[0])]
    _write("websocket_target", ws)


if __name__ == "__main__":
    main()
