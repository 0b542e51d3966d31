"""benchmarks/otel_floor.py's floors answer like the layer they stand for (no timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from starlette.middleware import Middleware

from aduib_asgi.bench.apps import starlette_app
from aduib_asgi.bench.driver import AsgiRunner
from aduib_asgi.bench.layers import echo_request

FLOOR = Path(__file__).resolve().parent.parent / "benchmarks" / "otel_floor.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("otel_floor", FLOOR)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["otel_floor"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", [False, True])
async def test_layer_floors_answer_and_only_the_protocol_floor_adds_traceresponse(
        protocol: bool) -> None:
    floor = _module()
    runner = AsgiRunner(starlette_app([Middleware(floor.layer_floor(protocol))]),
                        echo_request(*floor.TRACEPARENT.items()))
    assert await runner.check() is None
    ex = await runner._one()
    value = ex.header(b"traceresponse")
    if protocol:  # the caller's trace continued, a new server span id
        assert value is not None
        assert value.startswith(b"00-0af7651916cd43dd8448eb211c80319c-")
        assert value.endswith(b"-01") and b"b7ad6b7169203331" not in value
    else:
        assert value is None
    await floor.sdk_floor().round(2)
