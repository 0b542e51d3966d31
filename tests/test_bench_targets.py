"""The bench's yardstick rows, target verdicts with margins, allocation and profile reports.

No timing assertions: targets are evaluated on made-up results, and the real runs
use the quickest settings and only check shapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from aduib_asgi.bench.cases import all_cases
from aduib_asgi.bench.runner import CaseResult
from aduib_asgi.bench.targets import GOALS, evaluate_targets, missed_targets, paired_ratios
from aduib_asgi.cli import check_status, main


def _res(cid: str, *, kind: str = "ours", layer: str | None = None, variant: str = "",
         triggered: bool | None = None, codec: str | None = None,
         samples: list[float] | None = None, overhead: float | None = None,
         delta: float | None = None, extra: dict[str, Any] | None = None) -> CaseResult:
    group, key = cid.split("/", 1)
    xs = samples or [10.0]
    r = CaseResult(id=cid, group=group, key=key, label=key, kind=kind, layer=layer,
                   variant=variant, triggered=triggered, codec=codec, note="",
                   samples_us=xs, extra=dict(extra or {}))
    r.median_us = sorted(xs)[len(xs) // 2]
    r.overhead_us, r.delta_us = overhead, delta
    return r


def _results(*, disp: list[float], echo: list[float], stack_over: float,
             layer_delta: float, zstd_layer: float, zstd_raw: float, trace: float,
             otel: float) -> dict[str, CaseResult]:
    rs = [
        _res("rpc/ref.starlette-json", kind="reference", samples=echo),
        _res("rpc/ref.starlette", kind="reference", samples=[5.0] * len(echo)),
        _res("rpc/rpc.dispatcher", kind="reference", samples=disp),
        _res("rpc/rpc.stack", layer="stack", overhead=stack_over,
             extra={"present": ["errors"], "missing": []}),
        _res("layers/errors.0", layer="errors", variant="not triggered", triggered=False,
             delta=layer_delta, extra={"alone": False}),
        _res("layers/errors.0.alone", layer="errors", variant="not triggered",
             triggered=False, delta=layer_delta + 2, extra={"alone": True}),
        _res("layers/trace.2.alone", layer="trace", variant="OTel SDK, traceparent",
             triggered=True, overhead=trace, extra={"alone": True}),
        _res("layers/peer.otel", kind="peer", overhead=otel),
        _res("compress-20k/raw.zstd", kind="raw", codec="zstd", samples=[zstd_raw]),
        _res("compress-20k/compression.3.alone", layer="compression", codec="zstd",
             triggered=True, overhead=zstd_layer, extra={"alone": True}),
    ]
    return {r.id: r for r in rs}


def _http(demo: list[float], bare: list[float]) -> dict[str, Any]:
    from aduib_asgi.bench.http import summarise

    def rounds(xs: list[float]) -> list[dict[str, Any]]:
        return [{"round": i, "rps": x, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
                for i, x in enumerate(xs)]

    servers = summarise([
        {"name": "demo", "label": "demo", "settings": "uvloop, httptools",
         "rounds": rounds(demo)},
        {"name": "bare-starlette", "label": "bare", "settings": "uvloop, httptools",
         "rounds": rounds(bare)},
    ])
    return {"servers": servers}


def _by_target(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in rows}


def test_every_headline_target_is_met_with_its_margin() -> None:
    results = _results(disp=[9.0, 9.5, 9.0], echo=[10.0, 10.0, 10.0], stack_over=8.0,
                       layer_delta=0.3, zstd_layer=8.0, zstd_raw=6.0, trace=10.0, otel=100.0)
    rows = evaluate_targets(results, ["errors"], _http([900.0, 950.0, 870.0],
                                                        [1000.0, 1000.0, 1000.0]))
    head = [r for r in rows if r["headline"]]
    by = _by_target(head)
    assert len(head) == 6 and {r["verdict"] for r in head} == {"met"}
    d = by["dispatcher alone vs bare Starlette JSON echo (in-process)"]  # median of 0.9, .95, .9
    assert d["measured"] == "0.90\u00d7" and d["margin"] == "met by 0.10\u00d7"
    assert "range 0.90\u20130.95\u00d7 over 3 rounds" in d["detail"]
    assert by["default stack over the dispatcher"]["margin"] == "met by 2.00 µs"
    # µs goals depend on the machine's speed: the detail scales to the speed they were set at
    assert "took 5.0 µs in this run (10.8 µs when the goals were set), so at that speed " \
        "this is \u2248 +17.28 µs" in by["default stack over the dispatcher"]["detail"]
    assert by["errors: not-triggered path"]["margin"] == "met by 0.20 µs"
    h = by["demo as shipped vs bare Starlette JSON echo (HTTP req/s, same server settings)"]
    assert h["measured"] == "0.90\u00d7" and h["margin"] == "met by 0.05\u00d7"
    assert "range 0.87\u20130.95\u00d7 over 3 rounds" in h["detail"]
    z = by["compression zstd, 20 KB response"]
    assert z["measured"] == "raw +2.0 µs" and z["margin"] == "met by 1.00 µs"
    t = by["trace layer with an OTel SDK vs opentelemetry-instrumentation-asgi"]
    assert t["measured"] == "10%" and t["margin"] == "met by 5.00 points"
    assert check_status(rows) == 0
    assert set(GOALS) == {"dispatcher_vs_starlette_json", "stack_over_dispatcher_us",
                          "not_triggered_us", "http_demo_vs_bare", "compress_20k_over_raw_us",
                          "trace_vs_otel"}


def test_every_headline_target_is_missed_with_its_margin_and_check_fails(
        capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(disp=[16.0, 17.0, 18.0], echo=[10.0, 10.0, 10.0], stack_over=20.1,
                       layer_delta=2.32, zstd_layer=12.5, zstd_raw=6.3, trace=35.0,
                       otel=140.0)
    rows = evaluate_targets(results, ["errors"], _http([420.0, 330.0, 480.0],
                                                        [1000.0, 1000.0, 1000.0]))
    by = _by_target([r for r in rows if r["headline"]])
    assert {r["verdict"] for r in by.values()} == {"missed"}
    assert by["dispatcher alone vs bare Starlette JSON echo (in-process)"]["margin"] == \
        "missed by 0.70\u00d7"
    assert by["default stack over the dispatcher"]["margin"] == "missed by 10.10 µs"
    assert by["errors: not-triggered path"]["margin"] == "missed by 1.82 µs"
    assert by["compression zstd, 20 KB response"]["margin"] == "missed by 3.20 µs"
    http = by["demo as shipped vs bare Starlette JSON echo (HTTP req/s, same server settings)"]
    assert http["measured"] == "0.42\u00d7" and http["margin"] == "missed by 0.43\u00d7"
    assert by["trace layer with an OTel SDK vs opentelemetry-instrumentation-asgi"][
        "margin"] == "missed by 10.00 points"
    assert len(missed_targets(rows)) == 6
    assert check_status(rows) == 1
    err = capsys.readouterr().err
    assert "6 of" in err and "missed default stack over the dispatcher" in err


def test_targets_without_measurements_are_not_applicable_not_failures() -> None:
    rows = evaluate_targets({}, ["errors", "trace"], None)
    head = [r for r in rows if r["headline"]]
    assert head and {r["verdict"] for r in head} == {"n/a"}
    assert all(r["margin"] == "" for r in rows)
    # without the layers group, one row says so instead of one per layer
    assert sum("not-triggered" in r["target"] for r in head) == 1
    assert check_status(rows) == 0


def test_paired_ratios_pair_rounds_and_skip_zero_yardsticks() -> None:
    assert paired_ratios([2.0, 3.0, 4.0], [1.0, 0.0, 2.0]) == [2.0, 2.0]


def test_http_summary_medians_ranges_and_voided_servers() -> None:
    from aduib_asgi.bench.http import summarise

    def rounds(xs: list[float], errors: int = 0) -> list[dict[str, Any]]:
        return [{"round": i, "rps": x, "p50_ms": 1.0, "p99_ms": 3.0, "errors": errors}
                for i, x in enumerate(xs)]

    out = {s["name"]: s for s in summarise([
        {"name": "demo", "label": "d", "settings": "uvloop, httptools",
         "rounds": rounds([500.0, 400.0, 600.0])},
        {"name": "bare-starlette", "label": "b", "settings": "uvloop, httptools",
         "rounds": rounds([1000.0, 1000.0, 800.0])},
        {"name": "bare-shipped", "label": "a", "settings": "uvloop, httptools",
         "rounds": rounds([2000.0, 2000.0, 2000.0])},
        {"name": "demo-h11", "label": "h", "settings": "asyncio, h11",
         "rounds": rounds([100.0], errors=2)},
    ])}
    demo = out["demo"]
    assert demo["rps"] == 500.0 and (demo["rps_min"], demo["rps_max"]) == (400.0, 600.0)
    # per-round ratios 0.5, 0.4, 0.75 → median 0.5
    assert demo["vs_starlette"] == 0.5
    assert (demo["vs_starlette_min"], demo["vs_starlette_max"]) == (0.4, 0.75)
    assert demo["vs_bare"] == 0.25
    assert out["bare-starlette"]["vs_starlette"] == 1.0
    assert "rps" not in out["demo-h11"] and "2 non-2xx" in out["demo-h11"]["reason"]
    assert "cpu_us" not in demo and "cpu_vs_starlette" not in demo  # not measured


def test_http_summary_cpu_per_request_ratios_pair_rounds() -> None:
    from aduib_asgi.bench.http import summarise
    from aduib_asgi.bench.targets import _http_bare

    def rounds(rps: list[float], cpu: list[float]) -> list[dict[str, Any]]:
        return [{"round": i, "rps": x, "p50_ms": 1.0, "p99_ms": 3.0, "errors": 0,
                 "cpu_us": c} for i, (x, c) in enumerate(zip(rps, cpu, strict=True))]

    servers = summarise([
        {"name": "demo", "label": "d", "settings": "uvloop, httptools",
         "rounds": rounds([500.0, 400.0, 600.0], [250.0, 300.0, 200.0])},
        {"name": "bare-starlette", "label": "b", "settings": "uvloop, httptools",
         "rounds": rounds([1000.0, 1000.0, 800.0], [150.0, 150.0, 160.0])},
    ])
    demo = {s["name"]: s for s in servers}["demo"]
    # per round: 150/250, 150/300, 160/200 → 0.6, 0.5, 0.8
    assert demo["cpu_us"] == 250.0 and demo["cpu_vs_starlette"] == 0.6
    assert (demo["cpu_vs_starlette_min"], demo["cpu_vs_starlette_max"]) == (0.5, 0.8)
    (row,) = _http_bare({"servers": servers})
    expected = "server CPU per request: demo 250 µs vs bare 150 µs, 0.60× (0.50–0.80)"  # noqa: RUF001
    assert expected in row["detail"]


def test_cpu_ns_reads_this_process() -> None:
    import os

    from aduib_asgi.bench.http import cpu_ns

    first = cpu_ns(os.getpid())
    sum(i * i for i in range(200_000))
    second = cpu_ns(os.getpid())
    assert first is not None and second is not None and second > first


def test_rpc_group_has_the_json_echo_yardstick_and_groups_filter() -> None:
    cases = all_cases(groups=["rpc"])
    ids = [c.id for c in cases]
    assert {c.group for c in cases} == {"rpc"}
    assert {"rpc/ref.starlette-json", "rpc/rpc.dispatcher", "rpc/rpc.stack"} <= set(ids)
    echo = next(c for c in cases if c.id == "rpc/ref.starlette-json")
    assert echo.kind == "reference"  # timed in every block, next to the dispatcher
    with pytest.raises(ValueError, match="unknown bench group"):
        all_cases(groups=["nope"])
    assert main(["bench", "--groups", "nope", "--no-http", "--no-progress"]) == 2
    assert main(["bench", "--groups", "rpc", "--http-servers", "nope", "--no-progress"]) == 2


@pytest.mark.anyio
async def test_json_echo_yardstick_answers_the_dispatchers_shape() -> None:
    from aduib_asgi.bench.apps import ECHO_BODY, RPC_PATH, starlette_json_app
    from aduib_asgi.bench.cases import _dispatcher

    async with httpx.AsyncClient(transport=httpx.ASGITransport(starlette_json_app()),
                                 base_url="http://127.0.0.1") as c:
        echo = (await c.post(RPC_PATH, content=ECHO_BODY,
                             headers={"content-type": "application/json"})).json()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(_dispatcher()),
                                 base_url="http://127.0.0.1") as c:
        disp = (await c.post(RPC_PATH, content=ECHO_BODY,
                             headers={"content-type": "application/json"})).json()
    assert echo == {k: disp[k] for k in ("aduib_rpc", "id", "status", "result")}


def test_http_yardstick_servers_run_with_the_demos_settings() -> None:
    from aduib_asgi.bench.http import planned_servers, shipped_settings

    servers = {s.name: s for s in planned_servers()}
    bare = servers["bare-starlette"]
    assert bare.settings == servers["demo"].settings == shipped_settings()
    assert bare.argv[-5:] == ["starlette-json", "--loop", "auto", "--http", "auto"]
    assert servers["bare-starlette-guarded"].argv[-1] == "--guarded"
    from aduib_asgi.bench.http import SERVER_NAMES

    assert set(servers) <= set(SERVER_NAMES)
    # a selection keeps the yardstick pair
    assert [s.name for s in planned_servers(("dispatcher",))] == [
        "demo", "bare-starlette", "dispatcher"]


def test_served_json_echo_route_has_the_demos_server_settings(tmp_path: Path) -> None:
    """A real uvicorn process: the echo answers, with no `server` header (as the demo),
    and the process stops on SIGTERM."""
    from aduib_asgi.bench.apps import ECHO_BODY, RPC_PATH
    from aduib_asgi.bench.http import _builtin, _Server

    for extra in ([], ["--guarded"]):
        s = _Server("t", "t", [sys.executable, "-m", "aduib_asgi.bench.serve", "--app",
                               "starlette-json", "--loop", "auto", "--http", "auto", *extra],
                    "auto")
        s.start()
        try:
            s.wait()
            assert s.error is None and s.url
            r = httpx.post(s.url + RPC_PATH, content=ECHO_BODY, timeout=30,
                           headers={"content-type": "application/json"})
            assert r.status_code == 200 and r.json()["result"] == {"msg": "hello", "n": 1}
            assert "server" not in r.headers
            # the built-in load generator: keep-alive rounds, every answer counted
            load = _builtin(s.url, 0.3, 2)
            assert load["rps"] > 0 and load["errors"] == 0
            assert 0 < load["p50_ms"] <= load["p99_ms"]
        finally:
            s.stop()
        assert s.proc is not None and s.proc.poll() is not None


def test_allocation_report_shape() -> None:
    from aduib_asgi.bench.alloc import AllocSettings, run_allocations

    rows = {r.key: r for r in run_allocations(AllocSettings.quickest(),
                                              ["ref.asgi", "rpc.dispatcher"], top=3)}
    assert set(rows) == {"ref.asgi", "rpc.dispatcher"}
    for r in rows.values():
        d = r.to_json()
        assert d["status"] == "ok" and d["calls"] == 3
        assert {"peak_bytes", "live_bytes", "live_blocks", "retained_bytes",
                "retained_blocks", "top_sites"} <= set(d)
        assert d["peak_bytes"] > 0 and d["live_blocks"] > 0
        assert all({"site", "bytes", "blocks"} == set(x) for x in d["top_sites"])
    # the dispatcher keeps more alive per call than the bare app (the driver's floor)
    assert rows["rpc.dispatcher"].live_blocks > rows["ref.asgi"].live_blocks  # type: ignore[operator]


def test_quickest_rpc_run_with_allocations_profile_and_check(tmp_path: Path) -> None:
    """`bench --groups rpc --profile --check`: JSON has every section; the exit status
    follows the targets, whatever this machine measures."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "aduib_asgi.cli", "bench", "--quickest", "--groups", "rpc",
         "--no-http", "--profile", "--check", "--json", str(out)],
        capture_output=True, text=True, timeout=110)
    doc = json.loads(out.read_text())
    assert doc["meta"]["groups"] == ["rpc"] and len(doc["meta"]["loadavg_start"]) == 3
    assert {c["id"] for c in doc["cases"]} >= {"rpc/ref.starlette-json", "rpc/rpc.dispatcher"}
    assert [a["key"] for a in doc["allocations"]] == [
        "ref.asgi", "ref.starlette-json", "rpc.dispatcher", "rpc.stack", "rpc.demo"]
    prof = doc["profile"]
    assert set(prof["apps"]) == {"ref.starlette-json", "rpc.dispatcher", "rpc.stack", "rpc.demo"}
    disp = prof["apps"]["rpc.dispatcher"]
    assert disp["status"] == "ok" and disp["functions"] and disp["modules"]
    assert {"function", "own_us", "cum_us", "calls_per_req"} == set(disp["functions"][0])
    assert prof["ladder"][0]["layer"] == "dispatcher"
    assert all("marginal_us" in r for r in prof["ladder"][1:])
    missed = [r for r in doc["targets"] if r["verdict"] == "missed"]
    assert proc.returncode == (1 if missed else 0), proc.stderr
    for word in ("Allocations per call", "Profile: dispatcher alone",
                 "Targets: the protocol at a bare route's speed", "margin"):
        assert word in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 120


