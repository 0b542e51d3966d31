"""The trace target's floor: what the OpenTelemetry SDK itself costs for one server span.

The target "trace layer with an OTel SDK ≤ 15 % of opentelemetry-instrumentation-asgi"
compares two layers that both make the SDK's own calls. This measures, in
interleaved rounds: a bare Starlette route (baseline), the route behind
opentelemetry-instrumentation-asgi (SDK ``TracerProvider``), behind our trace
layer with the same SDK (alone, traceparent), and the **minimum SDK work for one
server span with a remote parent** as plain calls (extract ``traceparent``,
``start_span`` with three attributes, attach/detach, one attribute, ``end``).
If that floor alone exceeds 15 % of the OTel middleware's cost, no layer that
creates a real span can meet the target::

    .venv/bin/python benchmarks/otel_floor.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from aduib_asgi.bench import cases
from aduib_asgi.bench.driver import CallRunner

TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def sdk_floor() -> Any:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer = TracerProvider().get_tracer("floor", "1")
    propagator = TraceContextTextMapPropagator()
    attrs = {"rpc.system": "aduib_rpc", "rpc.method": "rpc.v2/Echo/echo", "rpc.service": "Echo"}

    def one() -> None:
        parent: Context = propagator.extract(TRACEPARENT)
        span = tracer.start_span("rpc.v2/Echo/echo", context=parent, kind=SpanKind.SERVER,
                                 attributes=attrs)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        otel_context.detach(token)
        span.set_attribute("http.response.status_code", 200)
        span.end()

    return CallRunner(one)


async def main(rounds: int) -> None:
    by_id = {c.id: c for c in cases.all_cases() if c.group == "layers"}
    names = {"route": "layers/ref.starlette", "otel": "layers/peer.otel",
             "ours": "layers/trace.2.alone"}
    runners = {k: by_id[v].build() for k, v in names.items()}
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
            samples[k].append(await runners[k].round(100) / 100 * 1e6)
    med = {k: statistics.median(v) for k, v in samples.items()}
    otel = [o - b for o, b in zip(samples["otel"], samples["route"], strict=True)]
    ours = [o - b for o, b in zip(samples["ours"], samples["route"], strict=True)]
    print(f"{rounds} interleaved rounds; µs per request (medians)")
    print(f"  bare Starlette route                        {med['route']:8.2f}")
    print(f"  opentelemetry-instrumentation-asgi, over it {statistics.median(otel):+8.2f}")
    print(f"  our trace layer (SDK, alone), over it       {statistics.median(ours):+8.2f}"
          f"   = {statistics.median(ours) / statistics.median(otel):.0%} of OTel's")
    print(f"  the SDK's own calls for one span            {med['floor']:8.2f}"
          f"   = {med['floor'] / statistics.median(otel):.0%} of OTel's (floor of any layer)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args()
    try:
        import uvloop
        uvloop.run(main(args.rounds))
    except ImportError:
        asyncio.run(main(args.rounds))
