"""`aduib-asgi demo` as a newcomer starts it: a real process on a free port."""

from __future__ import annotations

import signal

import httpx
import pytest

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


def test_demo_defaults_to_prod_no_stack_traces_for_a_newcomer() -> None:
    import argparse

    from aduib_asgi.cli import _demo_parser
    from aduib_asgi.demo import DemoConfig

    parser = argparse.ArgumentParser()
    _demo_parser(parser.add_subparsers())
    assert parser.parse_args(["demo"]).env == "prod"
    assert DemoConfig().env == "prod" and not DemoConfig().debug


@pytest.mark.anyio
async def test_default_demo_app_hides_debug_details() -> None:
    from aduib_asgi.demo import build_demo_app
    from tests.conftest import RPC, client_for, envelope

    async with client_for(build_demo_app()) as c:
        r = await c.post(RPC, json=envelope("rpc.v2/Echo/crash"))
    assert r.status_code == 500
    assert "debug" not in r.json()["error"] and ".py" not in r.text
