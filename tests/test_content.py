"""ContentNegotiationMiddleware and the codecs, through the real ASGI stack."""

from __future__ import annotations

import gzip
import importlib.resources
from typing import Any

import brotli
import httpx
import lz4.frame
import msgpack
import pytest
import snappy
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aduib_asgi import codecs as codecs_module
from aduib_asgi.codecs import CodecRegistry, default_registry
from aduib_asgi.codecs.avro_codec import AvroCodec
from aduib_asgi.codecs.protobuf_codec import ProtobufCodec, render_proto
from aduib_asgi.context import RequestContext
from aduib_asgi.middleware import ContentNegotiationMiddleware, ErrorMappingMiddleware
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio

PB, AVRO = ProtobufCodec(), AvroCodec()

# media type -> (encode request envelope, decode response envelope)
FORMATS: dict[str, tuple[Any, Any]] = {
    "application/json": (lambda e: httpx.Response(200, json=e).content,
                         lambda b: __import__("json").loads(b)),
    "application/msgpack": (msgpack.packb, msgpack.unpackb),
    "application/protobuf": (PB.encode_request, PB.decode_response),
    "application/avro": (AVRO.encode_request, AVRO.decode_response),
}


def _snappy_decompress(data: bytes) -> bytes:
    return snappy.StreamDecompressor().decompress(data)


# coding -> (compress, decompress)
CODINGS: dict[str, tuple[Any, Any]] = {
    "identity": (lambda b: b, lambda b: b),
    "gzip": (gzip.compress, gzip.decompress),
    "zstd": (zstandard.ZstdCompressor().compress,
             lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
    "lz4": (lz4.frame.compress, lz4.frame.decompress),
    "snappy": (lambda b: snappy.StreamCompressor().compress(b), _snappy_decompress),
    "br": (brotli.compress, brotli.decompress),
}


async def raw_post(client: httpx.AsyncClient, body: bytes, headers: dict[str, str],
                   url: str = RPC) -> tuple[httpx.Response, bytes]:
    """POST and return the response with its body exactly as sent (not decoded)."""
    headers = {"accept-encoding": "identity", **headers}
    async with client.stream("POST", url, content=body, headers=headers) as r:
        raw = b"".join([c async for c in r.aiter_raw()])
    return r, raw


@pytest.mark.parametrize("coding", list(CODINGS))
@pytest.mark.parametrize("media", list(FORMATS))
async def test_round_trip_each_type_and_coding(
    demo_client: httpx.AsyncClient, media: str, coding: str
) -> None:
    enc, dec = FORMATS[media]
    comp, decomp = CODINGS[coding]
    data = {"text": "lorem ipsum " * 200, "n": 7, "nested": {"ok": True, "list": [1, "a"]}}
    body = comp(enc(envelope("rpc.v2/Echo/echo", data, id=f"rt-{media}-{coding}")))
    headers = {"content-type": media, "accept": media, "accept-encoding": coding}
    if coding != "identity":
        headers["content-encoding"] = coding
    r, raw = await raw_post(demo_client, body, headers)
    assert r.status_code == 200, raw[:200]
    assert r.headers["content-type"] == media
    assert "Accept" in r.headers.get_list("vary", split_commas=True)
    if coding == "identity":
        assert "content-encoding" not in r.headers
    else:
        assert r.headers["content-encoding"] == coding
        assert int(r.headers["content-length"]) == len(raw)
    out = dec(decomp(raw))
    assert out["id"] == f"rt-{media}-{coding}"
    assert out["status"] == "success"
    assert out["result"] == data


@pytest.mark.parametrize(
    ("accept", "request_type", "expected"),
    [
        ("application/msgpack;q=0.5, application/json;q=0.9", "application/json",
         "application/json"),
        ("*/*", "application/msgpack", "application/msgpack"),
        ("application/json, */*", "application/msgpack", "application/json"),
        ("application/json;q=0, */*", "application/json", "application/msgpack"),
        ("application/*;q=0.2, application/protobuf", "application/json",
         "application/protobuf"),
        ("application/*", "application/msgpack", "application/msgpack"),
        ("application/X-MSGPACK; q=1.0", "application/json", "application/msgpack"),
        ("application/vnd.msgpack", "application/json", "application/msgpack"),
        ("text/html;q=0.9, application/avro;q=0.1", "application/json", "application/avro"),
    ],
)
async def test_accept_q_values(
    demo_client: httpx.AsyncClient, accept: str, request_type: str, expected: str
) -> None:
    body = FORMATS[request_type][0](envelope("rpc.v2/Echo/echo", {"x": 1}))
    r, raw = await raw_post(demo_client, body, {"content-type": request_type, "accept": accept,
                                                "accept-encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-type"] == expected
    assert FORMATS[expected][1](raw)["result"] == {"x": 1}


@pytest.mark.parametrize("accept", ["text/html", "application/json;q=0",
                                    "application/json;q=abc", "image/*, text/html"])
async def test_nothing_acceptable_is_406(demo_client: httpx.AsyncClient, accept: str) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {}),
                               headers={"accept": accept})
    assert r.status_code == 406
    assert r.json()["error"]["code"] == 1003
    assert r.json()["status"] == "error"


