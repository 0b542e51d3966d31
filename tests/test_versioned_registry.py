"""Versioned method registry: ranges, 4020 GONE, deprecation headers, names, models."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.dispatcher.registry import METHOD_SPEC_KEY, normalize_method
from aduib_asgi.errors import RpcError
from aduib_asgi.middleware import ErrorMappingMiddleware, VersionNegotiationMiddleware
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import RPC, client_for, envelope

pytestmark = pytest.mark.anyio


def versioned_app(with_version_layer: bool = True) -> Any:
    registry = MethodRegistry()

    async def old_sum(data: dict[str, Any]) -> dict[str, Any]:
        return {"impl": "v1"}

    async def new_sum(data: dict[str, Any]) -> dict[str, Any]:
        return {"impl": "v2"}

    async def gone(data: dict[str, Any]) -> dict[str, Any]:
        return {"gone": False}

    async def shiny(data: dict[str, Any]) -> dict[str, Any]:
        return {"shiny": True}

    registry.register("rpc.v2/Math/sum", old_sum, removed_in="2.0")
    registry.register("rpc.v2/Math/sum", new_sum, since="2.0")
    registry.register("rpc.v2/Math/gone", gone, removed_in="2.0")
    registry.register("rpc.v2/Math/shiny", shiny, since="2.1")
    layers = [Layer.of(ErrorMappingMiddleware)]
    if with_version_layer:
        layers.append(Layer.of(VersionNegotiationMiddleware, versions=("2.1", "2.0", "1.0")))
    return build_stack(RpcDispatcher(registry), layers)


async def test_version_ranges_pick_the_registration() -> None:
    async with client_for(versioned_app()) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Math/sum", {}))
        assert r.json()["result"] == {"impl": "v2"}
        r = await client.post(RPC, json=envelope("rpc.v2/Math/sum", {},
                                                 supported_versions=["1.0"]))
        assert r.json()["result"] == {"impl": "v1"}
        assert r.json()["negotiated_version"] == "1.0"


async def test_removed_in_negotiated_version_is_410_gone() -> None:
    async with client_for(versioned_app()) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Math/gone", {}, id="g1"))
        assert r.status_code == 410
        body = r.json()
        assert body["id"] == "g1"
        assert body["error"]["code"] == 4020
        assert body["error"]["name"] == "GONE"
        assert body["error"]["details"][0]["metadata"]["removed_in"] == "2.0"
        ok = await client.post(RPC, json=envelope("rpc.v2/Math/gone", {},
                                                  supported_versions=["1.0"]))
        assert ok.status_code == 200
        assert ok.json()["result"] == {"gone": False}


async def test_not_yet_available_is_4001() -> None:
    async with client_for(versioned_app()) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Math/shiny", {},
                                                 supported_versions=["2.0"]))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == 4001
        r = await client.post(RPC, json=envelope("rpc.v2/Math/shiny", {},
                                                 supported_versions=["2.1", "2.0"]))
        assert r.json()["result"] == {"shiny": True}


async def test_unknown_method_and_service() -> None:
    async with client_for(versioned_app()) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Math/nope", {}))
        assert (r.status_code, r.json()["error"]["code"]) == (404, 4001)
        r = await client.post(RPC, json=envelope("rpc.v2/Nope/sum", {}))
        assert (r.status_code, r.json()["error"]["code"]) == (404, 4002)


async def test_without_version_layer_the_envelope_version_selects() -> None:
    """No negotiation: the envelope's aduib_rpc drives ranges; no negotiated_version."""
    async with client_for(versioned_app(with_version_layer=False)) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Math/gone", {}))
        assert r.status_code == 410
        r = await client.post(RPC, json={"aduib_rpc": "1.0", "method": "rpc.v2/Math/sum"})
        assert r.json()["result"] == {"impl": "v1"}
        r = await client.post(RPC, json=envelope("rpc.v2/Math/sum", {}))
        assert r.json()["result"] == {"impl": "v2"}
        assert "negotiated_version" not in r.json()


# -- deprecation --------------------------------------------------------------------


