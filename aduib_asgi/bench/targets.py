"""The speed targets (docs/performance.md), checked against one run's results.

Each target yields rows ``{"target", "goal", "measured", "verdict", "detail"}``;
verdict is "met", "missed" (with by how much in ``detail``) or "n/a" (a case it
needs did not run: layer not landed, package missing, or not selected).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aduib_asgi.bench.runner import CaseResult

__all__ = ["evaluate_targets", "missed_targets"]

NOOP_BUDGET_US = 1.0
STACK_BUDGET_US = 40.0
TRACE_RATIO = 0.5
LIMITS_SLACK_US = 2.0
SLOWAPI_FRACTION = 1 / 3
CODEC_SLACK = 0.10
HTTP_RATIO = 2.0


def _get(results: Mapping[str, CaseResult], cid: str) -> CaseResult | None:
    r = results.get(cid)
    return r if r is not None and r.ok else None


def _row(target: str, goal: str, measured: str, ok: bool | None, detail: str = ""
         ) -> dict[str, Any]:
    verdict = "n/a" if ok is None else ("met" if ok else "missed")
    return {"target": target, "goal": goal, "measured": measured, "verdict": verdict,
            "detail": detail}


def _first(results: Mapping[str, CaseResult], pred: Any) -> CaseResult | None:
    for r in results.values():
        if pred(r):
            return r
    return None


def _untriggered(results: Mapping[str, CaseResult], layers: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in layers:
        stack = _first(results, lambda r, n=name: r.layer == n and r.group == "layers"
                       and r.triggered is False and not r.extra.get("alone"))
        alone = _first(results, lambda r, n=name: r.layer == n and r.group == "layers"
                       and r.triggered is False and r.extra.get("alone"))
        t = f"{name}: not-triggered path"
        goal = "≤ 1 µs over a no-op pure-ASGI layer"
        if stack is None or not stack.ok or stack.delta_us is None:
            why = stack.reason if stack is not None and stack.reason else "no measurement"
            rows.append(_row(t, goal, "not available", None, why))
            continue
        d = stack.delta_us
        detail = f"in a stack ({stack.variant})"
        if alone is not None and alone.ok and alone.delta_us is not None:
            detail += f"; alone, creating the request context: +{alone.delta_us:.2f} µs"
        if d > NOOP_BUDGET_US:
            detail = f"over by {d - NOOP_BUDGET_US:.2f} µs; " + detail
        rows.append(_row(t, goal, f"+{d:.2f} µs", d <= NOOP_BUDGET_US, detail))
    return rows


def _stack(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    r = results.get("rpc/rpc.stack")
    goal = "≤ 40 µs/request over the bare dispatcher"
    t = "default stack on a small echo"
    if r is None or not r.ok or r.overhead_us is None:
        return [_row(t, goal, "not available", None, r.reason or "" if r else "not run")]
    missing = r.extra.get("missing") or []
    ov = r.overhead_us
    detail = f"layers: {', '.join(r.extra.get('present') or [])}"
    if missing:
        detail += f"; NOT YET LANDED: {', '.join(missing)} (figure is for the partial stack)"
    otel = _get(results, "layers/peer.otel")
    if otel is not None and otel.overhead_us is not None:
        detail += f"; one OTel ASGI middleware alone: +{otel.overhead_us:.1f} µs"
    ok: bool | None = ov <= STACK_BUDGET_US
    if missing:
        ok = None if ov <= STACK_BUDGET_US else False
    if ov > STACK_BUDGET_US:
        detail = f"over by {ov - STACK_BUDGET_US:.1f} µs; " + detail
    return [_row(t, goal, f"+{ov:.1f} µs", ok, detail)]


def _trace(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    t = "trace layer with an OTel SDK"
    goal = "≤ 50% of opentelemetry-instrumentation-asgi's cost"
    ours = _first(results, lambda r: r.layer == "trace" and r.ok and "SDK" in r.variant
                  and "no SDK" not in r.variant and r.extra.get("alone"))
    otel = _get(results, "layers/peer.otel")
    if ours is None or otel is None or ours.overhead_us is None or not otel.overhead_us:
        return [_row(t, goal, "not available", None, "trace layer or OTel peer did not run")]
    ratio = ours.overhead_us / otel.overhead_us
    detail = (f"ours alone +{ours.overhead_us:.1f} µs vs OTel ASGI +{otel.overhead_us:.1f} µs")
    nosr = _get(results, "layers/peer.otel-nosr")
    if nosr is not None and nosr.overhead_us:
        detail += f" (OTel without send/receive spans +{nosr.overhead_us:.1f} µs)"
    return [_row(t, goal, f"{ratio:.0%}", ratio <= TRACE_RATIO, detail)]


def _ratelimit(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    rows = []
    admit = _first(results, lambda r: r.layer == "ratelimit" and r.ok and r.triggered
                   and not r.extra.get("alone") and "admit" in r.variant)
    admit_alone = _first(results, lambda r: r.layer == "ratelimit" and r.ok and r.triggered
                         and r.extra.get("alone") and "admit" in r.variant)
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
        if d > budget:
            detail = f"over by {d - budget:.2f} µs; " + detail
        rows.append(_row(t1, g1, f"+{d:.2f} µs (budget {budget:.2f})", d <= budget, detail))
    t2, g2 = "rate limiting (memory) vs slowapi", "≤ 1/3 of slowapi's cost"
    subject = admit_alone or admit
    if subject is None or slow is None or subject.overhead_us is None or not slow.overhead_us:
        rows.append(_row(t2, g2, "not available", None, "rate-limit layer or slowapi did not run"))
    else:
        ratio = subject.overhead_us / slow.overhead_us
        rows.append(_row(t2, g2, f"{ratio:.0%} of slowapi", ratio <= SLOWAPI_FRACTION,
                         f"ours {'alone' if subject is admit_alone else 'in a stack'} "
                         f"+{subject.overhead_us:.1f} µs vs slowapi +{slow.overhead_us:.1f} µs"))
    return rows


def _compression(results: Mapping[str, CaseResult]) -> list[dict[str, Any]]:
    rows = []
    for size in ("20k", "1m"):
        g = f"compress-{size}"
        ours_by_codec = {r.codec: r for r in results.values()
                         if r.group == g and r.kind == "ours" and r.codec}
        codecs = sorted({r.codec for r in results.values()
                         if r.group == g and r.kind == "raw" and r.codec})
        for codec in codecs:
            raw = _get(results, f"{g}/raw.{codec}")
            ours = ours_by_codec.get(codec)
            peer = _get(results, f"{g}/peer.compress.{codec}")
            t = f"compression {codec}, {size}"
            goal = "≤ raw codec + 10%" + (", faster than starlette-compress" if peer else "")
            if ours is None or not ours.ok or raw is None or ours.overhead_us is None:
                why = ours.reason if ours is not None and ours.reason else "layer case did not run"
                rows.append(_row(t, goal, "not available", None, why))
                continue
            raw_us = raw.median_us or 0.0
            ov = ours.overhead_us
            ok = ov <= raw_us * (1 + CODEC_SLACK)
            detail = f"raw {raw_us:.1f} µs → {ov / raw_us:.2f}× raw" if raw_us else ""
            if peer is not None and peer.overhead_us is not None:
                faster = ov < peer.overhead_us
                ok = ok and faster
                detail += f"; starlette-compress +{peer.overhead_us:.1f} µs"
                if not faster:
                    detail += f" (slower by {ov - peer.overhead_us:.1f} µs)"
            if ov > raw_us * (1 + CODEC_SLACK):
                detail = f"over raw+10% by {ov - raw_us * 1.1:.1f} µs; " + detail
            rows.append(_row(t, goal, f"+{ov:.1f} µs", ok, detail))
    return rows


def _http(http: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The demo as shipped (``aduib-asgi demo``) vs the reference as its venv runs it;
    the like-for-like ratio (both on asyncio + h11) goes into the detail."""
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
    if ratio < HTTP_RATIO:
        detail = f"short by {HTTP_RATIO - ratio:.2f}×; " + detail
    return [_row(t, goal, f"{ratio:.2f}×", ratio >= HTTP_RATIO, detail)]


def evaluate_targets(results: Mapping[str, CaseResult], layers: list[str],
                     http: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every target row, in the documented order."""
    return [
        *_untriggered(results, layers),
        *_stack(results),
        *_trace(results),
        *_ratelimit(results),
        *_compression(results),
        *_http(http),
    ]


def missed_targets(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose verdict is "missed" (``n/a`` rows are not failures)."""
    return [row for row in targets if row.get("verdict") == "missed"]
