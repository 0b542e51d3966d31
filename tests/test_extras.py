"""A feature whose optional dependency is missing names the extra to install,
before doing any work (the fresh-venv proof is tests/test_packaging.py)."""

from __future__ import annotations

import sys

import pytest

from aduib_asgi.cli import main
from aduib_asgi.extras import MissingExtra, require


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:  # None in sys.modules makes `import name` raise ImportError
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra() -> None:
    with pytest.raises(MissingExtra) as err:
        require("no_such_module_for_aduib", "redis", "A redis:// store")
    assert "A redis:// store needs the 'redis' extra: pip install 'aduib-asgi[redis]'" in str(
        err.value)
    assert isinstance(err.value, ImportError)


def test_demo_with_redis_but_without_the_extra_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, "redis", "redis.asyncio")
    assert main(["demo", "--port", "0", "--redis", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'aduib-asgi[redis]'" in err and "Traceback" not in err


def test_bench_without_rich_stops_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, "rich")
    assert main(["bench", "--quickest", "--no-http", "--cases", "layers/ref.noop"]) == 2
    captured = capsys.readouterr()
    assert "pip install 'aduib-asgi[bench]'" in captured.err
    assert not any(line.startswith("bench: ") for line in captured.err.splitlines())  # no work


def test_jwt_verifier_without_pyjwt_names_the_jwt_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from aduib_asgi.auth import jwt_verifier

    _hide(monkeypatch, "jwt")
    with pytest.raises(MissingExtra, match=r"pip install 'aduib-asgi\[jwt\]'"):
        jwt_verifier("k" * 32)


def test_demo_app_without_the_exporter_runs_with_metrics_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from aduib_asgi.demo import build_demo_app

    _hide(monkeypatch, "opentelemetry.exporter.prometheus", "opentelemetry.exporter")
    with caplog.at_level("WARNING", logger="aduib_asgi.demo"):
        app = build_demo_app()
    assert app is not None
    assert any("metrics off" in r.getMessage() and "aduib-asgi[prometheus]" in r.getMessage()
               for r in caplog.records)
