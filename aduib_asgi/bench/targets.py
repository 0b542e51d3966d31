"""The speed targets (docs/performance.md), checked against one run's results.

Each target yields rows ``{"target", "goal", "measured", "verdict", "margin",
"detail", "headline"}``; verdict is "met", "missed" or "n/a" (a case it needs did
not run: layer not landed, package missing, or not selected). ``margin`` says by
how much a target is met or missed, in the target's unit ("met by 0.21 µs",
"missed by 0.19 times"). ``headline`` rows are the table of docs/performance.md
("the protocol at the speed of a bare route"); the others are the earlier
per-feature targets that the headline table does not supersede.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aduib_asgi.bench.runner import CaseResult, quartiles

__all__ = ["GOALS", "evaluate_targets", "missed_targets", "paired_ratios"]

#: The headline goals (docs/performance.md, "Targets").
DISPATCHER_RATIO = 1.0      # dispatcher alone / bare Starlette JSON echo, in-process
STACK_BUDGET_US = 10.0      # default stack over the dispatcher alone
NOOP_BUDGET_US = 0.5        # a layer's not-triggered path, in a stack, over a no-op layer
HTTP_BARE_RATIO = 0.85      # demo as shipped / bare Starlette JSON echo, HTTP req/s
COMPRESS_SLACK_US = 3.0     # 20 KB response: our layer's cost over the raw codec's
TRACE_RATIO = 0.15          # trace layer with an OTel SDK / opentelemetry-instrumentation-asgi
#: Earlier goals kept (not superseded by the headline table).
LIMITS_SLACK_US = 2.0
SLOWAPI_FRACTION = 1 / 3
CODEC_SLACK = 0.10          # 1 MB response: ≤ raw codec + 10 %
REFERENCE_RATIO = 2.0       # demo as shipped / aduib-rpc 2.0.1 reference server
#: Below this, the bare pure-ASGI app (the server's floor) is too close to the bare
#: route for the load generator to be out of the way.
LOADER_HEADROOM = 1.5

GOALS: dict[str, float] = {
    "dispatcher_vs_starlette_json": DISPATCHER_RATIO,
    "stack_over_dispatcher_us": STACK_BUDGET_US,
    "not_triggered_us": NOOP_BUDGET_US,
    "http_demo_vs_bare": HTTP_BARE_RATIO,
    "compress_20k_over_raw_us": COMPRESS_SLACK_US,
    "trace_vs_otel": TRACE_RATIO,
}


def _get(results: Mapping[str, CaseResult], cid: str) -> CaseResult | None:
    r = results.get(cid)
    return r if r is not None and r.ok else None


def _margin(ok: bool | None, by: float, unit: str) -> str:
    if ok is None:
        return ""
    fmt = f"{abs(by):.2f}{unit}"
    return f"{'met' if ok else 'missed'} by {fmt}"


def _row(target: str, goal: str, measured: str, ok: bool | None, detail: str = "", *,
         margin: str = "", headline: bool = False) -> dict[str, Any]:
    verdict = "n/a" if ok is None else ("met" if ok else "missed")
    return {"target": target, "goal": goal, "measured": measured, "verdict": verdict,
            "margin": margin if ok is not None else "", "detail": detail,
            "headline": headline}


def _upper(target: str, goal: str, measured: str, value: float, limit: float, unit: str,
           detail: str, *, headline: bool = True) -> dict[str, Any]:
    """A row whose value must stay at or under ``limit``."""
    ok = value <= limit
    return _row(target, goal, measured, ok, detail, margin=_margin(ok, limit - value, unit),
                headline=headline)


def _lower(target: str, goal: str, measured: str, value: float, limit: float, unit: str,
           detail: str, *, headline: bool = True) -> dict[str, Any]:
    """A row whose value must reach ``limit``."""
    ok = value >= limit
    return _row(target, goal, measured, ok, detail, margin=_margin(ok, value - limit, unit),
                headline=headline)


def _first(results: Mapping[str, CaseResult], pred: Callable[[CaseResult], bool]
           ) -> CaseResult | None:
    for r in results.values():
        if pred(r):
            return r
    return None


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-round ratios ``a[i] / b[i]`` (rounds of the same run, same order)."""
    return [x / y for x, y in zip(a, b, strict=False) if y]