async def test_deprecated_demo_method_works_with_headers(
    demo_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="aduib_asgi.versioning"):
        r = await demo_client.post(RPC, json=envelope("rpc.v2/Legacy/old", {}, id="dep-1"))
    assert r.status_code == 200
    assert r.json()["result"] == {"old": True}
    # RFC 9745: Structured Field Date "@<unix seconds>"
    expected = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    assert r.headers["deprecation"] == f"@{expected}"
    # RFC 8594: an HTTP-date
    assert parsedate_to_datetime(r.headers["sunset"]) == datetime(2027, 1, 1, tzinfo=UTC)
    assert r.headers["sunset"].endswith(" GMT")
    assert len(r.headers.get_list("deprecation")) == 1
    assert any("rpc.v2/Legacy/old" in rec.getMessage() and "dep-1" in rec.getMessage()
               for rec in caplog.records if rec.levelno == logging.WARNING)


async def test_non_deprecated_method_has_no_deprecation_headers(
    demo_client: httpx.AsyncClient,
) -> None:
    r = await demo_client.post(RPC, json=envelope("rpc.v2/Echo/echo", {"a": 1}))
    assert "deprecation" not in r.headers and "sunset" not in r.headers


async def test_deprecation_headers_survive_an_error_response() -> None:
    registry = MethodRegistry()

    async def broken(data: dict[str, Any]) -> None:
        raise RpcError(5002, "down")

    registry.register("rpc.v2/Old/broken", broken, deprecated=True,
                      deprecation_link="https://example.test/migrate")
    async with client_for(ErrorMappingMiddleware(RpcDispatcher(registry))) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Old/broken", {}))
    assert r.status_code == 503
    assert r.headers["deprecation"] == "@0"
    assert "sunset" not in r.headers
    assert r.headers["link"] == '<https://example.test/migrate>; rel="deprecation"'


def test_resolve_records_spec_and_adds_headers_once() -> None:
    registry = MethodRegistry()
    registry.register("rpc.v2/Old/m", lambda d: d, deprecated=date(2024, 5, 1),
                      sunset=datetime(2030, 1, 1, 12, 0))
    ctx = RequestContext()
    spec = registry.resolve("rpc.v2/Old/m", ctx=ctx)
    again = registry.resolve("rpc.v2/Old/m", ctx=ctx)
    assert spec is again and ctx.extras[METHOD_SPEC_KEY] is spec
    names = [n for n, _ in ctx.response_headers]
    assert names == [b"deprecation", b"sunset"]
    assert ctx.response_headers[1][1] == b"Tue, 01 Jan 2030 12:00:00 GMT"


def test_sunset_implies_deprecated() -> None:
    registry = MethodRegistry()
    spec = registry.register("rpc.v2/Old/m", lambda d: d, sunset="2030-01-01")
    assert spec.deprecated and spec.sunset == datetime(2030, 1, 1, tzinfo=UTC)


# -- registration rules ----------------------------------------------------------------


def test_overlapping_ranges_are_rejected() -> None:
    registry = MethodRegistry()
    registry.register("rpc.v2/A/m", lambda d: 1, removed_in="2.0")
    registry.register("rpc.v2/A/m", lambda d: 2, since="2.0", removed_in="3.0")
    with pytest.raises(ValueError, match="overlapping"):
        registry.register("rpc.v2/A/m", lambda d: 3, since="2.5")
    registry.register("rpc.v2/B/m", lambda d: 1)
    with pytest.raises(ValueError, match="overlapping"):
        registry.register("rpc.v2/B/m", lambda d: 1)
    with pytest.raises(ValueError):
        registry.register("rpc.v2/C/m", lambda d: 1, since="2.0", removed_in="2.0")
    with pytest.raises(ValueError):
        registry.register("rpc.v2/C/m", lambda d: 1, since="two")
    assert len(registry) == 3
    assert [s.since for s in registry.variants("rpc.v2/A/m")] == [None, "2.0"]


