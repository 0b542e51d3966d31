"""The release artefacts as a newcomer gets them: `python -m build` makes an sdist
and a wheel; the wheel installs WITHOUT extras into a fresh venv, the library
works, and every feature whose extra is missing says which extra to install -
before doing any work. The demo starts on the base install (uvicorn's h11 parser on
asyncio; metrics and WebSocket off, saying which extra turns them on) and with the
`server` extra (uvloop, httptools, WebSocket). The sdist installs and passes the same
smoke test.

Built once per session (module-scoped fixture; about a minute, more on a busy
machine: hence the module's longer timeout)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import aduib_asgi

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__",
                               ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")

SMOKE = r"""
import asyncio, json
import aduib_asgi
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.middleware import ErrorMappingMiddleware, TenantScopeMiddleware
from aduib_asgi.stack import Layer, build_stack

registry = MethodRegistry()
registry.register("rpc.v2/Smoke/echo", lambda data: data)
app = build_stack(RpcDispatcher(registry), [Layer.of(ErrorMappingMiddleware),
                                            Layer.of(TenantScopeMiddleware, default="t")])
body = json.dumps({"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Smoke/echo",
                   "data": {"ok": True}}).encode()
scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
         "scheme": "http", "path": "/aduib_rpc/v2/rpc", "raw_path": b"/aduib_rpc/v2/rpc",
         "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
         "server": ("127.0.0.1", 80), "headers": [(b"content-type", b"application/json")]}
sent = []

async def main():
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)

asyncio.run(main())
status = sent[0]["status"]
reply = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
assert status == 200 and reply["result"] == {"ok": True}, (status, reply)
print("smoke ok", aduib_asgi.__version__)
"""

EXTRAS = r"""
import asyncio
from aduib_asgi.extras import MissingExtra

def expect(extra, call):
    try:
        call()
    except MissingExtra as exc:
        assert f"pip install 'aduib-asgi[{extra}]'" in str(exc), str(exc)
        print("ok", extra, "|", exc)
    else:
        raise AssertionError(f"no MissingExtra for [{extra}]")

from aduib_asgi.auth import jwt_verifier
expect("jwt", lambda: jwt_verifier("k" * 32))
from aduib_asgi.storage.redis import RedisIdempotencyStore
expect("redis", lambda: RedisIdempotencyStore("redis://127.0.0.1:1/0"))
from aduib_asgi.middleware import RateLimitMiddleware, RateLimitPolicy
expect("redis", lambda: RateLimitMiddleware(lambda s, r, se: None, storage="redis://127.0.0.1:1",
                                            policies=[RateLimitPolicy("p", "1/second")]))
from aduib_asgi.tasks.store import store_from_uri
expect("redis", lambda: store_from_uri("redis://127.0.0.1:1/0"))
from aduib_asgi.observability.metrics import prometheus_meter_provider
expect("prometheus", prometheus_meter_provider)
"""


@dataclass
class Env:
    venv: Path
    dist: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "aduib-asgi")

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              cwd=self.venv.parent,  # not the repo: import the installed copy
                              env={**os.environ, "PYTHONPATH": ""})

    def pip(self, *args: str) -> None:
        # this environment's pip installs into the fresh venv (no ensurepip: faster)
        proc = self.run(sys.executable, "-m", "pip", "--python", self.python, "install", "-q",
                        *args, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("release")
    src, dist = base / "src", base / "dist"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "License classifiers are deprecated" not in built.stderr
    assert "project.license` as a TOML table is deprecated" not in built.stdout + built.stderr
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")],
                   check=True, timeout=120)
    env = Env(base / "venv", dist)
    env.pip(str(_one(dist, "*.whl")))  # no extras: only the base dependencies
    yield env


def _one(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_build_makes_an_sdist_and_a_wheel_of_this_version(fresh: Env) -> None:
    version = aduib_asgi.__version__
    assert _one(fresh.dist, "*.whl").name == f"aduib_asgi-{version}-py3-none-any.whl"
    assert _one(fresh.dist, "*.tar.gz").name == f"aduib_asgi-{version}.tar.gz"


def test_the_wheel_without_extras_works_and_names_missing_extras(fresh: Env) -> None:
    smoke = fresh.run(fresh.python, "-c", SMOKE)
    assert smoke.returncode == 0, smoke.stderr
    assert smoke.stdout.strip() == f"smoke ok {aduib_asgi.__version__}"
    for module in ("uvloop", "httptools", "websockets", "wsproto", "redis", "jwt", "rich",
                   "asgiref", "opentelemetry.instrumentation.asgi"):
        probe = fresh.run(fresh.python, "-c", f"import {module}")
        assert probe.returncode != 0, f"{module} is installed without extras"
    extras = fresh.run(fresh.python, "-c", EXTRAS)
    assert extras.returncode == 0, extras.stdout + extras.stderr
    # the CLI: a message naming the extra, exit status 2, before any work
    out = fresh.venv.parent / "bench.json"
    started = time.monotonic()
    bench = fresh.run(fresh.cli, "bench", "--quick", "--json", str(out))
    assert bench.returncode == 2 and "pip install 'aduib-asgi[bench]'" in bench.stderr
    assert time.monotonic() - started < 30 and not out.exists()


def _serve_echo(fresh: Env) -> list[str]:
    """Start the installed demo, call Echo/echo, stop it with SIGTERM; its output."""
    proc = subprocess.Popen([fresh.cli, "demo", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=fresh.venv.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("listening on http://"):
                break
        assert seen and seen[-1].startswith("listening on http://"), "".join(seen)
        url = seen[-1].split()[-1]
        req = urllib.request.Request(
            f"{url}/aduib_rpc/v2/rpc", headers={"Content-Type": "application/json"},
            data=b'{"aduib_rpc": "2.0", "id": "1", "method": "rpc.v2/Echo/echo", "data": {"n": 7}}')
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and b'"result":{"n":7}' in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, rest
    return seen + rest.splitlines(keepends=True)


def test_the_demo_starts_on_the_base_install_and_names_what_is_off(fresh: Env) -> None:
    seen = _serve_echo(fresh)
    assert not any("Traceback" in s for s in seen), "".join(seen)
    assert any("metrics off" in s and "aduib-asgi[prometheus]" in s for s in seen), seen
    assert any("WebSocket off" in s and "aduib-asgi[server]" in s for s in seen), seen


def test_the_demo_starts_with_the_server_extra_and_metrics_off(fresh: Env) -> None:
    fresh.pip(f"{_one(fresh.dist, '*.whl')}[server]")
    seen = _serve_echo(fresh)
    assert any("metrics off" in s and "aduib-asgi[prometheus]" in s for s in seen), seen
    assert not any("WebSocket off" in s for s in seen), seen


def test_the_sdist_installs_and_passes_the_smoke_test(fresh: Env) -> None:
    fresh.pip("--force-reinstall", "--no-deps", str(_one(fresh.dist, "*.tar.gz")))
    smoke = fresh.run(fresh.python, "-c", SMOKE)
    assert smoke.returncode == 0, smoke.stderr
    version = fresh.run(fresh.python, "-c",
                        "import importlib.metadata as m; print(m.version('aduib-asgi'))")
    assert version.stdout.strip() == aduib_asgi.__version__
