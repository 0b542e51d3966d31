"""Shared fixtures: anyio on asyncio, httpx clients over the real ASGI stack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from aduib_asgi.demo import DemoConfig, build_demo_app

RPC = "/aduib_rpc/v2/rpc"

pytest_plugins = ["tests.fixtures_redis"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(app: ASGIApp, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client that drives ``app`` in-process (raising nothing on 5xx)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)


@pytest.fixture
async def demo_client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_demo_app(DemoConfig(env="dev"))) as client:
        yield client


@pytest.fixture
async def prod_client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(build_demo_app(DemoConfig(env="prod"))) as client:
        yield client


def envelope(method: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"aduib_rpc": "2.0", "method": method}
    if data is not None:
        body["data"] = data
    body.update(extra)
    return body


@pytest.fixture
def make_envelope() -> Callable[..., dict[str, Any]]:
    return envelope