def test_existing_call_signature_and_options_still_work() -> None:
    registry = MethodRegistry()
    spec = registry.register("rpc.v2/Slow/work", lambda d: d, idempotent=True,
                             concurrency=1, roles=("admin",))
    assert spec.idempotent and spec.options == {"concurrency": 1, "roles": ("admin",)}
    assert not spec.streaming and not spec.deprecated
    assert registry.resolve("rpc.v2/Slow/work") is spec


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("rpc.v2/Echo/echo", "rpc.v2/Echo/echo"),
        ("rpc.v1/Echo/echo", "rpc.v2/Echo/echo"),
        ("Echo/echo", "rpc.v2/Echo/echo"),
        ("Echo.echo", "rpc.v2/Echo/echo"),
        ("pkg.Echo.echo", "rpc.v2/pkg.Echo/echo"),
        ("echo", None),
        ("rpc.v2/Echo", None),
        ("rpc.v2/Echo/e/x", None),
        ("", None),
        (None, None),
        ("x" * 300 + ".y", None),
    ],
)
def test_method_names_normalise_in_one_place(name: Any, canonical: str | None) -> None:
    assert normalize_method(name) == canonical


def test_resolve_accepts_every_spelling() -> None:
    registry = MethodRegistry()
    spec = registry.register("Echo.echo", lambda d: d)
    assert spec.method == "rpc.v2/Echo/echo"
    assert registry.resolve("Echo/echo") is spec
    assert registry.resolve("rpc.v1/Echo/echo") is spec
    assert registry.get("Echo.echo") is spec
    with pytest.raises(RpcError) as exc:
        registry.resolve("nonsense")
    assert exc.value.code == 1002


# -- input/output models -----------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


async def test_output_model_validates_results() -> None:
    registry = MethodRegistry()
    registry.register("rpc.v2/Geo/ok", lambda d: {"x": 1, "y": "2"}, output_model=Point)
    registry.register("rpc.v2/Geo/bad", lambda d: {"x": "nope"}, output_model=Point)

    async def asy(data: Point) -> Point:
        return data

    registry.register("rpc.v2/Geo/echo", asy, input_model=Point, output_model=Point)
    async with client_for(ErrorMappingMiddleware(RpcDispatcher(registry))) as client:
        r = await client.post(RPC, json=envelope("rpc.v2/Geo/ok", {}))
        assert r.json()["result"] == {"x": 1, "y": 2}
        r = await client.post(RPC, json=envelope("rpc.v2/Geo/bad", {}))
        assert (r.status_code, r.json()["error"]["code"]) == (500, 5000)
        r = await client.post(RPC, json=envelope("rpc.v2/Geo/echo", {"x": 3, "y": 4}))
        assert r.json()["result"] == {"x": 3, "y": 4}
        r = await client.post(RPC, json=envelope("rpc.v2/Geo/echo", {"x": "a"}))
        assert r.json()["error"]["code"] == 2001


# -- the same resolution on the streaming transport -----------------------------------


async def test_stream_endpoint_uses_the_same_versioned_resolution() -> None:
    pytest.importorskip("aduib_asgi.streaming.endpoints")
    registry = MethodRegistry()

    async def ticks(data: dict[str, Any]) -> Any:
        yield {"i": 0}

    registry.register("rpc.v2/Feed/ticks", ticks, deprecated="2025-01-01")
    registry.register("rpc.v2/Feed/legacy", ticks, removed_in="2.0")
    app = build_stack(RpcDispatcher(registry), [
        Layer.of(ErrorMappingMiddleware),
        Layer.of(VersionNegotiationMiddleware),
    ])
    stream = "/aduib_rpc/v2/rpc/stream"
    async with client_for(app) as client:
        r = await client.post(stream, json=envelope("rpc.v2/Feed/ticks", {}))
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["deprecation"].startswith("@")
        r = await client.post(stream, json=envelope("rpc.v2/Feed/legacy", {}))
        assert r.status_code == 410 and r.json()["error"]["code"] == 4020
        r = await client.post(stream, json=envelope("Feed.ticks", {}))  # not canonical in v2
        assert r.status_code == 400 and r.json()["error"]["code"] == 1002
