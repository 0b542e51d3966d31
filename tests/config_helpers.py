"""Helpers for the runtime-configuration tests: config files and demo calls."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

RPC_PATH = "/aduib_rpc/v2/rpc"

#: OPERATIONS.md section 2's example, as the base of the demo tests.
BASE = """
[server]
env = "prod"

[versions]
supported = ["2.0", "1.0"]

[compression]
enabled = true
minimum_size = 512

[auth]
require_auth = false
anonymous_methods = []
[auth.api_keys]
"demo-key" = { principal = "svc", roles = ["service"] }
[auth.bearer_tokens]
"demo-admin-token" = { principal = "admin", roles = ["admin"] }
"demo-user-token" = { principal = "alice", roles = ["user"] }
[auth.mtls_roles]
"spiffe://example.org/svc/ops" = ["admin"]

[[ratelimit.policies]]
name = "limited"
methods = ["rpc.v2/Limited/ping"]
limit = "3/10 seconds"
per = "tenant"

[log]
level = "warning"
"""


def write_config(path: Path, text: str) -> None:
    """Replace the file atomically (as deployment tools do), with a new mtime."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def body(method: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    return {"aduib_rpc": "2.0", "id": "t-1", "method": method, "data": data, **extra}


def call(client: httpx.Client, method: str, data: Any = None,
         headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return client.post(RPC_PATH, json=body(method, data, **extra), headers=headers or {})


def config_version(client: httpx.Client) -> str:
    r = client.get("/aduib_rpc/v2/capabilities")
    assert r.status_code == 200, r.text
    version: str = r.json()["config_version"]
    return version


def wait_for_version_change(client: httpx.Client, old: str, timeout: float) -> tuple[str, float]:
    """Poll capabilities until ``config_version`` differs from ``old``; (new, seconds)."""
    start = time.monotonic()
    while True:
        new = config_version(client)
        if new != old:
            return new, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"config_version still {old} after {timeout} s")
        time.sleep(0.05)
