"""The JSON codec's encoder (issue 18, fourth round): orjson for plain JSON-like values,
pydantic-core for the rest, and byte for byte what pydantic-core alone gives."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import random
import struct
import uuid
from typing import Any

import pydantic_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from aduib_asgi import codecs as codecs_module
from aduib_asgi.codecs import JSON
from aduib_asgi.models.envelope import AuthScheme, Priority


def _reference(value: Any) -> bytes:
    """What the codec encoded before: pydantic-core alone."""
    return pydantic_core.to_json(value, bytes_mode="base64", inf_nan_mode="null")


def _same(value: Any) -> None:
    try:
        expected = _reference(value)
    except Exception as exc:  # the reference fails: the codec fails the same way
        with pytest.raises(type(exc)):
            JSON.encode(value)
        return
    assert JSON.encode(value) == expected


class _Colour(enum.Enum):
    RED = "red"
    PAIR = (1, 2)
    ONE = 1


@dataclasses.dataclass
class _Point:
    x: int
    y: float


class _Model(BaseModel):
    a: int
    when: datetime.datetime


class _Str(str):
    pass


class _Int(int):
    pass


class _Dict(dict):  # type: ignore[type-arg]
    pass


_UTC = datetime.UTC
EDGE_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**30,
    0.0, -0.0, 0.1, 1e16, 1e21, 1e22, 1e-7, 5e-324, 1.7976931348623157e308, 2.0**53,
    math.nan, math.inf, -math.inf, "", "é\U0001f600", "a\x00\x1f\x7f\u2028/</script>\\\"",
    "\ud800", b"", b"\xff\xfe\x00", bytearray(b"ab"), [], {}, (1, "a"), [[[]]], {"a": (1,)},
    {1: 2}, {"k": {2.5: 1}}, {None: 1}, {_Str("k"): 1}, {1, 2}, frozenset(),
    Priority.HIGH, AuthScheme.BEARER, _Colour.RED, _Colour.PAIR, _Colour.ONE,
    uuid.UUID(int=5), datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=_UTC),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 678), datetime.date(2024, 1, 2),
    datetime.time(1, 2), datetime.timedelta(seconds=90), decimal.Decimal("1.50"),
    _Point(1, 2.5), _Model(a=1, when=datetime.datetime(2024, 1, 1, tzinfo=_UTC)),
    _Str("x"), _Int(3), _Dict(a=1), {"result": {"nested": [b"x", 1.5, None]}}, object(),
]


@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda v: type(v).__name__)
def test_encode_equals_pydantic_core_on_edge_values(value: Any) -> None:
    _same(value)


def test_encode_equals_pydantic_core_on_random_floats() -> None:
    rnd = random.Random(18)
    for _ in range(20000):
        bits = struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0]
        _same(bits)
        _same(rnd.uniform(-1e9, 1e9))


@pytest.mark.parametrize("depth", [1, 100, 127, 128, 129, 200, 254, 255, 256, 300, 600])
def test_encode_nesting_fails_where_pydantic_core_fails(depth: int) -> None:
    nested: Any = 1
    for i in range(depth):
        nested = [nested] if i % 2 else {"a": nested}
    _same(nested)


def test_a_circular_value_fails_as_before() -> None:
    loop: list[Any] = []
    loop.append(loop)
    _same(loop)


json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text() | st.binary(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4)
    | st.tuples(children, children),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_encode_equals_pydantic_core_on_generated_values(value: Any) -> None:
    _same(value)


def test_the_fast_path_is_taken_for_an_envelope() -> None:
    """A plain envelope goes through orjson (the gain this encoder exists for)."""
    assert codecs_module.orjson is not None
    assert JSON.encode is codecs_module._fast_json
    env = {"aduib_rpc": "2.0", "id": "r", "status": "success", "result": {"n": 1},
           "metadata": {"timestamp_ms": 1, "server_id": "s"}}
    assert JSON.encode(env) == codecs_module.orjson.dumps(env) == _reference(env)


@pytest.mark.parametrize("items", [1, 50, 5000])
def test_the_encoded_body_holds_no_more_memory_than_its_bytes(items: int) -> None:
    """orjson's own result keeps its (over-sized) buffer; the codec's holds only the output
    (what a server may keep alive while a slow socket drains)."""
    import sys
    import tracemalloc

    value = {"result": ["x" * 100] * items}
    JSON.encode(value)
    tracemalloc.start()
    try:
        level = tracemalloc.get_traced_memory()[0]
        body = JSON.encode(value)
        held = tracemalloc.get_traced_memory()[0] - level
    finally:
        tracemalloc.stop()
    assert body == _reference(value)
    assert held <= sys.getsizeof(body) + 64
