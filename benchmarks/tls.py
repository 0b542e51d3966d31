"""Requests per second over plain HTTP, HTTPS, and HTTPS with client certificates (mTLS).

Three `aduib-asgi demo` processes (the full stack; same parser and loop) run at
once on 127.0.0.1: plain HTTP; HTTPS without client certificates; HTTPS that
requires and verifies a client certificate (mTLS, the caller identified by its
SPIFFE ID). One client process drives them in alternating rounds (so machine
noise hits every case alike) with ``rpc.v2/Echo/echo`` calls over raw sockets:

- keep-alive: ``--connections`` persistent connections, requests back to back
  (the steady state: TLS costs record encryption only);
- new connection per request: connect, handshake, one request, close (what a
  full handshake costs, with and without a client certificate to verify).

Reported: median req/s over the rounds and the ratio to plain HTTP in the same
run. Client and servers share the machine, so absolute numbers are low; the
ratios are the result.

    .venv/bin/python benchmarks/tls.py [--rounds 15] [--seconds 1] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aduib_asgi.demo.certs import write_demo_certs

BODY = json.dumps({"aduib_rpc": "2.0", "id": "b", "method": "rpc.v2/Echo/echo",
                   "data": {"x": 1}}).encode()


def _request(host: str, close: bool) -> bytes:
    return (f"POST /aduib_rpc/v2/rpc HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode() + BODY


@contextmanager
def demo(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
         "--env", "prod", "--log-level", "error", "--no-access-log", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        if not line.startswith("listening on"):
            raise RuntimeError(f"demo did not start: {line}{proc.stdout.read()}")
        # keep draining its output: a full pipe would block the server's logging
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(15)


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode("latin-1"))


async def keep_alive(url: str, ctx: ssl.SSLContext | None, conns: int, seconds: float) -> float:
    host, port = url.split("://")[1].rsplit(":", 1)
    req = _request(host, close=False)
    count = 0
    stop = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
        try:
            while time.perf_counter() < stop:
                writer.write(req)
                await _read_response(reader)
                count += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return count / (time.perf_counter() - t0)


async def new_connections(url: str, ctx: ssl.SSLContext | None, conns: int,
                          seconds: float) -> float:
    host, port = url.split("://")[1].rsplit(":", 1)
    req = _request(host, close=True)
    count = 0
    stop = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
            writer.write(req)
            await _read_response(reader)
            writer.close()
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--http", default="httptools", choices=("h11", "httptools"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: str(v) for k, v in write_demo_certs(Path(tmp)).items()}
        server = ["--tls-cert", paths["server_cert"], "--tls-key", paths["server_key"]]
        anon_ctx = ssl.create_default_context(cafile=paths["ca"])
        cert_ctx = ssl.create_default_context(cafile=paths["ca"])
        cert_ctx.load_cert_chain(paths["client"])
        common = ["--http", args.http]
        with demo(*common) as plain, demo(*common, *server) as tls, \
                demo(*common, *server, "--tls-client-ca", paths["ca"],
                     "--tls-require-client-cert") as mtls:
            cases = [("plain HTTP", plain, None), ("HTTPS", tls, anon_ctx),
                     ("HTTPS + client certificate (mTLS)", mtls, cert_ctx)]
            results: dict[tuple[str, str], list[float]] = {}
            for kind, fn in (("keep-alive", keep_alive), ("new connection", new_connections)):
                for _name, url, ctx in cases:  # warm-up
                    asyncio.run(fn(url, ctx, args.connections, 0.5))
                for _ in range(args.rounds):
                    for name, url, ctx in cases:
                        rps = asyncio.run(fn(url, ctx, args.connections, args.seconds))
                        results.setdefault((kind, name), []).append(rps)
    print(f"parser {args.http}, {args.connections} connections, {args.rounds} rounds x "
          f"{args.seconds:g} s, median req/s (ratio to plain HTTP, same run)")
    print(f"{'mode':<16}{'case':<36}{'req/s':>10}{'ratio':>8}   rounds")
    for kind in ("keep-alive", "new connection"):
        base = statistics.median(results[(kind, "plain HTTP")])
        for name, _, _ in cases:
            med = statistics.median(results[(kind, name)])
            each = " ".join(f"{v:.0f}" for v in results[(kind, name)])
            print(f"{kind:<16}{name:<36}{med:>10.0f}{med / base:>8.2f}   {each}")


if __name__ == "__main__":
    main()