async def test_metadata_accept_used_without_accept_header(
    demo_client: httpx.AsyncClient,
) -> None:
    body = envelope("rpc.v2/Echo/echo", {"x": 1},
                    metadata={"accept": ["application/protobuf", "application/json"]})
    r, raw = await raw_post(demo_client, httpx.Response(200, json=body).content,
                            {"content-type": "application/json", "accept-encoding": "identity"})
    assert r.headers["content-type"] == "application/protobuf"
    assert PB.decode_response(raw)["result"] == {"x": 1}
    # An explicit Accept header wins over metadata.accept.
    r, raw = await raw_post(demo_client, httpx.Response(200, json=body).content,
                            {"content-type": "application/json", "accept": "application/json"})
    assert r.headers["content-type"] == "application/json"


async def test_metadata_accept_nothing_supported_is_406(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {},
                                                  metadata={"accept": ["text/html"]}))
    assert r.status_code == 406
    assert r.json()["error"]["code"] == 1003


async def test_request_type_is_default_response_type(demo_client: httpx.AsyncClient) -> None:
    r, raw = await raw_post(demo_client, msgpack.packb(envelope("rpc.v2/Echo/echo", {"a": 1})),
                            {"content-type": "application/msgpack"})
    assert r.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(raw)["result"] == {"a": 1}


@pytest.mark.parametrize("media", ["application/msgpack", "application/protobuf",
                                   "application/avro"])
async def test_handler_errors_in_negotiated_type(demo_client: httpx.AsyncClient,
                                                 media: str) -> None:
    enc, dec = FORMATS[media]
    body = enc(envelope("rpc.v2/Echo/fail", {"code": 4001, "message": "nope"}, id="e1"))
    r, raw = await raw_post(demo_client, body, {"content-type": media, "accept": media})
    assert r.status_code == 404
    assert r.headers["content-type"] == media
    out = dec(raw)
    assert out["status"] == "error"
    assert out["id"] == "e1"
    assert out["error"]["code"] == 4001
    assert out["error"]["message"] == "nope"
    assert out["error"]["name"] == "METHOD_NOT_FOUND"


async def test_decode_error_in_msgpack_when_msgpack_negotiated(
    demo_client: httpx.AsyncClient,
) -> None:
    r, raw = await raw_post(demo_client, b"\xc1\xc1", {"content-type": "application/msgpack"})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/msgpack"
    out = msgpack.unpackb(raw)
    assert out["error"]["code"] == 1003
    assert out["status"] == "error"


@pytest.mark.parametrize(
    ("media", "body", "code"),
    [
        ("application/json", b"{bad json", 1003),
        ("application/json", b'"\xff\xfe"', 1003),
        ("application/json", b"[" * 100_000 + b"]" * 100_000, 1003),
        ("application/msgpack", b"\xc1", 1003),
        ("application/msgpack", b"\x93\x01", 1003),
        ("application/msgpack", b"\x91" * 100_000 + b"\x90", 1003),
        ("application/msgpack", b"\x81\x01\x02", 1003),
        ("application/msgpack", msgpack.packb([1, 2]), 1002),
        ("application/protobuf", PB.encode_request(envelope("rpc.v2/Echo/echo", {"a": 1}))[:-2],
         1003),
        ("application/protobuf", b"\x2a" + b"\x80" * 20, 1003),
        ("application/protobuf", b"\x2a\x05" * 30_000, 1003),
        ("application/avro", AVRO.encode_request(envelope("rpc.v2/Echo/echo", {"a": 1}))[:-3],
         1003),
        ("application/avro", b"\xff" * 16, 1003),
        ("application/json", b"", 1002),
    ],
)
async def test_undecodable_bodies_are_400(
    demo_client: httpx.AsyncClient, media: str, body: bytes, code: int
) -> None:
    r, raw = await raw_post(demo_client, body, {"content-type": media,
                                                "accept": "application/json"})
    assert r.status_code == 400
    out = httpx.Response(200, content=raw).json()
    assert out["status"] == "error"
    assert out["error"]["code"] == code


