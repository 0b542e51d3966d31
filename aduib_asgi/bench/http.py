"""HTTP mode: real servers on 127.0.0.1 under a bounded load, in alternating rounds.

Servers, all on uvicorn with the demo's server settings (``aduib_asgi.bench.serve``):
the demo as shipped (``aduib-asgi demo``: uvloop and httptools when installed), and
on the same loop and parser a bare Starlette JSON echo route (the yardstick), the
same route behind the demo's HTTP protocol classes (head bounds, connection
budget), the dispatcher alone and a bare pure-ASGI app (the floor); then, on
asyncio + h11 (what aduib-rpc's virtualenv has, so like for like with it), the
same demo command, a bare app and the dispatcher alone; and aduib-rpc 2.0.1's own
REST app with the same Echo handler when the interop virtualenv ``.venv-interop``
exists (``benchmarks/aduib_rpc_reference_server.py``). The load generator is
``wrk`` when installed, else a built-in asyncio HTTP/1.1 keep-alive client (on
uvloop when installed). Each round loads every server once for a fixed time,
forward then backward; ratios are taken per round (paired) and summarised by
their median and range. Each round also reads the server process's CPU time
(Linux: ``/proc/PID/task/*/schedstat``): CPU µs per request and the per-round
ratio of the bare route's CPU per request to the server's - the req/s ratio a
CPU-bound server would reach, far steadier than req/s when other processes
share the cores. Only loopback traffic, bounded in time (and, for the
built-in client, count).
"""

from __future__ import annotations

import asyncio
import functools
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aduib_asgi.bench.apps import ECHO_BODY, RPC_PATH

__all__ = ["HttpSettings", "find_reference", "planned_servers", "run_http", "summarise"]

STARTUP_TIMEOUT_S = 40.0
MAX_REQUESTS_PER_ROUND = 2_000_000


@dataclass(frozen=True)
class HttpSettings:
    """How long to load each server. At least three rounds: ratios come with a spread."""

    rounds: int = 6
    round_seconds: float = 5.0
    connections: int = 32
    #: Only these servers (names; None: all). The yardstick pair is always kept.
    servers: tuple[str, ...] | None = None

    @classmethod
    def quick(cls) -> HttpSettings:
        return cls(rounds=3, round_seconds=2.0, connections=32)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_reference() -> tuple[Path, Path] | None:
    """(python, script) of the aduib-rpc reference server, when the interop venv exists."""
    root = Path(os.environ.get("ADUIB_BENCH_ROOT", _repo_root()))
    py = root / ".venv-interop" / "bin" / "python"
    script = root / "benchmarks" / "aduib_rpc_reference_server.py"
    if py.exists() and script.exists():
        return py, script
    return None


#: uvicorn's settings for the aduib-rpc reference (its virtualenv has neither uvloop
#: nor httptools) and for our like-for-like rows.
REFERENCE_SETTINGS = "asyncio, h11"


def shipped_settings() -> str:
    """What uvicorn's ``auto`` picks here (``aduib-asgi demo``'s default)."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop}, {parser}"


class _Server:
    def __init__(self, name: str, label: str, argv: list[str], settings: str) -> None:
        self.name, self.argv, self.settings = name, argv, settings
        self.label = f"{label} ({settings})"
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None
        self.error: str | None = None
        self.tail: list[str] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     cwd=_repo_root(), env=dict(os.environ, PYTHONUNBUFFERED="1"))
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.tail = [*self.tail[-20:], line]
                m = re.search(r"listening on (http://\S+)", line)
                if m and self.url is None:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        self._ready = ready

    def wait(self) -> None:
        if not self._ready.wait(STARTUP_TIMEOUT_S) or self.url is None:
            self.error = "did not start: " + "".join(self.tail[-5:]).strip()[-300:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def cpu_ns(pid: int) -> int | None:
    """CPU time (ns) the threads of process ``pid`` have run, or None without /proc."""
    total, found = 0, False
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        found = True
    return total if found else None


# -- load generators -----------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, seconds: float, connections: int, lua: Path) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    assert wrk is not None
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(lua), url + RPC_PATH],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"could not read wrk output: {out[-300:]}")
    lat = {p: float(v) * _UNITS[u] for p, v, u in
           re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    return {"rps": float(rps.group(1)), "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "errors": errors}


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection of the built-in load generator: send the request,
    read one response (head, then ``content-length`` bytes), repeat until the deadline.

    A bare :class:`asyncio.Protocol` (no streams, one ``find`` per response), so the
    loader spends as little CPU per request as Python allows: on a small machine it
    shares the cores with the server it measures.
    """

    def __init__(self, request: bytes, deadline: float, state: dict[str, Any],
                 latencies: list[float], done: asyncio.Future[None]) -> None:
        self.request, self.deadline, self.state = request, deadline, state
        self.latencies, self.done = latencies, done
        self.buf = b""
        self.need = -1
        self.ok = True
        self.t0 = 0.0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        now = time.perf_counter()
        if now >= self.deadline or self.state["budget"] <= 0:
            self.transport.close()
            return
        self.state["budget"] -= 1
        self.t0 = now
        self.need = -1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            at = head.find(b"content-length:")
            if at < 0:
                self.state["errors"] += 1
                self.buf = b""
                self.transport.close()
                return
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15:eol if eol >= 0 else len(head)])
            self.ok = head.startswith(b"http/1.1 200")
            self.need = end + 4 + length
        if len(buf) < self.need:
            self.buf = buf
            return
        self.buf = buf[self.need:]
        self.latencies.append((time.perf_counter() - self.t0) * 1000)
        if not self.ok:
            self.state["errors"] += 1
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _builtin_async(url: str, seconds: float, connections: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (f"POST {RPC_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "Content-Type: application/json\r\n"
               f"Content-Length: {len(ECHO_BODY)}\r\n\r\n").encode() + ECHO_BODY
    latencies: list[float] = []
    state: dict[str, Any] = {"budget": MAX_REQUESTS_PER_ROUND, "errors": 0}
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    dones = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(
            functools.partial(_LoadConnection, request, deadline, state, latencies, done),
            host, int(port))
        dones.append(done)
    await asyncio.wait_for(asyncio.gather(*dones), seconds + 30)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    if not latencies:
        raise RuntimeError("no response within the round")
    pct: Callable[[float], float] = lambda q: latencies[min(len(latencies) - 1,  # noqa: E731
                                                             int(q * len(latencies)))]
    return {"rps": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": state["errors"]}


def _builtin(url: str, seconds: float, connections: int) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_builtin_async(url, seconds, connections))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_builtin_async(url, seconds, connections))


