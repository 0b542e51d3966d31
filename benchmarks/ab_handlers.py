"""A/B of layers' own request handlers, this checkout against a git ref, in one process.

A layer's not-triggered path costs a fraction of a µs, below what a whole-request
A/B (``ab_ref.py``: ~20-80 µs per call) resolves on a shared machine. This script
times only the handler a layer's ``__call__`` hands the request to (``_handle`` or
``_http``), with the scope and context **the bench's default stack gives it** (one
request is run through the stack and the context is copied at each layer's
entrance) and a no-op inner app (``--inner respond``: one that sends a response
start and body through the layer's send wrapper), against a handler that only
calls the same inner app (the floor). The ref's
package is exported as in ``ab_ref.py`` (``aduib_ref``); both versions run in
finely interleaved rounds (forward, then backward). Per layer: the minimum and
median µs per call of each version over the floor, and the difference::

    .venv/bin/python benchmarks/ab_handlers.py                         # main vs here
    .venv/bin/python benchmarks/ab_handlers.py --ref HEAD~2 --layers ratelimit,auth
    .venv/bin/python benchmarks/ab_handlers.py --app demo --layers auth,deadline,circuit

It leaves out everything around the handler (``__call__``, ``run_with_context``,
the send wrappers, the rest of the stack): read it next to ``ab_ref.py``'s
whole-request figures, never instead of them.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import itertools
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from ab_ref import REF_PKG, export_ref, run_loop

DEFAULT_LAYERS = "auth,ratelimit,deadline,admission,idempotency"


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    return None


_START = {"type": "http.response.start", "status": 200, "headers": []}
_BODY = {"type": "http.response.body", "body": b"{}", "more_body": False}


async def _responding(scope: Any, receive: Any, send: Any) -> None:
    """An inner app that answers (through the layer's send wrapper, if any)."""
    await send(_START)
    await send(_BODY)


async def _drop(message: Any) -> None:
    return None


INNER = {"noop": _noop, "respond": _responding}


class _Capture:
    """Copies the context (and scope) the next layer is called with, then calls it."""

    def __init__(self, inner: Any, key: str, into: dict[str, Any], context_key: str) -> None:
        self.inner, self.key, self.into, self.context_key = inner, key, into, context_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        ctx = scope.get(self.context_key)
        if ctx is not None and self.key not in self.into:
            c = copy.copy(ctx)
            c.extras = dict(ctx.extras)
            c.response_headers = list(ctx.response_headers)
            self.into[self.key] = (dict(scope), c)
        await self.inner(scope, receive, send)


def _layers(app: Any) -> list[Any]:
    """The layers of a stack, outermost first (through ``build_stack``'s fused links,
    whose ``app`` is the layer they call)."""
    found = []
    node = app
    while node is not None:
        if getattr(node, "layer_name", None) is not None:
            found.append(node)
        node = getattr(node, "app", None)
    return found


async def _handlers(pkg: str, names: list[str], app: str = "stack",
                    inner_app: Any = _noop) -> dict[str, tuple[Any, Any, Any]]:
    """Per layer name: (handler, scope, context) as the default stack (or the demo app)
    of ``pkg`` has them."""
    from aduib_asgi.bench.driver import Exchange

    cases = importlib.import_module(pkg + ".bench.cases")
    context_key = importlib.import_module(pkg + ".context").CONTEXT_KEY
    runner = cases._demo_build() if app == "demo" else cases._stack_build()
    captured: dict[str, Any] = {}
    layers = _layers(runner.app)
    for outer, inner in itertools.pairwise(layers):
        if inner.layer_name in names:  # the outer layer hands the request on to it
            outer.app = _Capture(outer.app, inner.layer_name, captured, context_key)
    ex = Exchange(runner._body_msg)
    await runner.app(dict(runner._tmpl), ex.receive, ex.send)
    by_name = {layer.layer_name: layer for layer in layers}
    out = {}
    for name in names:
        if name not in captured:
            raise SystemExit(f"{pkg}: layer {name!r} is not in the {app} app")
        scope, ctx = captured[name]
        layer = by_name[name]
        layer.app = inner_app
        handler = getattr(layer, "_handle", None) or layer._http
        out[name] = (handler, scope, ctx)
    return out


async def _timed(handler: Any, scope: Any, ctx: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.response_headers = []
        await handler(scope, None, _drop, ctx)
    return (time.perf_counter() - t0) / n * 1e6


async def run(names: list[str], rounds: int, calls: int, ref: str, app: str,
              inner: str = "noop") -> None:
    inner_app = INNER[inner]

    async def floor(scope: Any, receive: Any, send: Any, ctx: Any) -> None:
        await inner_app(scope, receive, send)

    cases: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
    for pkg in (REF_PKG, "aduib_asgi"):
        found = await _handlers(pkg, names, app, inner_app)
        for name in names:
            cases[(pkg, name)] = found[name]
        _, scope, ctx = found[names[0]]
        cases[(pkg, "floor")] = (floor, scope, ctx)
    keys = list(cases)
    for key in keys:  # warm up
        await _timed(*cases[key], calls)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        for key in keys if i % 2 == 0 else reversed(keys):
            samples[key].append(await _timed(*cases[key], calls))
    low = {k: min(v) for k, v in samples.items()}
    mid = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{app}, inner app {inner}: {rounds} interleaved rounds of {calls} calls; µs per "
          f"call over a handler that only calls the inner app (same version's), min (median)")
    print(f"  {'floor':14s} {ref}: {low[(REF_PKG, 'floor')]:.3f} "
          f"({mid[(REF_PKG, 'floor')]:.3f})  this checkout: "
          f"{low[('aduib_asgi', 'floor')]:.3f} ({mid[('aduib_asgi', 'floor')]:.3f})")
    for name in names:
        a_low = low[(REF_PKG, name)] - low[(REF_PKG, "floor")]
        b_low = low[("aduib_asgi", name)] - low[("aduib_asgi", "floor")]
        a_mid = mid[(REF_PKG, name)] - mid[(REF_PKG, "floor")]
        b_mid = mid[("aduib_asgi", name)] - mid[("aduib_asgi", "floor")]
        print(f"  {name:14s} {ref}: +{a_low:.3f} (+{a_mid:.3f})  this checkout: "
              f"+{b_low:.3f} (+{b_mid:.3f})  difference {b_low - a_low:+.3f} "
              f"({b_mid - a_mid:+.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main", help="git ref to compare with (main)")
    parser.add_argument("--layers", default=DEFAULT_LAYERS)
    parser.add_argument("--app", choices=("stack", "demo"), default="stack",
                        help="the bench's default stack, or the demo app (every layer)")
    parser.add_argument("--inner", choices=sorted(INNER), default="noop",
                        help="the inner app: returns at once, or answers (two sends "
                             "through the layer's send wrapper)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export_ref(args.ref, pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        run_loop(run([n for n in args.layers.split(",") if n], args.rounds, args.calls,
                     args.ref, args.app, args.inner))


if __name__ == "__main__":
    main()
