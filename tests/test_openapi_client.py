"""A client generated from the demo's OpenAPI document compiles, imports and calls the demo.

openapi-python-client (PyPI) generates the package into a temporary directory;
it is byte-compiled, imported in a fresh interpreter and used against a real
demo process: a unary call, a typed error, a TaskService call and the health check.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.demo_process import running_demo

GENERATOR = Path(sys.executable).parent / "openapi-python-client"

USE_CLIENT = textwrap.dedent("""
    import sys

    from aduib_client import Client
    from aduib_client.api.health_service import health_check
    from aduib_client.api.rpc import rpc
    from aduib_client.api.task_service import task_submit
    from aduib_client.models import (
        BigIn, EchoBigRequest, EchoBigRequestMethod, EchoFailRequest, EchoFailRequestMethod,
        ErrorResponse, FailIn, HealthCheckRequest, HealthCheckResponse, TaskSubmitRequest,
        TaskSubmitResponse,
    )

    client = Client(base_url=sys.argv[1], raise_on_unexpected_status=True)
    r = rpc.sync_detailed(client=client, body=EchoBigRequest(
        method=EchoBigRequestMethod.RPC_V2ECHOBIG, data=BigIn(size=9)), x_tenant_id="t1")
    assert r.status_code == 200, r.content
    assert r.parsed is not None and r.parsed.to_dict()["result"] == {"text": "The quick"}
    r = rpc.sync_detailed(client=client, body=EchoFailRequest(
        method=EchoFailRequestMethod.RPC_V2ECHOFAIL, data=FailIn(code=4011, message="no")))
    assert r.status_code == 409 and isinstance(r.parsed, ErrorResponse), r.content
    assert r.parsed.error.code == 4011 and r.parsed.error.message == "no"
    r = task_submit.sync_detailed(client=client, body=TaskSubmitRequest(
        target_method="rpc.v2/Echo/echo", params={"a": 1}))
    assert r.status_code == 200 and isinstance(r.parsed, TaskSubmitResponse), r.content
    assert r.parsed.task_id
    r = health_check.sync_detailed(client=client, body=HealthCheckRequest())
    assert r.status_code == 200 and isinstance(r.parsed, HealthCheckResponse), r.content
    print("client ok")
""")


def test_generated_client_compiles_and_calls_the_demo(tmp_path: Path) -> None:
    doc = subprocess.run([sys.executable, "-m", "aduib_asgi.cli", "openapi"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    spec = tmp_path / "openapi.json"
    spec.write_text(doc)
    out = tmp_path / "gen"
    # ruff on PATH: the generator formats its output with it (a warning without)
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    gen = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(out / "aduib_client")],
        capture_output=True, text=True, timeout=110, env=env, cwd=tmp_path)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    package = out / "aduib_client"
    assert (package / "api" / "rpc" / "rpc.py").exists()
    assert (package / "api" / "task_service" / "task_subscribe.py").exists()
    assert compileall.compile_dir(str(package), quiet=1)
    script = tmp_path / "use_client.py"
    script.write_text(USE_CLIENT)
    with running_demo() as demo:
        run = subprocess.run([sys.executable, str(script), demo.url],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(out)})
    assert run.returncode == 0 and "client ok" in run.stdout, run.stdout + run.stderr
