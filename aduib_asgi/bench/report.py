"""Presenting a run: rich tables on stdout, a JSON document, a PNG bar chart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aduib_asgi.bench.cases import GROUPS
from aduib_asgi.bench.runner import CaseResult

__all__ = ["MAX_WIDTH", "print_report", "to_json", "to_markdown", "write_json", "write_plot"]

#: The report's tables fit this many columns.
MAX_WIDTH = 120


def _load_text(meta: Mapping[str, Any]) -> str:
    a, b = meta.get("loadavg_start"), meta.get("loadavg_end")
    if not a or not b:
        return ""
    return f", load average {a[0]:.2f} → {b[0]:.2f}"


def _us(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    if signed:
        return f"{x:+.2f}" if abs(x) < 100 else f"{x:+.0f}"
    return f"{x:.2f}" if abs(x) < 100 else f"{x:.0f}"


def _iqr(q1: float | None, q3: float | None) -> str:
    if q1 is None or q3 is None:
        return ""
    return f"±{(q3 - q1) / 2:.2f}" if abs(q3 - q1) < 100 else f"±{(q3 - q1) / 2:.0f}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _style(kind: str) -> str:
    return {"reference": "dim", "peer": "yellow", "raw": "cyan", "ours": "bold"}.get(kind, "")


def print_report(doc: Mapping[str, Any], results: Mapping[str, CaseResult],
                 console: Any = None) -> None:
    """The tables (one per group), the HTTP table and the targets, with rich."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        # at most 120 columns (rich wraps cells to fit); piped output too
        probe = Console()
        console = Console(width=min(probe.width, MAX_WIDTH) if probe.is_terminal else MAX_WIDTH)
    meta = doc["meta"]
    console.print(f"[bold]aduib-asgi bench[/bold] — {meta['cpu']} ({meta['nproc']} CPUs), "
                  f"Python {meta['python']}, {meta['loop']}, {meta['mode']} mode "
                  f"({meta['rounds']} rounds × ~{meta['round_ms']} ms), {meta['duration_s']:.0f} s"
                  + _load_text(meta))
    by_group: dict[str, list[CaseResult]] = {}
    for r in results.values():
        by_group.setdefault(r.group, []).append(r)
    for gname, rows in by_group.items():
        g = GROUPS[gname]
        base = results.get(f"{gname}/{g.baseline}")
        table = Table(title=f"{g.title}  (baseline: {base.label if base else g.baseline})",
                      title_justify="left", show_lines=False)
        table.add_column("case")
        table.add_column("µs/req", justify="right")
        table.add_column("IQR", justify="right")
        table.add_column("+µs vs baseline", justify="right")
        table.add_column("Δµs vs no-op", justify="right")
        table.add_column("×Starlette", justify="right")
        table.add_column("×ASGI", justify="right")
        for r in rows:
            if not r.ok:
                table.add_row(f"[{_style(r.kind)}]{r.label}[/]",
                              f"[red]{r.status}[/red]", "", f"[red]{r.reason or ''}[/red]",
                              "", "", "")
                continue
            label = r.label + (f" [dim]({r.note})[/dim]" if r.note else "")
            table.add_row(
                f"[{_style(r.kind)}]{label}[/]", _us(r.median_us), _iqr(r.q1_us, r.q3_us),
                _us(r.overhead_us, True) + " " + _iqr(r.overhead_q1_us, r.overhead_q3_us),
                _us(r.delta_us, True) if r.compare_to else "",
                _ratio(r.vs_starlette), _ratio(r.vs_asgi),
            )
        console.print(table)
    http = doc.get("http")
    if http:
        t = Table(title=f"HTTP mode (uvicorn on 127.0.0.1, demo's server settings, "
                        f"{http['loader']}, {http['connections']} connections, "
                        f"{http['rounds']} alternating rounds of {http['round_seconds']} s)",
                  title_justify="left")
        for col in ("server", "req/s", "range", "p50 ms", "p99 ms", "×bare", "×Starlette"):
            t.add_column(col, justify="left" if col == "server" else "right")
        for s in http["servers"]:
            if s.get("rps"):
                t.add_row(s["label"], f"{s['rps']:.0f}", _rps_range(s), f"{s['p50_ms']:.2f}",
                          f"{s['p99_ms']:.2f}", _ratio(s.get("vs_bare")), _ratio_range(s))
            else:
                t.add_row(s["label"], "[red]not available[/red]", "", "", "", "",
                          s.get("reason", ""))
        console.print(t)
    allocs = doc.get("allocations")
    if allocs:
        t = Table(title="Allocations per call (tracemalloc, steady state; medians)",
                  title_justify="left")
        for col in ALLOC_COLUMNS:
            t.add_column(col, justify="left" if col == "app" else "right")
        for a in allocs:
            t.add_row(*_alloc_cells(a))
        console.print(t)
    prof = doc.get("profile")
    if prof:
        _print_profile(console, prof)
    colors = {"met": "green", "missed": "red", "n/a": "yellow"}
    target_tables: list[tuple[str, list[dict[str, Any]]]] = [
        ("Targets: the protocol at a bare route's speed",
         [x for x in doc["targets"] if x.get("headline")]),
        ("Other targets", [x for x in doc["targets"] if not x.get("headline")])]
    for title, trows in target_tables:
        if not trows:
            continue
        t = Table(title=title, title_justify="left")
        for col in ("target", "goal", "measured", "verdict", "margin", "detail"):
            t.add_column(col)
        for row in trows:
            t.add_row(row["target"], row["goal"], row["measured"],
                      f"[{colors[row['verdict']]}]{row['verdict']}[/]", row.get("margin", ""),
                      row["detail"])
        console.print(t)