# -- the run ---------------------------------------------------------------------------------

#: Always loaded when HTTP mode runs: the headline ratio needs both.
YARDSTICK_PAIR = ("demo", "bare-starlette")
#: Every server HTTP mode knows (``--http-servers`` picks among them).
SERVER_NAMES = ("demo", "bare-starlette", "bare-starlette-guarded", "dispatcher-shipped",
                "bare-shipped", "demo-h11", "bare", "dispatcher", "aduib-rpc")


def planned_servers(only: tuple[str, ...] | None = None) -> list[_Server]:
    """The servers of a run, in load order (not started); ``only``: these names
    (plus :data:`YARDSTICK_PAIR`)."""
    py = sys.executable
    shipped, ref = shipped_settings(), REFERENCE_SETTINGS
    # no access log: the reference server runs with uvicorn's access_log=False too
    demo = [py, "-m", "aduib_asgi.cli", "demo", "--host", "127.0.0.1", "--port", "0",
            "--env", "prod", "--no-access-log"]
    serve = [py, "-m", "aduib_asgi.bench.serve", "--app"]
    auto = ["--loop", "auto", "--http", "auto"]
    servers = [
        _Server("demo", "demo as shipped: aduib-asgi demo", demo, shipped),
        _Server("bare-starlette", "bare Starlette JSON echo route",
                [*serve, "starlette-json", *auto], shipped),
        _Server("bare-starlette-guarded", "bare Starlette JSON echo, demo's protocol classes",
                [*serve, "starlette-json", *auto, "--guarded"], shipped),
        _Server("dispatcher-shipped", "dispatcher alone", [*serve, "dispatcher", *auto],
                shipped),
        _Server("bare-shipped", "bare pure-ASGI app", [*serve, "bare", *auto], shipped),
        _Server("demo-h11", "demo: aduib-asgi demo", [*demo, "--loop", "asyncio",
                                                      "--http", "h11"], ref),
        _Server("bare", "bare pure-ASGI app", [*serve, "bare"], ref),
        _Server("dispatcher", "dispatcher alone", [*serve, "dispatcher"], ref),
    ]
    found = find_reference()
    if found is not None:
        servers.append(_Server("aduib-rpc", "aduib-rpc 2.0.1 REST app (reference)",
                               [str(found[0]), str(found[1])], ref))
    if only:
        keep = set(only) | set(YARDSTICK_PAIR)
        servers = [s for s in servers if s.name in keep]
    return servers