async def test_unsupported_content_type_is_415_with_accept_post(
    demo_client: httpx.AsyncClient,
) -> None:
    r = await demo_client.post(RPC, content=b"a=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["error"]["code"] == 1003
    listed = [t.strip() for t in r.headers["accept-post"].split(",")]
    assert listed == ["application/json", "application/msgpack", "application/protobuf",
                      "application/avro"]


async def test_missing_extra_answers_415_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> Any:
        raise ImportError("No module named 'google.protobuf'")

    monkeypatch.setattr(codecs_module, "_load_protobuf", unavailable)
    registry = default_registry()
    assert "application/protobuf" not in registry.media_types()
    app = ErrorMappingMiddleware(ContentNegotiationMiddleware(_echo_app(), registry=registry))
    async with client_for(app) as client:
        for media in ("application/protobuf", "application/x-protobuf"):
            r = await client.post(RPC, content=b"\x0a\x00", headers={"content-type": media})
            assert r.status_code == 415
            assert "aduib-asgi[protobuf]" in r.json()["error"]["message"]
            assert "application/protobuf" not in r.headers["accept-post"]
        r = await client.post(RPC, json={}, headers={"accept": "application/protobuf"})
        assert r.status_code == 406


async def test_body_over_cap_is_413() -> None:
    app = ContentNegotiationMiddleware(_echo_app(), max_body_size=1000)
    async with client_for(app) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Echo/echo", {"t": "x" * 2000}))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 2004


async def test_inner_layers_see_one_decoded_envelope() -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        ctx: RequestContext = scope["aduib.context"]
        seen.append((ctx.envelope, ctx.request_codec, ctx.response_codec))
        message = await receive()  # the bytes are still replayed for an app that wants them
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    body = msgpack.packb(envelope("rpc.v2/Echo/echo", {"a": 1}, id="x1"))
    async with client_for(ContentNegotiationMiddleware(inner)) as client:
        r = await client.post(RPC, content=body, headers={"content-type": "application/msgpack",
                                                          "accept": "application/json"})
    assert r.status_code == 204
    env, req_codec, resp_codec = seen[0]
    assert env.id == "x1" and env.method == "rpc.v2/Echo/echo" and env.data == {"a": 1}
    assert req_codec.media_type == "application/msgpack"
    assert resp_codec.media_type == "application/json"
    assert seen[1] == body


async def test_handler_sees_content_type_and_accept(demo_client: httpx.AsyncClient) -> None:
    _r, raw = await raw_post(demo_client, msgpack.packb(envelope("rpc.v2/Echo/context")),
                            {"content-type": "application/msgpack",
                             "accept": "application/json, application/msgpack;q=0.5"})
    out = httpx.Response(200, content=raw).json()["result"]
    assert out["content_type"] == "application/msgpack"
    assert out["accept"] == "application/json"  # the negotiated response type


# -- around a plain Starlette app ---------------------------------------------------------


def _echo_app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"ctype": request.headers.get("content-type"),
                             "json": (await request.json()) if body else None})

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]),
                             Route(RPC, echo, methods=["POST"])])


async def test_plain_app_gets_msgpack_transcoded_to_json() -> None:
    app = ErrorMappingMiddleware(ContentNegotiationMiddleware(_echo_app()))
    async with client_for(app) as client:
        r = await client.post("/echo", content=msgpack.packb({"a": [1, 2], "b": "c"}),
                              headers={"content-type": "application/x-msgpack"})
        assert r.status_code == 200
        assert r.json() == {"ctype": "application/json", "json": {"a": [1, 2], "b": "c"}}
        assert "Accept" in r.headers.get_list("vary", split_commas=True)
        # JSON passes through as it is; other types are left to the app.
        r = await client.post("/echo", json={"z": 1})
        assert r.json() == {"ctype": "application/json", "json": {"z": 1}}
        r = await client.post("/echo", content=b"", headers={"content-type": "text/plain"})
        assert r.status_code == 200 and r.json()["ctype"] == "text/plain"
        # An Accept the layer cannot satisfy is the plain app's business.
        r = await client.post("/echo", json={"z": 1}, headers={"accept": "text/html"})
        assert r.status_code == 200


async def test_plain_app_rejects_bad_bodies_with_envelopes() -> None:
    app = ContentNegotiationMiddleware(_echo_app())  # alone: renders its own errors
    async with client_for(app) as client:
        r = await client.post("/echo", content=b"\xc1", headers={"content-type":
                                                                 "application/msgpack"})
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/msgpack"
        assert msgpack.unpackb(r.content)["error"]["code"] == 1003
        r = await client.post("/echo", content=b"\x00", headers={"content-type":
                                                                 "application/avro"})
        assert r.status_code == 415
        assert r.headers["content-type"] == "application/avro"  # the request's type
        assert AVRO.decode_response(r.content)["error"]["code"] == 1003


