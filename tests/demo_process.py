"""`aduib-asgi demo` as a real process on a free port, for tests that need a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class DemoProcess:
    """The running demo: its base URL, and its output once it has stopped."""

    proc: subprocess.Popen[str]
    url: str
    output: str = field(default="")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` and wait; keeps the rest of the output. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            rest, _ = self.proc.communicate()
        self.output += rest or ""
        return self.proc.returncode


@contextmanager
def running_demo(*args: str) -> Iterator[DemoProcess]:
    """Start ``python -m aduib_asgi.cli demo --port 0 --env prod *args``; stop it after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if line.startswith("listening on http") or not line:
            break
    demo = DemoProcess(proc, line.split()[-1] if line else "", "".join(seen))
    try:
        assert line.startswith(("listening on http://127.0.0.1:",
                                "listening on https://127.0.0.1:")), demo.output
        yield demo
    finally:
        demo.stop()
