"""Event-loop starvation drill (issue 13 item 1, OPERATIONS.md §5) on a real demo process.

For each transport (SSE in both framings, WebSocket): start ``aduib-asgi demo``,
open a stream of ``rpc.v2/Echo/stream`` ``{"count": 1000000000}`` (a generator
that never awaits), read a little, drop the connection, then measure

* the demo process's CPU over the next 2 s (100 % = one core spinning),
* the latency of a concurrent ``Echo/echo`` call (10 s client timeout),
* the time from SIGTERM to process exit (killed after 30 s).

Run: ``.venv/bin/python benchmarks/starvation.py`` (``--transport sse-message``
etc. to pick one; ``--json OUT`` to keep the figures).

``--turn-cost`` instead measures, in-process, what the loop turns cost a stream
that never awaits: frames/second of ``stream_response`` with a checkpoint every
frame, every ``TURN_INTERVAL`` (the default) and never (the starving behaviour),
in alternating rounds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

TRANSPORTS = ("sse-message", "sse-envelope", "ws")
BODY = json.dumps({"aduib_rpc": "2.0", "method": "rpc.v2/Echo/stream",
                   "data": {"count": 1_000_000_000}}).encode()
TICK = os.sysconf("SC_CLK_TCK")


def start_demo(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod", "--no-access-log", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("demo did not start")
        if line.startswith("listening on http://"):
            # keep draining its output: a full pipe would block the server's logging
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.split()[-1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def open_and_drop(url: str, transport: str, read_bytes: int = 8192) -> None:
    """Start one endless stream, read ``read_bytes``, close the socket without a goodbye."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    if transport == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /aduib_rpc/v2/rpc/ws HTTP/1.1\r\nHost: {host}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        mask = os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(BODY))
        sock.sendall(bytes([0x81, 0x80 | 126]) + len(BODY).to_bytes(2, "big") + mask + payload)
    else:
        framing = transport.split("-")[1]
        sock.sendall((f"POST /aduib_rpc/v2/rpc/stream HTTP/1.1\r\nHost: {host}\r\n"
                      "Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
                      f"Aduib-Stream-Framing: {framing}\r\n"
                      f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY)
    got = 0
    while got < read_bytes:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += len(chunk)
    sock.close()


def echo_latency(url: str, timeout: float = 10.0) -> float | None:
    t0 = time.perf_counter()
    try:
        r = httpx.post(url + "/aduib_rpc/v2/rpc", timeout=timeout, json={
            "aduib_rpc": "2.0", "method": "rpc.v2/Echo/echo", "data": {"x": 1}})
        r.raise_for_status()
    except httpx.HTTPError:
        return None
    return time.perf_counter() - t0


def drill(transport: str) -> dict[str, Any]:
    proc, url = start_demo()
    try:
        assert echo_latency(url) is not None
        open_and_drop(url, transport)
        time.sleep(1.0)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        latency = echo_latency(url)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
            exit_s: float | None = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            exit_s = None
        return {"transport": transport, "cpu_after_disconnect": round(cpu, 2),
                "echo_latency_s": None if latency is None else round(latency, 4),
                "sigterm_exit_s": None if exit_s is None else round(exit_s, 2)}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def turn_cost(rounds: int = 7, frames: int = 20000) -> None:
    import asyncio
    import statistics

    from starlette.types import Message, Receive, Scope, Send

    from aduib_asgi.context import RequestContext, run_with_context
    from aduib_asgi.streaming import engine, stream_response

    async def items(n: int) -> Any:
        for i in range(n):
            yield {"index": i, "text": "hello"}

    async def one() -> float:
        done = asyncio.Event()
        scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                        "method": "POST", "scheme": "http", "path": "/s", "raw_path": b"/s",
                        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                        "server": ("bench", 80), "headers": []}
        first = True

        async def receive() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        async def handle(scope: Scope, receive: Receive, send: Send,
                         ctx: RequestContext) -> None:
            await receive()
            await stream_response(scope, receive, send, ctx, items(frames))

        t0 = time.perf_counter()
        await run_with_context(handle, scope, receive, send)
        return frames / (time.perf_counter() - t0)

    variants = {"every frame": 0.0, f"every {engine.TURN_INTERVAL * 1000:g} ms":
                engine.TURN_INTERVAL, "never (starves)": float("inf")}
    results: dict[str, list[float]] = {k: [] for k in variants}

    async def run() -> None:
        for _ in range(rounds):
            for name, interval in variants.items():
                engine.TURN_INTERVAL = interval
                results[name].append(await one())

    try:
        import uvloop
        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    base = statistics.median(results["never (starves)"])
    print(f"{frames} frames per stream, {rounds} rounds, median frames/second")
    for name, rates in results.items():
        med = statistics.median(rates)
        print(f"{name:18} {med:>10,.0f} frames/s  {1e6 / med:6.2f} µs/frame  "
              f"{med / base:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transport", choices=TRANSPORTS, action="append")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--turn-cost", action="store_true")
    args = ap.parse_args()
    if args.turn_cost:
        turn_cost()
        return
    rows = [drill(t) for t in args.transport or TRANSPORTS]
    print(f"{'transport':14} {'CPU after drop':>15} {'Echo/echo':>12} {'SIGTERM→exit':>13}")
    for r in rows:
        lat = "timeout 10s" if r["echo_latency_s"] is None else f"{r['echo_latency_s']:.3f} s"
        ex = "> 30 s" if r["sigterm_exit_s"] is None else f"{r['sigterm_exit_s']:.2f} s"
        print(f"{r['transport']:14} {r['cpu_after_disconnect']:>14.0%} {lat:>12} {ex:>13}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
