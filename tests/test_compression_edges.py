"""CompressionMiddleware edge cases found by the peers' suites (Starlette, starlette-compress)."""

from __future__ import annotations

import pytest

from aduib_asgi.middleware import CompressionMiddleware


async def _noop(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not called")


@pytest.mark.parametrize("levels", [{"gzip": 10}, {"zstd": 23}, {"br": 12}, {"gzip": -2},
                                    {"gzip": "6"}, {"gzip": True}, {"deflate": 6}])
def test_a_bad_level_fails_at_construction(levels: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="level"):
        CompressionMiddleware(_noop, levels=levels)  # type: ignore[arg-type]


def test_the_extreme_valid_levels_are_accepted() -> None:
    mw = CompressionMiddleware(_noop, levels={"gzip": 9, "zstd": 22, "br": 11, "lz4": 16})
    assert mw.codings["gzip"].compress(b"x" * 1000)
