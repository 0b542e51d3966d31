"""Compression middleware vs the raw codec call, Starlette GZip and starlette-compress.

Run: ``.venv/bin/python benchmarks/compression.py [--rounds N] [--round-ms MS]``

Measured the way ``aduib-asgi bench`` measures its ``compress-20k`` /
``compress-1m`` groups, so the two agree: the same sizes (20 KiB and 1 MiB,
``aduib_asgi.bench.apps.BIG_SIZES``), the same raw codec calls at the same levels
(``aduib_asgi.bench.cases.raw_codec``: zstd with a reused context, like the
layer), the same in-process driver (``AsgiRunner``: the app answers in one body
message), short rounds in alternating order, paired per round. Two bodies: the
harness's repetitive text (fast to compress, so fixed costs show most) and a JSON
array of small records (closer to real replies). An app's cost is reported as
its time minus the bare app's in the same round; ``ours/raw`` is that over the
raw codec call. The "thread" rows force the worker-thread path
(``thread_threshold=0``) to show what a thread hop costs; by default bodies
below ``DEFAULT_THREAD_THRESHOLD`` (2 MiB) are compressed inline.
Targets (issue 9): ours ≤ raw codec + 10%, and faster than starlette-compress
for the same codec and level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections.abc import Callable
from typing import Any

from starlette.middleware.gzip import GZipMiddleware
from starlette_compress import CompressMiddleware

from aduib_asgi.bench.apps import BIG_SIZES, big_body
from aduib_asgi.bench.cases import raw_codec
from aduib_asgi.bench.driver import AsgiRunner, CallRunner, Request, Runner
from aduib_asgi.compression import DEFAULT_LEVELS
from aduib_asgi.middleware.compression import CompressionMiddleware

CODECS = ("zstd", "gzip", "br", "lz4", "snappy")
PEER_CODECS = ("zstd", "gzip", "br")  # what starlette-compress speaks


def make_json(size: int) -> bytes:
    """A JSON array of small records, exactly ``size`` bytes long."""
    rows = [{"id": i, "name": f"user-{i}", "email": f"user{i}@example.com",
             "active": i % 3 == 0, "score": i * 1.5, "tags": ["alpha", "beta", str(i % 7)]}
            for i in range(size // 60 + 50)]
    body = json.dumps(rows).encode()[:size - 1].rsplit(b"},", 1)[0] + b"}]"
    return body + b" " * (size - len(body))


def json_app(body: bytes) -> Any:
    length = str(len(body)).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # A fresh list each time: some middlewares edit the start message's headers in place.
        headers = [(b"content-type", b"application/json"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _encoded(codec: str) -> Callable[[Any], str | None]:
    def check(ex: Any) -> str | None:
        got = ex.header(b"content-encoding")
        return None if got == codec.encode() else f"answered {got!r}, expected {codec}"

    return check


async def measure(runners: dict[str, Runner], rounds: int, round_s: float) -> dict[str, float]:
    """Per runner: median over rounds of (its µs/op minus the bare app's µs/op in that round);
    for ``raw`` its own µs/op."""
    for name, r in runners.items():
        err = await r.check()
        if err:
            raise SystemExit(f"{name}: {err}")
    sizes = {}
    for name, r in runners.items():
        per_op = await r.round(2) / 2
        sizes[name] = max(1, int(round_s / max(per_op, 1e-7)))
    samples: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for i in range(rounds):
        for name in (order if i % 2 == 0 else reversed(order)):
            n = sizes[name]
            samples[name].append(await runners[name].round(n) / n * 1e6)
    bare = samples["bare"]
    out = {"raw": statistics.median(samples["raw"])}
    for name, xs in samples.items():
        if name not in ("raw", "bare"):
            out[name] = statistics.median(x - b for x, b in zip(xs, bare, strict=True))
    return out


def _call(func: Callable[[bytes], bytes], body: bytes) -> Callable[[], bytes]:
    return lambda: func(body)


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


async def main(rounds: int, round_ms: float) -> None:
    levels: dict[str, int] = {k: DEFAULT_LEVELS[k] for k in PEER_CODECS}
    print("| body | codec | raw codec µs | ours µs | ours/raw | Starlette GZip µs "
          "| starlette-compress µs | ours/sc |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for size_name, size in BIG_SIZES.items():
        for kind, body in (("text", big_body(size)), ("json", make_json(size))):
            app = json_app(body)
            for codec in CODECS:
                try:
                    raw = raw_codec(codec, levels.get(codec))
                except Exception as exc:  # brotli not installed
                    print(f"| {size_name} {kind} | {codec} | n/a ({exc}) | | | | | |")
                    continue
                req = Request("GET", "/", (("accept-encoding", codec),))
                check = _encoded(codec)
                runners: dict[str, Runner] = {
                    "bare": AsgiRunner(app, Request("GET", "/")),
                    "raw": CallRunner(_call(raw, body)),
                    "ours": AsgiRunner(CompressionMiddleware(app), req, extra_check=check),
                }
                if codec == "gzip":
                    runners["gzip"] = AsgiRunner(
                        GZipMiddleware(app, compresslevel=levels["gzip"]), req, extra_check=check)
                if codec in PEER_CODECS:
                    runners["sc"] = AsgiRunner(CompressMiddleware(
                        app, gzip_level=levels["gzip"], zstd_level=levels["zstd"],
                        brotli_quality=levels["br"]), req, extra_check=check)
                if size >= 1024 * 1024 and codec in ("zstd", "gzip"):
                    runners["thread"] = AsgiRunner(
                        CompressionMiddleware(app, thread_threshold=0), req, extra_check=check)
                m = await measure(runners, rounds, round_ms / 1000)
                r, o, sc = m["raw"], m["ours"], m.get("sc")
                print(f"| {size_name} {kind} | {codec} | {fmt(r)} | {fmt(o)} | {o / r:.2f} | "
                      f"{fmt(m.get('gzip'))} | {fmt(sc)} | "
                      f"{'n/a' if sc is None else f'{o / sc:.2f}'} |")
                if "thread" in m:
                    print(f"| {size_name} {kind}, thread | {codec} | {fmt(r)} | "
                          f"{fmt(m['thread'])} | {m['thread'] / r:.2f} | | | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31, help="rounds per row")
    parser.add_argument("--round-ms", type=float, default=10.0, help="length of one round")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main(args.rounds, args.round_ms))
    else:
        uvloop.run(main(args.rounds, args.round_ms))
