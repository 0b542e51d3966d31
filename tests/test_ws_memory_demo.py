"""WebSocket messages cost the demo a bounded amount of memory, and only while they live.

A hostile client offering permessage-deflate could make a 15 KB frame inflate to
15 MB, on every connection at once, and that memory stayed with the process (the
websockets parser's reference cycle, then glibc's heap). The demo declines
permessage-deflate unless ``--ws-deflate``, bounds every message after
decompression (``--ws-max-size``, default the RPC body limit: 1009 past it),
frees a connection's last message when it is lost, and hands large freed
buffers back to the OS. Real demo processes; RSS from /proc/PID/status.
"""

from __future__ import annotations

import argparse
import json
import time

import pytest
from websockets.sync.client import connect

from aduib_asgi.body import DEFAULT_MAX_BODY
from tests.demo_process import DemoProcess, running_demo
from tests.ws_bomb import bomb, rss_mb

MB = 1 << 20
#: RSS growth allowed after the flood, in MB (the flood itself moves hundreds).
BOUND_MB = 100


def _settled_rss(demo: DemoProcess, baseline: float, timeout: float = 15) -> float:
    """The demo's RSS once it is back within the bound (or the last reading)."""
    deadline = time.monotonic() + timeout
    rss = rss_mb(demo.proc.pid)
    while rss - baseline >= BOUND_MB and time.monotonic() < deadline:
        time.sleep(0.25)
        rss = rss_mb(demo.proc.pid)
    return rss


def _echo_stream_works(url: str) -> None:
    ws_url = url.replace("http://", "ws://") + "/aduib_rpc/v2/rpc/ws"
    with connect(ws_url, compression="deflate", open_timeout=10) as ws:
        ws.send(json.dumps({"aduib_rpc": "2.0", "id": "s", "method": "rpc.v2/Echo/stream",
                            "data": {"count": 2}}))
        frames = []
        while not frames or frames[-1]["type"] != "end":
            frames.append(json.loads(ws.recv(timeout=10)))
    assert [f["type"] for f in frames][-1] == "end" and len(frames) >= 3


def test_default_demo_declines_deflate_and_closes_oversized_messages_with_1009() -> None:
    with running_demo() as demo:
        port = int(demo.url.rsplit(":", 1)[1])
        results = bomb(port, 2, DEFAULT_MAX_BODY + 1)
        assert all(r.error is None for r in results), results
        assert [r.deflate for r in results] == [False, False]  # not negotiated
        assert [r.close_code for r in results] == [1009, 1009]
        _echo_stream_works(demo.url)  # a client asking for deflate still works, uncompressed


def test_deflate_on_request_inflated_size_is_bounded_by_ws_max_size() -> None:
    with running_demo("--ws-deflate", "--ws-max-size", str(MB)) as demo:
        port = int(demo.url.rsplit(":", 1)[1])
        results = bomb(port, 2, 8 * MB)  # ~8 KB on the wire, 8 MB inflated
        assert [(r.deflate, r.close_code) for r in results] == [(True, 1009)] * 2, results
        _echo_stream_works(demo.url)


@pytest.mark.parametrize("flags", [(), ("--ws-deflate",), ("--ws", "websockets", "--ws-deflate")],
                         ids=["default", "ws-deflate", "legacy-websockets-deflate"])
def test_flood_of_large_messages_leaves_rss_bounded(flags: tuple[str, ...]) -> None:
    """12 connections x 15 MB (accepted, then refused by the app as undecodable: 1007)
    and 12 x 64 MB (over the limit: 1009): the RSS comes back within +100 MB."""
    with running_demo(*flags) as demo:
        port = int(demo.url.rsplit(":", 1)[1])
        _echo_stream_works(demo.url)
        baseline = rss_mb(demo.proc.pid)
        under = bomb(port, 12, 15 * MB)
        over = bomb(port, 12, 64 * MB)
        rss = _settled_rss(demo, baseline)
        assert {r.close_code for r in under} == {1007}, under
        assert {r.close_code for r in over} == {1009}, over
        assert rss - baseline < BOUND_MB, f"RSS {baseline:.0f} -> {rss:.0f} MB"
        _echo_stream_works(demo.url)  # and it still serves


def _parse(*argv: str) -> argparse.Namespace:
    from aduib_asgi.cli import _demo_parser

    parser = argparse.ArgumentParser()
    _demo_parser(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_uvicorn_options_carry_the_websocket_bounds() -> None:
    """One function builds the options for one process and for ``--workers``."""
    from aduib_asgi.cli import WS_MAX_SIZE, uvicorn_options

    assert WS_MAX_SIZE == DEFAULT_MAX_BODY
    options = uvicorn_options(_parse(), {})
    assert options["ws_max_size"] == DEFAULT_MAX_BODY
    assert options["ws_per_message_deflate"] is False
    options = uvicorn_options(_parse("--ws-deflate", "--ws-max-size", "4096"), {})
    assert options["ws_max_size"] == 4096 and options["ws_per_message_deflate"] is True


def test_deflate_with_wsproto_and_tiny_limits_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    from aduib_asgi.cli import main

    assert main(["demo", "--port", "0", "--ws", "wsproto", "--ws-deflate"]) == 2
    assert "wsproto" in capsys.readouterr().err
    assert main(["demo", "--port", "0", "--ws-max-size", "10"]) == 2
    assert "--ws-max-size" in capsys.readouterr().err


def test_return_large_allocations_on_glibc() -> None:
    import platform

    from aduib_asgi.server.memory import return_large_allocations

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert return_large_allocations() is True


def test_an_undecodable_message_is_not_kept_by_its_error() -> None:
    """msgpack's ExtraData holds a copy of the rest of the message; the 1003 error
    must not keep it as its ``__context__``."""
    from aduib_asgi.errors import RpcError
    from aduib_asgi.streaming.websocket import _decode

    with pytest.raises(RpcError) as err:
        _decode({"type": "websocket.receive", "bytes": b"\0" * 1024})
    assert err.value.code == 1003 and err.value.__context__ is None
