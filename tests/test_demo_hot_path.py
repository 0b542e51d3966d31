"""The demo's per-request work that is not required behaviour stays out of its path
(issue 18, fourth round), and what it does instead behaves the same."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from aduib_asgi.config import RuntimeConfig
from aduib_asgi.config.model import LogSection
from aduib_asgi.demo import DemoConfig, build_demo_app
from aduib_asgi.demo.server import outer_layers
from aduib_asgi.dispatcher import MethodRegistry
from aduib_asgi.observability.metrics import RpcMetrics
from tests.config_helpers import BASE, call, write_config
from tests.demo_process import running_demo


def _snapshot_chain(app: Any) -> list[str]:
    """Class names down the current snapshot's ``.app`` chain."""
    node = app.config_manager.app.current[0]
    names = []
    while node is not None:
        names.append(getattr(node, "__qualname__", type(node).__name__))
        node = getattr(node, "app", None)
    return names


def _outer(config: RuntimeConfig, demo: DemoConfig) -> list[str]:
    return [layer.name for layer in outer_layers(config, demo, registry=MethodRegistry(),
                                                  metrics=RpcMetrics(), storage=None)]


def test_access_layer_is_left_out_when_the_access_log_is_off() -> None:
    assert "AccessLogMiddleware" in _snapshot_chain(build_demo_app(DemoConfig()))
    chain = _snapshot_chain(build_demo_app(DemoConfig(access_log=False)))
    assert "AccessLogMiddleware" not in chain and "ErrorMappingMiddleware" in chain
    # the configuration's [log] section decides when there is one
    on, off = LogSection(access=True), LogSection(access=False)
    assert "access" in _outer(RuntimeConfig(log=on), DemoConfig(access_log=False))
    assert "access" not in _outer(RuntimeConfig(log=off), DemoConfig(access_log=True))
    assert "access" not in _outer(RuntimeConfig(), DemoConfig(access_log=False))
    assert "access" in _outer(RuntimeConfig(), DemoConfig())


def test_no_access_log_flag_still_yields_to_a_config_that_turns_it_on(tmp_path: Path) -> None:
    """``--no-access-log`` leaves the layer out; a ``[log] access = true`` snapshot
    (here from the start) puts it back and the lines are written."""
    path = tmp_path / "demo.toml"
    write_config(path, BASE + "access = true\n")
    with running_demo("--no-access-log", "--config", str(path)) as demo, \
            httpx.Client(base_url=demo.url, timeout=30) as c:
        mark = len(demo.lines)
        assert call(c, "rpc.v2/Echo/echo", {"v": 1}).status_code == 200
        line = demo.wait_for_output("method=rpc.v2/Echo/echo", after=mark)
        assert "status=200" in line


def test_no_access_log_flag_writes_no_access_line() -> None:
    with running_demo("--no-access-log") as demo, \
            httpx.Client(base_url=demo.url, timeout=30) as c:
        mark = len(demo.lines)
        for _ in range(3):
            assert call(c, "rpc.v2/Echo/echo", {"v": 1}).status_code == 200
        time.sleep(0.5)  # the log handler writes from a thread
        assert "method=rpc.v2/Echo/echo" not in "".join(demo.lines[mark:])
