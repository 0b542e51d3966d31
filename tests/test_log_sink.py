"""A stalled log sink never stops the server.

``logging.StreamHandler`` writes in the logging thread: with the demo's output
going to a pipe nobody reads (a stalled log shipper), the access log filled the
pipe after ~200 calls and the event loop blocked in ``write`` - every request of
every client hung, and SIGTERM was not handled. The demo's handler (and uvicorn's
records, routed to it) now writes from a thread through a queue bounded in bytes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import httpx

from aduib_asgi.observability.log_sink import NonBlockingStreamHandler


class _StalledStream(io.StringIO):
    """A stream whose writes block until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait()
        return super().write(s)


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_a_stalled_stream_neither_blocks_the_caller_nor_holds_unbounded_lines() -> None:
    stream = _StalledStream()
    handler = NonBlockingStreamHandler(stream, max_bytes=10_000, flush_timeout=0.2)
    log = _logger(handler, "test.log_sink.stalled")
    done = threading.Event()

    def flood() -> None:
        for i in range(5_000):
            log.info("line %d %s", i, "x" * 80)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(30), "logging blocked on a stalled stream"
    # at most max_bytes were kept for the sink; the rest was counted, not queued
    assert handler.dropped > 4_000
    assert handler._queued_bytes <= 10_000
    stream.release.set()
    log.info("after the stall")
    handler.flush_timeout = 10
    handler.flush()
    text = stream.getvalue()
    # every dropped line is reported (in one or more notices, as writing resumes)
    notices = re.findall(r"aduib_asgi: (\d+) log lines dropped", text)
    assert notices and sum(map(int, notices)) == handler.dropped, (notices, handler.dropped)
    assert text.endswith("after the stall\n")
    handler.close()


def test_lines_are_written_in_order_and_flushed_on_close() -> None:
    stream = io.StringIO()
    handler = NonBlockingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = _logger(handler, "test.log_sink.order")
    for i in range(1_000):
        log.warning("n=%d", i)
    handler.close()
    assert stream.getvalue().splitlines() == [f"WARNING n={i}" for i in range(1_000)]
    assert handler.dropped == 0


def test_the_demo_serves_with_its_log_output_never_read() -> None:
    # stdout: the "listening on" line, read once; stderr (every log line): never read
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), line
        url = line.split()[-1]
        host, port = url.removeprefix("http://").split(":")
        body = {"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/echo",
                "data": {"pad": "p" * 200}}
        with httpx.Client(base_url=url, timeout=10) as client:
            # ~500 bytes of access log per call: the 64 KiB pipe is full after ~130
            for i in range(1_000):
                r = client.post("/aduib_rpc/v2/rpc", json={**body, "id": str(i)})
                assert r.status_code == 200, (i, r.text)
            # uvicorn's own warnings (one per invalid request) go the same way
            for _ in range(300):
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    sock.recv(1024)
            r = client.post("/aduib_rpc/v2/rpc", json=body)
            assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        # exits although its log lines cannot be written (the flush waits a bounded time)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