ALLOC_COLUMNS = ("app", "peak bytes", "live bytes", "live blocks", "retained B/call",
                 "retained blocks/call")


def _alloc_cells(a: Mapping[str, Any]) -> list[str]:
    if a.get("status") != "ok":
        return [a["label"], a.get("status", ""), a.get("reason") or "", "", "", ""]
    return [a["label"], f"{a['peak_bytes']}", f"{a['live_bytes']}", f"{a['live_blocks']}",
            f"{a['retained_bytes']:.1f}", f"{a['retained_blocks']:.2f}"]


def _rps_range(s: Mapping[str, Any]) -> str:
    if s.get("rps_min") is None:
        return ""
    return f"{s['rps_min']:.0f}–{s['rps_max']:.0f}"


def _ratio_range(s: Mapping[str, Any]) -> str:
    if s.get("vs_starlette") is None:
        return "–"
    return f"{s['vs_starlette']:.2f}× ({s['vs_starlette_min']:.2f}–{s['vs_starlette_max']:.2f})"


def _print_profile(console: Any, prof: Mapping[str, Any]) -> None:
    from rich.table import Table

    for key, app in prof.get("apps", {}).items():
        if app.get("status") != "ok":
            console.print(f"profile of {key}: {app.get('status')} {app.get('reason', '')}")
            continue
        t = Table(title=f"Profile: {app['label']} — {app['us_per_call']:.1f} µs/call, "
                        f"{app['profiled_us_per_call']:.1f} under cProfile, "
                        f"{app['function_calls_per_req']:.0f} function calls per request",
                  title_justify="left")
        scale = app["us_per_call"] / app["profiled_us_per_call"] \
            if app["profiled_us_per_call"] else 1.0
        for col in ("function (own time, cProfile)", "µs/req", "est. µs", "cum µs/req",
                    "calls/req"):
            t.add_column(col, justify="left" if col.startswith("function") else "right")
        for f in app["functions"]:
            t.add_row(f["function"], f"{f['own_us']:.2f}", f"{f['own_us'] * scale:.2f}",
                      f"{f['cum_us']:.2f}", f"{f['calls_per_req']:.1f}")
        console.print(t)
        t = Table(title=f"Profile: {app['label']} — own time per module", title_justify="left")
        for col in ("module", "µs/req", "est. µs", "share"):
            t.add_column(col, justify="left" if col == "module" else "right")
        for m in app["modules"]:
            t.add_row(m["module"], f"{m['own_us']:.2f}", f"{m['own_us'] * scale:.2f}",
                      f"{m['share']:.0%}")
        console.print(t)
    ladder = prof.get("ladder")
    if ladder:
        t = Table(title="Default stack built up layer by layer over the dispatcher "
                        "(alternating rounds; marginal = median per-round difference)",
                  title_justify="left")
        for col in ("+ layer", "µs/req", "marginal µs"):
            t.add_column(col, justify="left" if col == "+ layer" else "right")
        for r in ladder:
            if r.get("status") != "ok":
                t.add_row(r["layer"], r.get("status", ""), r.get("reason") or "")
                continue
            m = r.get("marginal_us")
            t.add_row(r["layer"], f"{r['us_per_call']:.2f}", "" if m is None else f"{m:+.2f}")
        console.print(t)


