"""The trace target's floor: what the OpenTelemetry SDK itself costs for one server span.

The target "trace layer with an OTel SDK ≤ 15 % of opentelemetry-instrumentation-asgi"
compares two layers that both make the SDK's own calls. This measures, in
interleaved rounds, each over a bare Starlette route (baseline):

- the route behind opentelemetry-instrumentation-asgi (SDK ``TracerProvider``) and
  behind our trace layer with the same SDK (alone, ``traceparent``: the bench's
  ``layers/trace.2.alone``);
- **the SDK's own calls** for one server span with a remote parent, as plain calls:
  the propagator's ``extract`` of the ``traceparent``, ``start_span`` with three
  attributes, ``set_span_in_context`` and attach/detach, one attribute, ``end``;
- **the same calls in a pure-ASGI layer** on the route: the propagator reads the
  scope's headers, the response status is watched by a send wrapper (any layer that
  puts the status on the span needs one) — the floor of *any* tracing middleware;
- **plus the protocol's per-request work**: that layer also creates the request
  context (as any first layer of ours does), puts the span's ids on it and adds the
  ``traceresponse`` header the protocol puts on every response — the floor of a
  trace layer of this protocol. What our layer costs beyond it is its own logic.

If a floor alone exceeds 15 % of the OTel middleware's cost, no layer that does that
work can meet the target::

    .venv/bin/python benchmarks/otel_floor.py [--rounds 60] [--cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from aduib_asgi.bench import cases
from aduib_asgi.bench.apps import starlette_app
from aduib_asgi.bench.driver import AsgiRunner, CallRunner

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from ab_ref import timed  # the same timing loop, on this script's clock

TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def _sdk() -> tuple[Any, Any, dict[str, str]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer = TracerProvider().get_tracer("floor", "1")
    attrs = {"rpc.system": "aduib_rpc", "rpc.method": "rpc.v2/Echo/echo", "rpc.service": "Echo"}
    return tracer, TraceContextTextMapPropagator(), attrs


def sdk_floor() -> Any:
    """The SDK's own calls for one server span, as plain calls (no ASGI)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

    tracer, propagator, attrs = _sdk()

    def one() -> None:
        parent: Context = propagator.extract(TRACEPARENT)
        span = tracer.start_span("rpc.v2/Echo/echo", context=parent, kind=SpanKind.SERVER,
                                 attributes=attrs)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        otel_context.detach(token)
        span.set_attribute("http.response.status_code", 200)
        span.end()

    return CallRunner(one)