def test_markdown_has_the_new_sections() -> None:
    from aduib_asgi.bench.report import to_markdown

    doc = {"groups": {}, "cases": [], "http": {
        "server": "uvicorn", "loader": "wrk", "connections": 32, "rounds": 3,
        "round_seconds": 5.0, "servers": _http([900.0, 950.0, 870.0],
                                               [1000.0, 1000.0, 1000.0])["servers"]},
        "allocations": [{"key": "rpc.dispatcher", "label": "dispatcher alone", "status": "ok",
                         "peak_bytes": 10, "live_bytes": 8, "live_blocks": 2,
                         "retained_bytes": 0.0, "retained_blocks": 0.0}],
        "targets": evaluate_targets({}, [], None)}
    md = to_markdown(doc)
    assert "| demo | 900 | 870\u2013950 |" in md and "0.90\u00d7 (0.87\u20130.95)" in md
    assert "| dispatcher alone | 10 | 8 | 2 | 0.0 | 0.00 |" in md
    assert "**Targets: the protocol at a bare route's speed**" in md


def test_http_target_flags_a_saturated_load_generator() -> None:
    from aduib_asgi.bench.http import summarise

    def rounds(xs: list[float]) -> list[dict[str, Any]]:
        return [{"round": i, "rps": x, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
                for i, x in enumerate(xs)]

    def row(floor: float) -> dict[str, Any]:
        servers = summarise([
            {"name": n, "label": n, "settings": "uvloop, httptools", "rounds": rounds(xs)}
            for n, xs in (("demo", [900.0] * 3), ("bare-starlette", [1000.0] * 3),
                          ("bare-shipped", [floor] * 3))])
        return next(r for r in evaluate_targets({}, [], {"servers": servers})
                if r["target"].startswith("demo as shipped vs bare"))

    assert "BOTTLENECK" in row(1100.0)["detail"]
    assert "BOTTLENECK" not in row(3000.0)["detail"]


@pytest.mark.anyio
async def test_protocol_runner_drives_uvicorns_protocol_and_the_demos_guarded_class() -> None:
    """The server group's runner: keep-alive requests through the protocol object,
    each answered in full; a wrong status is reported, never timed."""
    from aduib_asgi.bench.apps import bare_asgi_app, starlette_json_app
    from aduib_asgi.bench.server import ProtocolRunner, protocol_class
    from aduib_asgi.server.protocols import HeadGuard

    assert issubclass(protocol_class(True), HeadGuard)
    assert not issubclass(protocol_class(False), HeadGuard)
    for app, guarded in ((starlette_json_app(), False), (starlette_json_app(), True),
                         (bare_asgi_app(), False)):
        runner = ProtocolRunner(app, guarded=guarded)
        try:
            assert await runner.check() is None
            assert await runner.round(5) > 0
            assert runner.transport is not None and runner.transport.buf == b""
        finally:
            runner.close()

    async def teapot(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 418,
                        "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    runner = ProtocolRunner(teapot)
    assert await runner.check() == "answered HTTP 418, expected 200"
    runner.close()


def test_server_group_cases_and_the_in_process_proxy_in_the_http_target() -> None:
    cases = {c.key: c for c in all_cases(groups=["server"])}
    assert {"server.json", "server.json-guarded", "server.dispatcher", "server.demo"} <= set(
        cases)
    assert cases["server.json"].kind == "reference"  # the group's baseline
    r = {
        "server/server.json": _res("server/server.json", kind="reference", samples=[50.0]),
        "server/server.demo": _res("server/server.demo", samples=[100.0], overhead=50.0),
        "server/server.json-guarded": _res("server/server.json-guarded", samples=[55.0],
                                           overhead=5.0),
    }
    row = next(x for x in evaluate_targets(r, [], None) if x["target"].startswith("demo as"))
    assert row["verdict"] == "n/a"
    assert "bare route 50.0 µs vs demo 100.0 µs per request, 0.50\u00d7 the rate" in row["detail"]
    assert "the demo's protocol class alone +5.0 µs" in row["detail"]