def to_json(meta: Mapping[str, Any], results: Mapping[str, CaseResult],
            targets: Sequence[Mapping[str, Any]], http: Mapping[str, Any] | None,
            allocations: Sequence[Mapping[str, Any]] | None = None,
            profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "meta": dict(meta),
        "groups": {name: {"title": g.title, "baseline": g.baseline}
                   for name, g in GROUPS.items()},
        "cases": [r.to_json() for r in results.values()],
        "http": dict(http) if http else None,
        "allocations": list(allocations) if allocations is not None else None,
        "profile": dict(profile) if profile else None,
        "targets": list(targets),
    }


def write_json(doc: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def write_plot(results: Mapping[str, CaseResult], path: str | Path) -> None:
    """Horizontal bars of overhead (µs, log scale) per case, one panel per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[CaseResult]]] = []
    for gname, g in GROUPS.items():
        rows = [r for r in results.values() if r.group == gname and r.ok
                and r.overhead_us is not None and r.overhead_us > 0
                and r.key not in (g.baseline, "ref.asgi", "ref.starlette")]
        if rows:
            panels.append((g.title, rows))
    if not panels:
        return
    heights = [max(2.0, 0.28 * len(rows) + 1.0) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    colors = {"ours": "#1f77b4", "peer": "#ff7f0e", "raw": "#2ca02c", "reference": "#7f7f7f"}
    for ax, (title, rows) in zip(axes[:, 0], panels, strict=True):
        labels = [r.label for r in rows]
        vals = [r.overhead_us or 0.0 for r in rows]
        lo = [max(0.0, v - (r.overhead_q1_us or v)) for v, r in zip(vals, rows, strict=True)]
        hi = [max(0.0, (r.overhead_q3_us or v) - v) for v, r in zip(vals, rows, strict=True)]
        ys = range(len(rows))
        ax.barh(list(ys), vals, xerr=[lo, hi], color=[colors.get(r.kind, "#999") for r in rows])
        ax.set_yticks(list(ys), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("µs per request over the group baseline (log scale; raw codecs: µs)")
        ax.set_title(title, fontsize=9, loc="left")
        for y, v in zip(ys, vals, strict=True):
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(doc: Mapping[str, Any]) -> str:
    """The run as Markdown tables (what docs/performance.md shows)."""

    def f(x: float | None, signed: bool = False) -> str:
        return _us(x, signed)

    lines: list[str] = []
    for gname, g in doc["groups"].items():
        rows = [c for c in doc["cases"] if c["group"] == gname]
        if not rows:
            continue
        lines += [f"**{g['title']}** (baseline: `{g['baseline']}`)", "",
                  "| case | µs/req | IQR | +µs vs baseline | Δµs vs no-op | ×Starlette | ×ASGI |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in rows:
            label = c["label"].replace("|", "/")
            if c["status"] != "ok":
                lines.append(f"| {label} | {c['status']} | | {c['reason']} | | | |")
                continue
            iqr = _iqr(c["q1_us"], c["q3_us"])
            lines.append(
                f"| {label} | {f(c['median_us'])} | {iqr} | {f(c['overhead_us'], True)} | "
                f"{f(c['delta_us'], True) if c['compare_to'] else ''} | "
                f"{_ratio(c['vs_starlette'])} | {_ratio(c['vs_asgi'])} |")
        lines.append("")
    http = doc.get("http")
    if http:
        lines += [f"**HTTP mode** ({http['server']}; {http['loader']}, {http['connections']} "
                  f"connections, {http['rounds']} alternating rounds of {http['round_seconds']} s;"
                  " req/s and latencies are medians over the rounds, ratios are medians of "
                  "per-round ratios with their range)", "",
                  "| server | req/s | range | p50 ms | p99 ms | ×bare | ×Starlette JSON |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s in http["servers"]:
            if s.get("rps"):
                lines.append(f"| {s['label']} | {s['rps']:.0f} | {_rps_range(s)} | "
                             f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                             f"{_ratio(s.get('vs_bare'))} | {_ratio_range(s)} |")
            else:
                lines.append(f"| {s['label']} | not available | | | | | "
                             f"{s.get('reason', '')} |")
        lines.append("")
    allocs = doc.get("allocations")
    if allocs:
        lines += ["**Allocations per call** (tracemalloc, steady state; medians)", "",
                  "| " + " | ".join(ALLOC_COLUMNS) + " |", "|---|---:|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(_alloc_cells(a)) + " |" for a in allocs]
        lines.append("")
    if doc.get("profile"):
        lines += profile_markdown(doc["profile"])
    for title, rows in (("**Targets: the protocol at a bare route's speed**",
                         [t for t in doc["targets"] if t.get("headline")]),
                        ("**Other targets**", [t for t in doc["targets"]
                                               if not t.get("headline")])):
        if not rows:
            continue
        lines += [title, "", "| target | goal | measured | verdict | margin | detail |",
                  "|---|---|---|---|---|---|"]
        for t in rows:
            lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {t['verdict']} | "
                         f"{t.get('margin', '')} | {t['detail']} |")
        lines.append("")
    return "\n".join(lines)


def profile_markdown(prof: Mapping[str, Any], top: int = 15) -> list[str]:
    """The profile section as Markdown lines (functions, modules, the layer ladder)."""
    lines: list[str] = []
    for app in prof.get("apps", {}).values():
        if app.get("status") != "ok":
            continue
        scale = app["us_per_call"] / app["profiled_us_per_call"] \
            if app["profiled_us_per_call"] else 1.0
        lines += [f"**Profile: {app['label']}** — {app['us_per_call']:.1f} µs/call "
                  f"({app['profiled_us_per_call']:.1f} under cProfile), "
                  f"{app['function_calls_per_req']:.0f} function calls per request", "",
                  "| function (own time) | µs/req (cProfile) | est. µs | calls/req |",
                  "|---|---:|---:|---:|"]
        for f in app["functions"][:top]:
            lines.append(f"| `{f['function']}` | {f['own_us']:.2f} | "
                         f"{f['own_us'] * scale:.2f} | {f['calls_per_req']:.1f} |")
        lines += ["", "| module | est. µs | share |", "|---|---:|---:|"]
        for m in app["modules"][:top]:
            lines.append(f"| `{m['module']}` | {m['own_us'] * scale:.2f} | {m['share']:.0%} |")
        lines.append("")
    ladder = prof.get("ladder")
    if ladder:
        lines += ["**Default stack built up layer by layer over the dispatcher**", "",
                  "| + layer | µs/req | marginal µs |", "|---|---:|---:|"]
        for r in ladder:
            if r.get("status") == "ok":
                m = r.get("marginal_us")
                lines.append(f"| {r['layer']} | {r['us_per_call']:.2f} | "
                             f"{'' if m is None else f'{m:+.2f}'} |")
        lines.append("")
    return lines
