"""Fixtures for the interop tests: the real demo server and the real 2.0.1 client.

The server runs from the main venv (``sys.executable -m aduib_asgi.cli demo``); the client
runs in its own venv ``.venv-interop`` (tests/interop/requirements.txt), driven through
``tests/interop/client_calls.py``, which prints one JSON object per call.

Without ``.venv-interop/bin/python`` the tests are skipped -- or fail when ``CI`` is set,
so that CI can never go green without having run them.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INTEROP_PYTHON = ROOT / ".venv-interop" / "bin" / "python"
CLIENT_SCRIPT = HERE / "client_calls.py"
STARTUP_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 60.0
SETUP_HINT = (
    "python3 -m venv .venv-interop && "
    ".venv-interop/bin/pip install -r tests/interop/requirements.txt"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoServer:
    url: str
    args: list[str]
    process: subprocess.Popen[str]
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=400))

    def log_tail(self, lines: int = 60) -> str:
        return "".join(list(self.output)[-lines:])


def _start_demo(extra_args: list[str]) -> DemoServer:
    port = _free_port()
    args = [
        sys.executable, "-m", "aduib_asgi.cli", "demo",
        "--host", "127.0.0.1", "--port", str(port), *extra_args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    server = DemoServer(url="", args=args, process=proc)
    ready = threading.Event()
    found: list[str] = []

    def pump() -> None:
        # Keep draining the pipe for the server's whole life so it never blocks on a write.
        assert proc.stdout is not None
        for line in proc.stdout:
            server.output.append(line)
            if not ready.is_set() and "listening on" in line:
                found.append(line.split("listening on", 1)[1].strip())
                ready.set()
        ready.set()  # EOF: the process ended

    threading.Thread(target=pump, name=f"demo-{port}-output", daemon=True).start()
    ready.wait(STARTUP_TIMEOUT_S)
    if not found:
        _stop(proc)
        pytest.fail(
            f"demo server did not print 'listening on' within {STARTUP_TIMEOUT_S:.0f}s "
            f"(exit code {proc.returncode}); command: {' '.join(args)}\n"
            f"--- server output ---\n{server.log_tail()}",
            pytrace=False,
        )
    server.url = found[0].rstrip("/")
    return server


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def interop_python() -> Path:
    if not INTEROP_PYTHON.exists():
        reason = f"{INTEROP_PYTHON} is missing; create it with: {SETUP_HINT}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"interop client venv required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return INTEROP_PYTHON


def _server_fixture(extra_args: list[str]) -> Iterator[DemoServer]:
    server = _start_demo(extra_args)
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture(scope="session")
def demo_server(interop_python: Path) -> Iterator[DemoServer]:
    """The demo server with its default configuration (StreamMessage framing)."""
    yield from _server_fixture([])


@pytest.fixture(scope="session")
def demo_server_envelope(interop_python: Path) -> Iterator[DemoServer]:
    """The demo server with envelope SSE framing, the one 2.0.1 clients can read."""
    yield from _server_fixture(["--stream-framing", "envelope"])


ClientRunner = Callable[[DemoServer, str], dict[str, Any]]


@pytest.fixture(scope="session")
def run_client(interop_python: Path) -> ClientRunner:
    """Run one client_calls.py scenario against a server; return its JSON outcome."""

    def run(server: DemoServer, scenario: str) -> dict[str, Any]:
        cmd = [str(interop_python), str(CLIENT_SCRIPT), server.url, scenario]
        try:
            done = subprocess.run(
                cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLIENT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"client scenario {scenario!r} timed out after {CLIENT_TIMEOUT_S:.0f}s\n"
                f"stderr: {exc.stderr!r}\n--- server output ---\n{server.log_tail()}",
                pytrace=False,
            )
        lines = done.stdout.strip().splitlines()
        try:
            outcome = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            outcome = None
        if done.returncode != 0 or not isinstance(outcome, dict):
            pytest.fail(
                f"client scenario {scenario!r} exited {done.returncode} without a JSON outcome\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-4000:]}",
                pytrace=False,
            )
        if outcome.get("outcome") == "harness_error":
            pytest.fail(
                f"client scenario {scenario!r} crashed in the harness: "
                f"{outcome.get('traceback')}\n--- server output ---\n{server.log_tail()}",
                pytrace=False,
            )
        outcome["_server_log_tail"] = server.log_tail(30)
        return outcome

    return run