def run_http(settings: HttpSettings, progress: Callable[[int], None] | None = None
             ) -> dict[str, Any]:
    """Start the servers, load them in alternating rounds, stop them; the summary dict."""
    servers = planned_servers(settings.servers)
    skipped: list[dict[str, Any]] = []
    if not any(s.name == "aduib-rpc" for s in servers) and (
            not settings.servers or "aduib-rpc" in settings.servers):
        skipped.append({"name": "aduib-rpc", "label": "aduib-rpc 2.0.1 REST app (reference)",
                        "reason": ".venv-interop not found"})
    loader = "wrk" if shutil.which("wrk") else "built-in asyncio client"
    lua_dir = tempfile.mkdtemp(prefix="aduib-bench-")
    lua = Path(lua_dir) / "post.lua"
    body = ECHO_BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
    lua.write_text('wrk.method = "POST"\n'
                   f'wrk.body = "{body}"\n'
                   'wrk.headers["Content-Type"] = "application/json"\n')
    samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait()
        live = [s for s in servers if s.error is None]
        for s in live:  # warm-up, and a check that the echo answers 200
            _load(loader, s.url or "", min(1.0, settings.round_seconds), 4, lua)
        for r in range(settings.rounds):
            order = live if r % 2 == 0 else list(reversed(live))
            for s in order:
                pid = s.proc.pid if s.proc is not None else 0
                before = cpu_ns(pid)
                row = {"round": r, **_load(loader, s.url or "", settings.round_seconds,
                                           settings.connections, lua)}
                after = cpu_ns(pid)
                if before is not None and after is not None and row.get("rps"):
                    row["cpu_us"] = (after - before) / 1e3 / (row["rps"]
                                                              * settings.round_seconds)
                samples[s.name].append(row)
                if progress is not None:
                    progress(1)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(lua_dir, ignore_errors=True)
    out: list[dict[str, Any]] = []
    for s in servers:
        entry: dict[str, Any] = {"name": s.name, "label": s.label, "settings": s.settings}
        if s.error is not None:
            entry["reason"] = s.error
        entry["rounds"] = samples[s.name]
        out.append(entry)
    out.extend(skipped)
    return {"loader": loader, "connections": settings.connections, "rounds": settings.rounds,
            "round_seconds": settings.round_seconds,
            "server": "uvicorn with the demo's server settings; event loop and HTTP parser "
                      "per row", "servers": summarise(out)}


def _ratios(rows: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[float]:
    by_round = {x.get("round", i): x["rps"] for i, x in enumerate(base) if x.get("rps")}
    return [x["rps"] / by_round[x.get("round", i)] for i, x in enumerate(rows)
            if x.get("rps") and by_round.get(x.get("round", i))]


def _cpu_ratios(rows: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[float]:
    """Per round: the base's CPU per request / this server's (higher: cheaper)."""
    by_round = {x.get("round", i): x["cpu_us"] for i, x in enumerate(base) if x.get("cpu_us")}
    return [by_round[x.get("round", i)] / x["cpu_us"] for i, x in enumerate(rows)
            if x.get("cpu_us") and by_round.get(x.get("round", i))]


def summarise(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per server and per-round ratios: ``vs_bare`` (the bare pure-ASGI app on
    the same loop and parser) and ``vs_starlette`` (the bare Starlette JSON echo route,
    same settings), each with ``*_min``/``*_max`` over the rounds; with the server's
    CPU time measured, ``cpu_us`` (median CPU µs per request) and ``cpu_vs_starlette``
    (per-round ratios of the bare route's CPU per request to this server's).

    A server with a non-2xx answer in any round gets a ``reason`` and no figures.
    """
    out = []
    for entry in servers:
        e = dict(entry)
        rows = e.get("rounds") or []
        if "reason" in e:
            pass
        elif not rows:
            e["reason"] = "no samples"
        elif any(x["errors"] for x in rows):
            e["reason"] = f"{sum(x['errors'] for x in rows)} non-2xx responses"
        else:
            e["rps"] = statistics.median(x["rps"] for x in rows)
            e["rps_min"] = min(x["rps"] for x in rows)
            e["rps_max"] = max(x["rps"] for x in rows)
            e["p50_ms"] = statistics.median(x["p50_ms"] for x in rows)
            e["p99_ms"] = statistics.median(x["p99_ms"] for x in rows)
            cpu = [x["cpu_us"] for x in rows if x.get("cpu_us")]
            if cpu:
                e["cpu_us"] = statistics.median(cpu)
        out.append(e)
    by_name = {e["name"]: e for e in out if e.get("rps")}
    bare = {"uvloop, httptools": "bare-shipped", REFERENCE_SETTINGS: "bare"}
    bare[shipped_settings()] = "bare-shipped"
    for e in out:
        if not e.get("rps"):
            continue
        for key, base_name in (("vs_bare", bare.get(e.get("settings", ""))),
                               ("vs_starlette", "bare-starlette")):
            base = by_name.get(base_name or "")
            if base is None or base.get("settings") != e.get("settings"):
                continue
            ratios = _ratios(e["rounds"], base["rounds"])
            if ratios:
                e[key] = statistics.median(ratios)
                e[f"{key}_min"], e[f"{key}_max"] = min(ratios), max(ratios)
            if key == "vs_starlette":
                ratios = _cpu_ratios(e["rounds"], base["rounds"])
                if ratios:
                    e["cpu_vs_starlette"] = statistics.median(ratios)
                    e["cpu_vs_starlette_min"] = min(ratios)
                    e["cpu_vs_starlette_max"] = max(ratios)
    return out


def _load(loader: str, url: str, seconds: float, connections: int, lua: Path) -> dict[str, Any]:
    if loader == "wrk":
        return _wrk(url, seconds, connections, lua)
    return _builtin(url, seconds, connections)
