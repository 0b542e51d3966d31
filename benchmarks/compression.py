"""Compression middleware throughput vs the raw codec call, Starlette GZip and starlette-compress.

Run: ``.venv/bin/python benchmarks/compression.py [--rounds N]``

One plain ASGI app answers a JSON document (20 KB and 1 MB) in one body
message. Each row compares, in the same run and on the same bytes, the median
time of: the raw one-shot codec call at the same level, the app behind our
CompressionMiddleware, behind Starlette's GZipMiddleware (gzip only) and behind
starlette-compress (gzip, zstd, br), and the bare app. The ASGI app is driven
in-process (no HTTP, no client), so the numbers are the middleware's own cost.
Targets (issue 3): ours within 10% of the raw codec on 1 MB for gzip/zstd, and
no slower than starlette-compress for the same codec and level.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any

import anyio
import brotli
import lz4.frame
import snappy
import zstandard
from starlette.middleware.gzip import GZipMiddleware
from starlette_compress import CompressMiddleware

from aduib_asgi.middleware.compression import CompressionMiddleware

LEVELS = {"gzip": 6, "zstd": 3, "br": 4, "lz4": 0}
CODECS = ("gzip", "zstd", "lz4", "snappy", "br")


def make_json(size: int) -> bytes:
    """A JSON array of small records, about ``size`` bytes."""
    rows: list[dict[str, Any]] = []
    body = b"[]"
    i = 0
    while len(body) < size:
        rows.extend({"id": i + k, "name": f"user-{i + k}", "email": f"user{i + k}@example.com",
                     "active": (i + k) % 3 == 0, "score": (i + k) * 1.5,
                     "tags": ["alpha", "beta", str((i + k) % 7)]} for k in range(50))
        i += 50
        body = json.dumps(rows).encode()
    return body[:size].rsplit(b"},", 1)[0] + b"}]"


def raw_codecs() -> dict[str, Callable[[bytes], bytes]]:
    zctx = zstandard.ZstdCompressor(level=LEVELS["zstd"])

    def zstd(b: bytes) -> bytes:
        # The fastest library usage we know: a reused context for small inputs,
        # a fresh one for large ones (what the middleware does too).
        if len(b) < 128 * 1024:
            return zctx.compress(b)
        return zstandard.ZstdCompressor(level=LEVELS["zstd"]).compress(b)

    return {
        "gzip": lambda b: zlib.compress(b, LEVELS["gzip"], 31),
        "zstd": zstd,
        "lz4": lambda b: lz4.frame.compress(b, compression_level=LEVELS["lz4"]),
        "snappy": lambda b: snappy.StreamCompressor().compress(b),
        "br": lambda b: brotli.compress(b, quality=LEVELS["br"]),
    }


def json_app(body: bytes) -> Any:
    length = str(len(body)).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # A fresh list each time: some middlewares edit the start message's headers in place.
        headers = [(b"content-type", b"application/json"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def call(app: Any, coding: str) -> tuple[int, bytes]:
    """One request through ``app``: (elapsed ns, content-encoding sent)."""
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
             "headers": [(b"accept-encoding", coding.encode())], "extensions": {}}
    encoding = b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal encoding
        if message["type"] == "http.response.start":
            for k, v in message["headers"]:
                if k.lower() == b"content-encoding":
                    encoding = v

    t0 = time.perf_counter_ns()
    await app(scope, receive, send)
    return time.perf_counter_ns() - t0, encoding


async def check(app: Any, coding: str) -> None:
    """Warm up, and make sure the middleware really answered in ``coding``."""
    _, enc = await call(app, coding)
    if enc.decode() != coding:
        raise SystemExit(f"{app!r} answered {enc!r} for {coding}")


def raw_ns(func: Callable[[bytes], bytes], body: bytes) -> int:
    t0 = time.perf_counter_ns()
    func(body)
    return time.perf_counter_ns() - t0


async def medians_us(body: bytes, raw: Callable[[bytes], bytes], apps: list[Any],
                     coding: str, rounds: int) -> list[float | None]:
    """Medians for [raw codec, *apps], measured interleaved so they share the machine's load."""
    live = [a for a in apps if a is not None]
    for app in live:
        await check(app, coding)
    raw(body)
    samples: list[list[int]] = [[] for _ in range(1 + len(live))]
    for _ in range(rounds):
        samples[0].append(raw_ns(raw, body))
        for i, app in enumerate(live, 1):
            samples[i].append((await call(app, coding))[0])
    it = iter(statistics.median(x) / 1000 for x in samples)
    first = next(it)
    return [first] + [next(it) if a is not None else None for a in apps]


async def bare_us(app: Any, rounds: int) -> float:
    return statistics.median([(await call(app, "identity"))[0] for _ in range(rounds)]) / 1000


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


async def main(rounds_small: int, rounds_large: int) -> None:
    raw = raw_codecs()
    print("| body | codec | raw codec µs | ours µs | ours/raw | Starlette GZip µs "
          "| starlette-compress µs | ours/sc | bare app µs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, size, rounds in (("20 KB", 20_000, rounds_small), ("1 MB", 1_000_000,
                                                                   rounds_large)):
        body = make_json(size)
        app = json_app(body)
        ours = CompressionMiddleware(app, levels=LEVELS)
        gz = GZipMiddleware(app, compresslevel=LEVELS["gzip"])
        sc = CompressMiddleware(app, gzip_level=LEVELS["gzip"], zstd_level=LEVELS["zstd"],
                                brotli_quality=LEVELS["br"])
        bare = await bare_us(app, rounds)
        for codec in CODECS:
            r, o, g, sc_us = await medians_us(
                body, raw[codec],
                [ours, gz if codec == "gzip" else None,
                 sc if codec in ("gzip", "zstd", "br") else None], codec, rounds)
            assert r is not None and o is not None
            ratio_sc = "n/a" if sc_us is None else f"{o / sc_us:.2f}"
            print(f"| {label} | {codec} | {fmt(r)} | {fmt(o)} | {o / r:.2f} | {fmt(g)} | "
                  f"{fmt(sc_us)} | {ratio_sc} | {fmt(bare)} |")
        if size >= 1_000_000:  # the same body compressed in a worker thread (the >=1 MiB path)
            threaded = CompressionMiddleware(app, levels=LEVELS, thread_threshold=0)
            for codec in ("gzip", "zstd"):
                r, o = await medians_us(body, raw[codec], [threaded], codec, rounds)
                assert r is not None and o is not None
                print(f"| {label}, thread | {codec} | {fmt(r)} | {fmt(o)} | {o / r:.2f} "
                      f"| n/a | n/a | n/a | {fmt(bare)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="rounds for the 20 KB body")
    parser.add_argument("--rounds-large", type=int, default=40, help="rounds for the 1 MB body")
    args = parser.parse_args()
    anyio.run(main, args.rounds, args.rounds_large)
