"""`aduib-asgi demo` as a newcomer starts it: a real process on a free port."""

from __future__ import annotations

import signal

import httpx

from tests.demo_process import running_demo


def test_demo_cli_serves_echo_and_stops_on_sigterm() -> None:
    with running_demo() as demo:
        r = httpx.post(f"{demo.url}/aduib_rpc/v2/rpc",
                       json={"aduib_rpc": "2.0", "id": "x", "method": "rpc.v2/Echo/echo",
                             "data": {"hello": "world"}}, timeout=10)
        assert r.status_code == 200
        assert r.json()["result"] == {"hello": "world"}
        assert r.json()["id"] == "x"
        assert "server" not in r.headers  # uvicorn's server header is off (a header less)
        assert demo.stop(signal.SIGTERM) == 0
