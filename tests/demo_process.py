"""`aduib-asgi demo` as a real process on a free port, for tests that need a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class DemoProcess:
    """The running demo: its base URL, and its output (read continuously, so a
    chatty server never blocks on a full pipe)."""

    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(list(self.lines))

    def wait_for_output(self, text: str, timeout: float = 10.0, *, after: int = 0) -> str:
        """The first output line from line number ``after`` on containing ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines)[after:]:
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the demo's output:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` and wait; keeps the rest of the output. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        return self.proc.returncode


def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


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
        if line.startswith("listening on http://") or not line:
            break
    demo = DemoProcess(proc, line.split()[-1] if line else "", seen)
    demo.reader = threading.Thread(target=_drain, args=(proc, seen), daemon=True)
    demo.reader.start()
    try:
        assert line.startswith("listening on http://127.0.0.1:"), demo.output
        yield demo
    finally:
        demo.stop()