def layer_floor(protocol: bool, sdk: bool = True) -> Callable[[Any], Any]:
    """A pure-ASGI layer making only the SDK's calls (``protocol``: plus the request
    context, its ids and the ``traceresponse`` header, as the protocol asks; not
    ``sdk``: the same layer without them — the header read and the status watch)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind

    from aduib_asgi.context import (
        RequestContext,
        emitter_parts,
        run_with_context,
        with_response_headers,
    )

    tracer, propagator, attrs = _sdk()
    server = SpanKind.SERVER

    class ScopeGetter(Getter[list[tuple[bytes, bytes]]]):
        def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
            name = key.encode("latin-1")
            for k, v in carrier:
                if k == name:
                    return [v.decode("latin-1")]
            return None

        def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
            return [k.decode("latin-1") for k, _ in carrier]

    getter = ScopeGetter()

    class Floor:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if protocol:
                await run_with_context(self._handle, scope, receive, send)
                return
            if not sdk:  # the layer's own plumbing: read the header, watch the status
                getter.get(scope["headers"], "traceparent")
                seen = 0

                async def watched(message: Any) -> None:
                    nonlocal seen
                    if message["type"] == "http.response.start":
                        seen = message["status"]
                    await send(message)

                await self.app(scope, receive, watched)
                return
            # the SDK's calls alone, in this one coroutine
            parent = propagator.extract(scope["headers"], getter=getter)
            span = tracer.start_span("rpc.v2/Echo/echo", context=parent, kind=server,
                                     attributes=attrs)
            status = 0

            async def watch(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            token = otel_context.attach(trace.set_span_in_context(span, parent))
            try:
                await self.app(scope, receive, watch)
            finally:
                otel_context.detach(token)
                span.set_attribute("http.response.status_code", status)
                span.end()

        async def _handle(self, scope: Any, receive: Any, send: Any,
                          ctx: RequestContext) -> None:
            parent = propagator.extract(scope["headers"], getter=getter)
            span = tracer.start_span("rpc.v2/Echo/echo", context=parent, kind=server,
                                     attributes=attrs)
            sc = span.get_span_context()
            ctx.trace_id = tid = sc.trace_id.to_bytes(16, "big").hex()
            ctx.span_id = sid = sc.span_id.to_bytes(8, "big").hex()
            ctx.response_headers.append((b"traceresponse",
                                         f"00-{tid}-{sid}-01".encode("latin-1")))
            send, _ = emitter_parts(send)  # the creator's header emission: done below
            status = 0

            async def watch(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message = with_response_headers(message, ctx)
                await send(message)

            token = otel_context.attach(trace.set_span_in_context(span, parent))
            try:
                await self.app(scope, receive, watch)
            finally:
                otel_context.detach(token)
                span.set_attribute("http.response.status_code", status)
                span.end()

    return Floor


async def main(rounds: int, clock: Callable[[], float]) -> None:
    from starlette.middleware import Middleware

    from aduib_asgi.bench.layers import echo_request

    by_id = {c.id: c for c in cases.all_cases() if c.group == "layers"}
    names = {"route": "layers/ref.starlette", "otel": "layers/peer.otel",
             "ours": "layers/trace.2.alone"}
    runners = {k: by_id[v].build() for k, v in names.items()}
    request = echo_request(*TRACEPARENT.items())
    runners["layer"] = AsgiRunner(starlette_app([Middleware(layer_floor(False))]), request)
    runners["plumbing"] = AsgiRunner(starlette_app([Middleware(layer_floor(False, sdk=False))]),
                                     request)
    runners["protocol"] = AsgiRunner(starlette_app([Middleware(layer_floor(True))]), request)
    runners["floor"] = sdk_floor()
    for k, r in runners.items():
        problem = await r.check()
        if problem is not None:
            raise SystemExit(f"{k}: {problem}")
        await r.round(200)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        for k in keys if i % 2 == 0 else reversed(keys):
            samples[k].append(await timed(runners[k], 100, clock))
    route = samples["route"]

    def over(k: str) -> float:  # median of the per-round differences to the route
        return statistics.median(o - b for o, b in zip(samples[k], route, strict=True))

    otel = over("otel")
    what = "CPU time" if clock is time.thread_time else "wall time"
    print(f"{rounds} interleaved rounds, {what}; µs per request (medians; paired over the route)")
    print(f"  bare Starlette route                          {statistics.median(route):8.2f}")
    print(f"  opentelemetry-instrumentation-asgi, over it   {otel:+8.2f}")
    print(f"  our trace layer (SDK, alone), over it         {over('ours'):+8.2f}"
          f"   = {over('ours') / otel:.0%} of OTel's")
    floor = statistics.median(samples["floor"])
    print(f"  the SDK's own calls for one span              {floor:8.2f}"
          f"   = {floor / otel:.0%} of OTel's (floor of any layer's SDK work)")
    print(f"  those calls in a pure-ASGI layer, over it     {over('layer'):+8.2f}"
          f"   = {over('layer') / otel:.0%} of OTel's (floor of any tracing layer)")
    print(f"  that layer without the SDK calls, over it     {over('plumbing'):+8.2f}"
          f"   (the SDK's calls in a request: {over('layer') - over('plumbing'):.2f})")
    print(f"  + request context, ids, traceresponse         {over('protocol'):+8.2f}"
          f"   = {over('protocol') / otel:.0%} of OTel's (floor of this protocol's layer)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--cpu", action="store_true",
                   help="time rounds by this thread's CPU time, not wall time")
    args = p.parse_args()
    clock = time.thread_time if args.cpu else time.perf_counter
    try:
        import uvloop
        uvloop.run(main(args.rounds, clock))
    except ImportError:
        asyncio.run(main(args.rounds, clock))
