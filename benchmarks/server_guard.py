"""The demo's HTTP protocol class (head guard) vs uvicorn's own, in-process, against a git ref.

Both versions' guarded httptools classes (this checkout and ``--ref``, exported
with benchmarks/ab_ref.py) and uvicorn's own class serve keep-alive requests to
a bare ASGI app through the bench's fake transport (aduib_asgi/bench/server.py),
in interleaved rounds; printed: µs per request (min, median) and the paired
median of each class's cost over uvicorn's own::

    .venv/bin/python benchmarks/server_guard.py [--ref main] [--rounds 100]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pathlib
import statistics
import sys
import tempfile
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ab_ref


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def main(rounds: int, ref: str) -> None:
    runners: dict[str, Any] = {}
    for pkg, label in ((ab_ref.REF_PKG, f"guarded @ {ref}"), ("aduib_asgi", "guarded @ here")):
        srv = importlib.import_module(pkg + ".bench.server")
        runners[label] = srv.ProtocolRunner(app, guarded=True)
    runners["uvicorn's class"] = srv.ProtocolRunner(app, guarded=False)
    for r in runners.values():
        problem = await r.check()
        if problem is not None:
            raise SystemExit(problem)
        await r.round(500)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        for k in keys if i % 2 == 0 else reversed(keys):
            samples[k].append(await runners[k].round(200) / 200 * 1e6)
    base = samples["uvicorn's class"]
    for k in keys:
        d = [y - x for x, y in zip(base, samples[k], strict=True)]
        print(f"{k:22s} min {min(samples[k]):7.2f} median {statistics.median(samples[k]):7.2f}"
              f"  over uvicorn's class: paired median {statistics.median(d):+.2f} µs")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main")
    p.add_argument("--rounds", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ab_ref.export_ref(args.ref, pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        try:
            import uvloop
            uvloop.run(main(args.rounds, args.ref))
        except ImportError:
            asyncio.run(main(args.rounds, args.ref))
