"""The request context's and the compression layer's fixed cost, main vs here, no Starlette.

``ab_ref.py`` times layers on a Starlette route, where a shared machine's noise
(and the route's own 10-30 µs) hides sub-µs changes. Here both versions (the
ref exported as ``aduib_ref``, as ``ab_ref.py`` does) wrap a bare pure-ASGI app
answering 20 KB in one body, called directly in interleaved rounds:

- ``noop``: a do-nothing pure-ASGI layer; ``seed``: a layer that only creates
  the request context (``run_with_context``): its cost over ``noop`` is what
  creating the context costs a layer that runs alone;
- ``comp``: the compression layer alone (it creates the context), zstd chosen;
  ``seed+comp``: behind the seed (the context exists);
- ``min``: a minimal hold-compress-rewrite layer (no context, no rules): the
  floor of compressing a held response in an ASGI layer;
- with ``--fake-codec`` every codec call returns a fixed 700 bytes, so what is
  left is Python (no codec, no cache effects); else ``raw`` is the codec alone.

Minima of the rounds (medians in brackets), µs per request::

    .venv/bin/python benchmarks/ab_context.py --fake-codec
    .venv/bin/python benchmarks/ab_context.py --ref HEAD~3 --rounds 400
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ab_ref

SMALL = b"x" * 700


def variants(fake: bool) -> tuple[dict[str, Any], Any]:
    import zstandard

    from aduib_asgi.bench.apps import BIG_SIZES, big_body

    data = big_body(BIG_SIZES["20k"])
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-length", b"%d" % len(data)),
                         (b"content-type", b"application/json")]}
    body = {"type": "http.response.body", "body": data}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(body)

    cctx = zstandard.ZstdCompressor(level=3)
    compress = (lambda b: SMALL) if fake else cctx.compress

    class Min:
        """Hold the start, compress the one body, rewrite the headers: nothing else."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            held: Any = None

            async def responder(m: Any) -> None:
                nonlocal held
                if m["type"] == "http.response.start":
                    held = m
                    return
                out = compress(m["body"])
                hs = [h for h in held["headers"] if h[0] != b"content-length"]
                hs.append((b"content-encoding", b"zstd"))
                hs.append((b"content-length", b"%d" % len(out)))
                await send({**held, "headers": hs})
                await send({"type": "http.response.body", "body": out, "more_body": False})

            await self.app(scope, receive, responder)

    out: dict[str, Any] = {"app": app, "min": Min(app)}
    for pkg in (ab_ref.REF_PKG, "aduib_asgi"):
        apps = importlib.import_module(pkg + ".bench.apps")
        comp = importlib.import_module(pkg + ".middleware.compression")
        tag = "ref" if pkg == ab_ref.REF_PKG else "here"

        def layer(pkg_comp: Any = comp) -> Any:
            mw = pkg_comp.CompressionMiddleware(app)
            if fake:
                mw.codings["zstd"].compress = lambda b: SMALL
            return mw

        out[f"noop@{tag}"] = apps.NoopLayer(app)
        out[f"seed@{tag}"] = apps.ContextSeed(app)
        out[f"comp@{tag}"] = layer()
        out[f"seed+comp@{tag}"] = apps.ContextSeed(layer())
    return out, (lambda: compress(data))


async def run(rounds: int, calls: int, fake: bool) -> None:
    apps, raw = variants(fake)
    scope = {"type": "http", "method": "GET", "path": "/big",
             "headers": [(b"host", b"127.0.0.1"), (b"accept-encoding", b"zstd")]}

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def timed(app: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - t0) / calls * 1e6

    def timed_raw() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            raw()
        return (time.perf_counter() - t0) / calls * 1e6

    for app in apps.values():
        await timed(app)
    samples: dict[str, list[float]] = {k: [] for k in [*apps, "raw"]}
    keys = list(apps)
    for i in range(rounds):
        for k in keys if i % 2 == 0 else keys[::-1]:
            samples[k].append(await timed(apps[k]))
        samples["raw"].append(timed_raw())
    low = {k: min(v) for k, v in samples.items()}
    base = low["app"]
    print(f"{rounds} interleaved rounds of {calls} calls; µs per request, min (median); "
          f"'over app' = minus the bare app{' (fake codec)' if fake else ''}")
    for k, v in samples.items():
        extra = ""
        if k.startswith(("comp", "seed+comp", "min")) and not fake:
            extra = f"  minus raw codec {low[k] - base - low['raw']:6.2f}"
        print(f"  {k:16s} {low[k]:7.2f} ({statistics.median(v):7.2f})  over app "
              f"{low[k] - base:6.2f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--fake-codec", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ab_ref.export_ref(args.ref, pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        ab_ref.run_loop(run(args.rounds, args.calls, args.fake_codec))


if __name__ == "__main__":
    main()
