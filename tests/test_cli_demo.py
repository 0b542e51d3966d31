"""`aduib-asgi demo` as a newcomer starts it: a real process on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx


def test_demo_cli_serves_echo_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("listening on http://") or not line:
                break
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        r = httpx.post(f"{url}/aduib_rpc/v2/rpc",
                       json={"aduib_rpc": "2.0", "id": "x", "method": "rpc.v2/Echo/echo",
                             "data": {"hello": "world"}}, timeout=10)
        assert r.status_code == 200
        assert r.json()["result"] == {"hello": "world"}
        assert r.json()["id"] == "x"
        assert "server" not in r.headers  # uvicorn's server header is off (a header less)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