async def test_plain_app_protobuf_value_body() -> None:
    app = ContentNegotiationMiddleware(_echo_app())
    async with client_for(app) as client:
        r = await client.post("/echo", content=PB.encode({"k": [1, 2.5, None]}),
                              headers={"content-type": "application/protobuf"})
    assert r.json()["json"] == {"k": [1, 2.5, None]}


async def test_strict_mode_rejects_unknown_types_everywhere() -> None:
    app = ContentNegotiationMiddleware(_echo_app(), strict=True)
    async with client_for(app) as client:
        r = await client.post("/echo", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = await client.post("/echo", json={}, headers={"accept": "text/html"})
        assert r.status_code == 406


async def test_websocket_scope_passes_through() -> None:
    called: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    await ContentNegotiationMiddleware(inner)({"type": "websocket", "path": "/"}, None, None)
    assert called == ["websocket"]


def test_shipped_proto_matches_descriptors() -> None:
    shipped = importlib.resources.files("aduib_asgi.codecs").joinpath("aduib_rpc.proto")
    assert shipped.read_text("utf-8") == render_proto()


def test_registry_lookup_and_missing() -> None:
    reg = CodecRegistry()
    reg.register_missing("application/avro", "avro")
    assert reg.get("application/avro") is None
    assert reg.missing("application/avro") == "avro"
    reg.register(AVRO)
    assert reg.missing("application/avro") is None
    assert reg.get("application/avro") is AVRO


@pytest.mark.parametrize("accept", ["text/event-stream", "text/*"])
async def test_sse_accept_is_not_406(demo_client: httpx.AsyncClient, accept: str) -> None:
    # The 2.0.1 client sends Accept: text/event-stream on stream calls.
    r = await demo_client.post(RPC + "/stream", json=envelope("rpc.v2/Echo/nope"),
                               headers={"accept": accept})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 4001


async def test_v1_decode_errors_are_v1_shaped(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post("/aduib_rpc/v1/rpc", content=b"\xc1",
                               headers={"content-type": "application/msgpack",
                                        "accept": "application/json"})
    assert r.status_code == 400
    assert r.json()["aduib_rpc"] == "1.0" and r.json()["error"]["code"] == 1003


# -- review: values JSON cannot carry ------------------------------------------------------------


@pytest.mark.parametrize(("value", "why"), [
    (float("nan"), "NaN"), (float("inf"), "Infinity"),
    ("ext", "an ext type"), ("timestamp", "a Timestamp"), ("deep", "300 levels"),
])
async def test_msgpack_values_json_cannot_carry_are_1003(demo_client: httpx.AsyncClient,
                                                          value: Any, why: str) -> None:
    import msgpack

    if value == "ext":
        value = msgpack.ExtType(5, b"x")
    elif value == "timestamp":
        value = msgpack.Timestamp(1, 0)
    elif value == "deep":
        for _ in range(300):
            value = [value]
    body = msgpack.packb({"aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo",
                          "data": {"v": value}}, use_bin_type=True)
    r = await demo_client.post(RPC, content=body, headers={
        "Content-Type": "application/msgpack", "Accept": "application/json"})
    assert r.status_code == 400, why
    assert r.json()["error"]["code"] == 1003


async def test_msgpack_bytes_answered_in_json_are_base64(demo_client: httpx.AsyncClient) -> None:
    import base64

    import msgpack

    body = msgpack.packb({"aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo",
                          "data": {"blob": b"\xff\x00\x01"}}, use_bin_type=True)
    as_json = await demo_client.post(RPC, content=body, headers={
        "Content-Type": "application/msgpack", "Accept": "application/json"})
    as_msgpack = await demo_client.post(RPC, content=body, headers={
        "Content-Type": "application/msgpack", "Accept": "application/msgpack"})
    assert as_json.status_code == 200
    encoded = as_json.json()["result"]["blob"]  # URL-safe base64 (RFC 4648 section 5)
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)) == b"\xff\x00\x01"
    assert msgpack.unpackb(as_msgpack.content)["result"]["blob"] == b"\xff\x00\x01"


def test_protobuf_non_finite_numbers_are_1003() -> None:
    pytest.importorskip("google.protobuf")
    from aduib_asgi.codecs.protobuf_codec import ProtobufCodec, RequestMessage
    from aduib_asgi.errors import RpcError

    msg = RequestMessage(aduib_rpc="2.0", method="rpc.v2/Echo/echo")
    msg.data["v"] = float("nan")
    with pytest.raises(RpcError) as bad:
        ProtobufCodec().decode(msg.SerializeToString())
    assert bad.value.code == 1003
