"""benchmarks/ab_ref.py's compression cases build and answer as the bench's do (no timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

AB = Path(__file__).resolve().parent.parent / "benchmarks" / "ab_ref.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ab_ref", AB)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.anyio
@pytest.mark.parametrize("codec", ["zstd", "gzip"])
async def test_a_compress_case_times_our_layer_the_plain_route_and_the_raw_codec(
        codec: str) -> None:
    ab = _module()
    assert ab._parts(f"compress:{codec}") == ("compress", codec, "20k")
    assert ab._parts("raw:br:1m") == ("raw", "br", "1m")
    ours = ab.build("aduib_asgi", f"compress:{codec}")
    assert await ours.check() is None  # answered 200 with Content-Encoding: codec
    route = ab.build("aduib_asgi", "big-route:-:20k")
    assert await route.check() is None
    raw = ab.build("aduib_asgi", f"raw:{codec}:20k")
    assert await ab.timed(raw, 2) > 0 and await ab.timed(ours, 2) > 0


@pytest.mark.anyio
async def test_cpu_clock_times_rounds_by_this_threads_cpu_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cpu``: rounds timed by ``time.thread_time`` (a sleep in a call costs nothing)."""
    import time

    ab = _module()
    assert ab.CLOCK is time.perf_counter
    monkeypatch.setattr(ab, "CLOCK", time.thread_time)
    from aduib_asgi.bench.driver import CallRunner

    sleepy = CallRunner(lambda: time.sleep(0.02))
    assert await ab.timed(sleepy, 3) < 15_000  # µs per call: far below the 20 ms slept
    monkeypatch.setattr(ab, "CLOCK", time.perf_counter)
    assert await ab.timed(sleepy, 3) >= 20_000


@pytest.mark.anyio
async def test_alone_cases_run_the_layer_alone_and_layer_cases_behind_the_seed() -> None:
    """``alone:NAME:I``: the layer is the only middleware (it creates the context);
    ``layer:NAME:I``: the same case behind the context seed."""
    ab = _module()
    alone = ab.build("aduib_asgi", "alone:compression:0")
    seeded = ab.build("aduib_asgi", "layer:compression:0")
    assert await alone.check() is None and await seeded.check() is None

    def names(runner: object) -> list[str]:
        app = runner.app  # type: ignore[attr-defined]
        return [m.cls.__name__ for m in app.user_middleware]

    assert names(alone) == ["CompressionMiddleware"]
    assert names(seeded) == ["ContextSeed", "CompressionMiddleware"]
