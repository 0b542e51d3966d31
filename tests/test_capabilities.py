"""GET /aduib_rpc/v2/capabilities: built from what is installed and registered."""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ErrorMappingMiddleware, VersionNegotiationMiddleware
from aduib_asgi.models import ServiceCapabilities
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import client_for

pytestmark = pytest.mark.anyio

CAPS = "/aduib_rpc/v2/capabilities"


async def get_caps(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get(CAPS)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    ServiceCapabilities.model_validate(body)
    return body


async def test_demo_capabilities(demo_client: httpx.AsyncClient) -> None:
    caps = await get_caps(demo_client)
    assert caps["protocol_versions"] == ["2.0", "1.0"]
    assert caps["streaming"] is True and caps["bidirectional"] is True  # /rpc/stream, /rpc/ws
    assert caps["content_types"][:2] == ["application/json", "application/msgpack"]
    assert "gzip" in caps["compressions"] and "identity" in caps["compressions"]
    methods = {m["name"]: m for m in caps["methods"]}
    assert "rpc.v2/Echo/echo" in methods
    legacy = methods["rpc.v2/Legacy/old"]
    assert legacy["deprecated"] is True
    assert legacy["sunset"].startswith("2027-01-01")
    assert legacy["versions"] == ["2.0", "1.0"]
    assert methods["rpc.v2/Echo/echo"]["deprecated"] is False


async def test_capabilities_only_answers_get(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.post(CAPS, json={})
    assert r.status_code == 405 and r.json()["error"]["code"] == 2000


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


def custom_app() -> Any:
    registry = MethodRegistry()
    registry.register("rpc.v2/Math/double", lambda d: {"doubled": d.n * 2},
                      input_model=In, output_model=Out, idempotent=True)
    registry.register("rpc.v2/Math/old", lambda d: d, removed_in="2.1")
    registry.register("rpc.v2/Math/new", lambda d: d, since="2.1")

    def ticks(data: dict[str, Any]) -> Any:
        yield {"i": 1}

    registry.register("rpc.v2/Math/ticks", ticks)
    dispatcher = RpcDispatcher(registry)
    dispatcher._routes.pop("/aduib_rpc/v2/rpc/stream", None)  # a build without streaming
    dispatcher._ws_routes.pop("/aduib_rpc/v2/rpc/ws", None)
    return build_stack(dispatcher, [
        Layer.of(ErrorMappingMiddleware),
        Layer.of(VersionNegotiationMiddleware, versions=("2.10", "2.1", "2.0")),
    ])


async def test_versions_and_method_descriptors_follow_configuration() -> None:
    async with client_for(custom_app()) as client:
        caps = await get_caps(client)
    assert caps["protocol_versions"] == ["2.10", "2.1", "2.0"]
    methods = {m["name"]: m for m in caps["methods"]}
    double = methods["rpc.v2/Math/double"]
    assert double["idempotent"] is True and double["streaming"] is False
    assert double["input_schema"]["properties"] == {"n": {"title": "N", "type": "integer"}}
    assert "doubled" in double["output_schema"]["properties"]
    assert (double["service"], double["handler"]) == ("Math", "double")
    assert methods["rpc.v2/Math/old"]["versions"] == ["2.0"]
    assert methods["rpc.v2/Math/new"]["versions"] == ["2.10", "2.1"]
    assert methods["rpc.v2/Math/ticks"]["streaming"] is True
    assert caps["streaming"] is False and caps["bidirectional"] is False  # no endpoints


async def test_streaming_flags_follow_installed_endpoints() -> None:
    dispatcher = RpcDispatcher(MethodRegistry())

    async def endpoint(*args: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    dispatcher._routes.pop("/aduib_rpc/v2/rpc/stream", None)
    dispatcher._ws_routes.pop("/aduib_rpc/v2/rpc/ws", None)
    async with client_for(dispatcher) as client:
        caps = await get_caps(client)
    assert caps["streaming"] is False and caps["bidirectional"] is False
    dispatcher.add_route("/v2/rpc/stream", endpoint, methods=("POST",))
    dispatcher.add_websocket_route("/v2/rpc/ws", endpoint)
    async with client_for(dispatcher) as client:
        caps = await get_caps(client)
    assert caps["streaming"] is True and caps["bidirectional"] is True
    assert caps["protocol_versions"] == ["2.0", "1.0"]  # no version layer: the defaults


async def test_capabilities_change_when_a_codec_extra_is_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = ErrorMappingMiddleware(RpcDispatcher(MethodRegistry()))
    async with client_for(app) as client:
        before = await get_caps(client)
        assert "application/avro" in before["content_types"]
        assert "application/protobuf" in before["content_types"]
        # Simulate an install without the avro extra: importing fastavro fails.
        monkeypatch.setitem(sys.modules, "fastavro", None)
        monkeypatch.delitem(sys.modules, "aduib_asgi.codecs.avro_codec", raising=False)
        after = await get_caps(client)
    assert "application/avro" not in after["content_types"]
    assert "application/protobuf" in after["content_types"]
    assert after["content_types"] == [t for t in before["content_types"]
                                      if t != "application/avro"]


async def test_capabilities_change_when_a_compression_extra_is_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = ErrorMappingMiddleware(RpcDispatcher(MethodRegistry()))
    async with client_for(app) as client:
        before = await get_caps(client)
        assert "br" in before["compressions"]
        monkeypatch.setitem(sys.modules, "brotli", None)
        monkeypatch.delitem(sys.modules, "aduib_asgi.compression.brotli_coding",
                            raising=False)
        after = await get_caps(client)
    assert "br" not in after["compressions"]
    assert {"gzip", "zstd", "lz4", "snappy", "identity"} <= set(after["compressions"])