def _spread(ratios: Sequence[float]) -> str:
    if len(ratios) < 2:
        return ""
    q1, _, q3 = quartiles(ratios)
    return (f"per-round ratios IQR {q1:.2f}–{q3:.2f}×, range {min(ratios):.2f}–"
            f"{max(ratios):.2f}× over {len(ratios)} rounds")


# -- the headline table ----------------------------------------------------------------------

def _dispatcher(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    t = "dispatcher alone vs bare Starlette JSON echo (in-process)"
    goal = f"≤ {DISPATCHER_RATIO:.2f}× the bare route's µs/request"
    disp = _get(results, "rpc/rpc.dispatcher")
    ref = _get(results, "rpc/ref.starlette-json")
    if disp is None or ref is None or not disp.median_us or not ref.median_us:
        return [_row(t, goal, "not available", None, "the rpc group did not run",
                     headline=True)]
    ratios = paired_ratios(disp.samples_us, ref.samples_us)
    ratio = statistics.median(ratios) if ratios else disp.median_us / ref.median_us
    detail = (f"median of per-round ratios; dispatcher {disp.median_us:.2f} µs vs JSON echo "
              f"route {ref.median_us:.2f} µs (medians)")
    fixed = _get(results, "rpc/ref.starlette")
    if fixed is not None and fixed.median_us:
        detail += (f"; vs a Starlette route answering a fixed body ({fixed.median_us:.2f} µs): "
                   f"{disp.median_us / fixed.median_us:.2f}×")
    if ratios:
        detail += "; " + _spread(ratios)
    return [_upper(t, goal, f"{ratio:.2f}×", ratio, DISPATCHER_RATIO, "×", detail)]


def _stack(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    r = results.get("rpc/rpc.stack")
    goal = f"≤ +{STACK_BUDGET_US:.0f} µs/request over the dispatcher alone"
    t = "default stack over the dispatcher"
    if r is None or not r.ok or r.overhead_us is None:
        why = (r.reason or "") if r is not None else "not run"
        return [_row(t, goal, "not available", None, why, headline=True)]
    missing = r.extra.get("missing") or []
    ov = r.overhead_us
    detail = f"layers: {', '.join(r.extra.get('present') or [])}"
    if r.overhead_q1_us is not None and r.overhead_q3_us is not None:
        detail += f"; paired IQR {r.overhead_q1_us:+.1f}…{r.overhead_q3_us:+.1f} µs"
    if missing:
        detail += f"; NOT YET LANDED: {', '.join(missing)} (figure is for the partial stack)"
    detail += _speed_note(results, "rpc", ov)
    row = _upper(t, goal, f"+{ov:.1f} µs", ov, STACK_BUDGET_US, " µs", detail)
    if missing and ov <= STACK_BUDGET_US:  # a partial stack cannot meet it
        row.update(verdict="n/a", margin="")
    return [row]


#: The bare Starlette route (fixed body) in the run the µs goals were set against.
REFERENCE_STARLETTE_US = 10.8


def _speed_note(results: Mapping[str, CaseResult], group: str, us: float) -> str:
    """µs goals depend on the machine's speed: relate the figure to this run's bare
    Starlette route (10.8 µs when the goals were set)."""
    ref = _get(results, f"{group}/ref.starlette")
    if ref is None or not ref.median_us:
        return ""
    return (f"; machine speed: the bare Starlette route took {ref.median_us:.1f} µs in this "
            f"run ({REFERENCE_STARLETTE_US} µs when the goals were set), so at that speed "
            f"this is ≈ {us * REFERENCE_STARLETTE_US / ref.median_us:+.2f} µs")


def _not_triggered(results: Mapping[str, CaseResult], name: str, *, alone: bool
                   ) -> CaseResult | None:
    return _first(results, lambda r: r.layer == name and r.group == "layers"
                  and r.triggered is False and bool(r.extra.get("alone")) is alone)


def _untriggered(results: Mapping[str, CaseResult], layers: list[str]) -> list[dict[str, Any]]:
    rows = []
    goal = f"≤ {NOOP_BUDGET_US} µs over a no-op pure-ASGI layer, in a stack"
    if not any(r.group == "layers" for r in results.values()):
        return [_row("each layer: not-triggered path", goal, "not run", None,
                     "the layers group did not run", headline=True)]
    for name in layers:
        stack = _not_triggered(results, name, alone=False)
        alone = _not_triggered(results, name, alone=True)
        t = f"{name}: not-triggered path"
        if stack is None or not stack.ok or stack.delta_us is None:
            why = stack.reason if stack is not None and stack.reason else "no measurement"
            rows.append(_row(t, goal, "not available", None, why, headline=True))
            continue
        d = stack.delta_us
        detail = f"in a stack ({stack.variant})"
        if stack.delta_q1_us is not None and stack.delta_q3_us is not None:
            detail += f", paired IQR {stack.delta_q1_us:+.2f}…{stack.delta_q3_us:+.2f} µs"
        if alone is not None and alone.ok and alone.delta_us is not None:
            detail += f"; alone, creating the request context: +{alone.delta_us:.2f} µs"
        detail += _speed_note(results, "layers", d)
        rows.append(_upper(t, goal, f"{d:+.2f} µs", d, NOOP_BUDGET_US, " µs", detail))
    return rows


def _http_rounds(server: Mapping[str, Any]) -> list[float]:
    return [float(x["rps"]) for x in server.get("rounds") or [] if x.get("rps")]


def _in_process_server(results: Mapping[str, CaseResult]) -> str:
    """The same comparison through uvicorn's protocol in-process (the server group)."""
    demo, bare = _get(results, "server/server.demo"), _get(results, "server/server.json")
    if demo is None or bare is None or not demo.median_us or not bare.median_us:
        return ""
    text = (f"in-process through the HTTP protocol (server group): bare route "
            f"{bare.median_us:.1f} µs vs demo {demo.median_us:.1f} µs per request, "
            f"{bare.median_us / demo.median_us:.2f}× the rate")
    guarded = _get(results, "server/server.json-guarded")
    if guarded is not None and guarded.overhead_us is not None:
        text += f"; the demo's protocol class alone {guarded.overhead_us:+.1f} µs"
    return text


def _http_bare(http: Mapping[str, Any] | None,
               results: Mapping[str, CaseResult] | None = None) -> list[dict[str, Any]]:
    t = "demo as shipped vs bare Starlette JSON echo (HTTP req/s, same server settings)"
    goal = f"≥ {HTTP_BARE_RATIO:.2f}× the bare route's requests/s"
    proxy = _in_process_server(results or {})
    if not http:
        why = "HTTP mode not run (--no-http)" + (f"; {proxy}" if proxy else "")
        return [_row(t, goal, "not run", None, why, headline=True)]
    servers = {s["name"]: s for s in http.get("servers", [])}
    demo, bare = servers.get("demo"), servers.get("bare-starlette")
    if demo is None or bare is None or not demo.get("rps") or not bare.get("rps"):
        why = (bare or {}).get("reason") or (demo or {}).get("reason") or \
            "demo or bare Starlette server not run"
        return [_row(t, goal, "not available", None, why, headline=True)]
    ratios = paired_ratios(_http_rounds(demo), _http_rounds(bare))
    ratio = statistics.median(ratios) if ratios else demo["rps"] / bare["rps"]
    detail = (f"median of per-round ratios; demo {demo['rps']:.0f} req/s vs bare "
              f"{bare['rps']:.0f} req/s (medians, {demo.get('settings', '?')})")
    if ratios:
        detail += "; " + _spread(ratios)
    if demo.get("cpu_vs_starlette") is not None and bare.get("cpu_us"):
        detail += (f"; server CPU per request: demo {demo['cpu_us']:.0f} µs vs bare "
                   f"{bare['cpu_us']:.0f} µs, {demo['cpu_vs_starlette']:.2f}× "
                   f"({demo['cpu_vs_starlette_min']:.2f}–{demo['cpu_vs_starlette_max']:.2f}) "
                   f"the rate (steadier than req/s on shared cores)")
    floor = servers.get("bare-shipped")
    if floor is not None and floor.get("rps") and floor.get("settings") == bare.get("settings"):
        ceiling = floor["rps"] / bare["rps"]
        if ceiling < LOADER_HEADROOM:
            detail += (f"; LOAD GENERATOR MAY BE THE BOTTLENECK: a bare pure-ASGI app got only "
                       f"{ceiling:.2f}× the bare route's req/s, so ratios are pulled toward 1")
    if proxy:
        detail += "; " + proxy
    return [_lower(t, goal, f"{ratio:.2f}×", ratio, HTTP_BARE_RATIO, "×", detail)]


def _codec_pairs(results: Mapping[str, CaseResult], group: str
                 ) -> list[tuple[str, CaseResult | None, CaseResult | None]]:
    """(codec, raw codec case, our layer's case) for every codec ``group`` measured raw."""
    ours = {r.codec: r for r in results.values()
            if r.group == group and r.kind == "ours" and r.codec}
    codecs = sorted({r.codec for r in results.values()
                     if r.group == group and r.kind == "raw" and r.codec})
    return [(c, _get(results, f"{group}/raw.{c}"), ours.get(c)) for c in codecs]


def _compression_20k(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    rows = []
    g = "compress-20k"
    goal = f"≤ raw codec + {COMPRESS_SLACK_US:.0f} µs"
    for codec, raw, ours in _codec_pairs(results, g):
        t = f"compression {codec}, 20 KB response"
        if ours is None or not ours.ok or raw is None or ours.overhead_us is None \
                or raw.median_us is None:
            why = ours.reason if ours is not None and ours.reason else "layer case did not run"
            rows.append(_row(t, goal, "not available", None, why, headline=True))
            continue
        over = ours.overhead_us - raw.median_us
        detail = (f"layer +{ours.overhead_us:.1f} µs over the uncompressed route, raw codec "
                  f"{raw.median_us:.1f} µs")
        peer = _get(results, f"{g}/peer.compress.{codec}")
        if peer is not None and peer.overhead_us is not None:
            detail += f"; starlette-compress +{peer.overhead_us:.1f} µs"
        rows.append(_upper(t, goal, f"raw {over:+.1f} µs", over, COMPRESS_SLACK_US, " µs",
                           detail))
    return rows


def _trace(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    t = "trace layer with an OTel SDK vs opentelemetry-instrumentation-asgi"
    goal = f"≤ {TRACE_RATIO:.0%} of its cost"
    ours = _first(results, lambda r: r.layer == "trace" and r.ok and "SDK" in r.variant
                  and "no SDK" not in r.variant and bool(r.extra.get("alone")))
    otel = _get(results, "layers/peer.otel")
    if ours is None or otel is None or ours.overhead_us is None or not otel.overhead_us:
        return [_row(t, goal, "not available", None, "trace layer or OTel peer did not run",
                     headline=True)]
    ratio = ours.overhead_us / otel.overhead_us
    detail = f"ours alone +{ours.overhead_us:.1f} µs vs OTel ASGI +{otel.overhead_us:.1f} µs"
    nosr = _get(results, "layers/peer.otel-nosr")
    if nosr is not None and nosr.overhead_us:
        detail += f" (OTel without send/receive spans +{nosr.overhead_us:.1f} µs)"
    ok = ratio <= TRACE_RATIO
    return [_row(t, goal, f"{ratio:.0%}", ok, detail, headline=True,
                 margin=_margin(ok, (TRACE_RATIO - ratio) * 100, " points"))]


# -- earlier targets, still held -------------------------------------------------------------

def _ratelimit(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    rows = []
    admit = _first(results, lambda r: r.layer == "ratelimit" and r.ok and bool(r.triggered)
                   and not r.extra.get("alone") and "admit" in r.variant)
    admit_alone = _first(results, lambda r: r.layer == "ratelimit" and r.ok
                         and bool(r.triggered) and bool(r.extra.get("alone"))
                         and "admit" in r.variant)
    lim = _get(results, "layers/peer.limits")
    slow = _get(results, "layers/peer.slowapi")
    t1, g1 = "rate limiting (memory) vs limits", "≤ limits' own cost + 2 µs"
    if admit is None or lim is None or admit.delta_us is None or lim.delta_us is None:
        rows.append(_row(t1, g1, "not available", None, "rate-limit layer or limits did not run"))
    else:
        budget = lim.delta_us + LIMITS_SLACK_US
        d = admit.delta_us
        detail = (f"ours in a stack +{d:.2f} µs over a no-op layer; limits.aio fixed window in a "
                  f"pure-ASGI layer +{lim.delta_us:.2f} µs over a no-op layer")
        rows.append(_upper(t1, g1, f"+{d:.2f} µs (budget {budget:.2f})", d, budget, " µs",
                           detail, headline=False))
    t2, g2 = "rate limiting (memory) vs slowapi", "≤ 1/3 of slowapi's cost"
    subject = admit_alone or admit
    if subject is None or slow is None or subject.overhead_us is None or not slow.overhead_us:
        rows.append(_row(t2, g2, "not available", None, "rate-limit layer or slowapi did not run"))
    else:
        ratio = subject.overhead_us / slow.overhead_us
        rows.append(_upper(t2, g2, f"{ratio:.0%} of slowapi", ratio, SLOWAPI_FRACTION, "×",
                           f"ours {'alone' if subject is admit_alone else 'in a stack'} "
                           f"+{subject.overhead_us:.1f} µs vs slowapi +{slow.overhead_us:.1f} µs",
                           headline=False))
    return rows


def _compression_1m(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    rows = []
    g = "compress-1m"
    for codec, raw, ours in _codec_pairs(results, g):
        peer = _get(results, f"{g}/peer.compress.{codec}")
        t = f"compression {codec}, 1 MB response"
        goal = "≤ raw codec + 10%" + (", faster than starlette-compress" if peer else "")
        if ours is None or not ours.ok or raw is None or ours.overhead_us is None:
            why = ours.reason if ours is not None and ours.reason else "layer case did not run"
            rows.append(_row(t, goal, "not available", None, why))
            continue
        raw_us = raw.median_us or 0.0
        ov = ours.overhead_us
        limit = raw_us * (1 + CODEC_SLACK)
        ok = ov <= limit
        detail = f"raw {raw_us:.1f} µs → {ov / raw_us:.2f}× raw" if raw_us else ""
        margin = _margin(ok, limit - ov, " µs")
        if peer is not None and peer.overhead_us is not None:
            detail += f"; starlette-compress +{peer.overhead_us:.1f} µs"
            if ok and ov >= peer.overhead_us:
                ok = False
                margin = f"slower than starlette-compress by {ov - peer.overhead_us:.2f} µs"
        rows.append(_row(t, goal, f"+{ov:.1f} µs", ok, detail, margin=margin))
    return rows


def _http_reference(http: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The demo as shipped vs the reference as its venv runs it; the like-for-like
    ratio (both on asyncio + h11) goes into the detail."""
    t, goal = "HTTP: demo stack vs aduib-rpc 2.0.1", "≥ 2× the reference server's requests/s"
    if not http:
        return [_row(t, goal, "not run", None, "HTTP mode not run (--no-http)")]
    servers = {s["name"]: s for s in http.get("servers", [])}
    demo, ref = servers.get("demo"), servers.get("aduib-rpc")
    if demo is None or ref is None or not demo.get("rps") or not ref.get("rps"):
        why = (ref or {}).get("reason") or (demo or {}).get("reason") or \
            "reference server not available"
        return [_row(t, goal, "not available", None, why)]
    ratio = demo["rps"] / ref["rps"]
    detail = (f"demo as shipped ({demo.get('settings', '?')}) {demo['rps']:.0f} req/s vs "
              f"aduib-rpc ({ref.get('settings', '?')}) {ref['rps']:.0f} req/s")
    same = servers.get("demo-h11")
    if same is not None and same.get("rps"):
        detail += (f"; like for like ({same.get('settings', '?')} both): "
                   f"{same['rps'] / ref['rps']:.2f}× ({same['rps']:.0f} req/s)")
    return [_lower(t, goal, f"{ratio:.2f}×", ratio, REFERENCE_RATIO, "×", detail,
                   headline=False)]


def evaluate_targets(results: Mapping[str, CaseResult], layers: list[str],
                     http: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every target row: the headline table first (in its documented order), then the
    earlier per-feature targets."""
    return [
        *_dispatcher(results),
        *_stack(results),
        *_untriggered(results, layers),
        *_http_bare(http, results),
        *_compression_20k(results),
        *_trace(results),
        *_ratelimit(results),
        *_compression_1m(results),
        *_http_reference(http),
    ]


def missed_targets(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose verdict is "missed" (``n/a`` rows are not failures)."""
    return [row for row in targets if row.get("verdict") == "missed"]
