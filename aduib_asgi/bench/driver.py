"""The in-process driver: ASGI requests in a tight loop, timed in short rounds.

A :class:`Runner` answers ``await runner.round(n)`` with the time of ``n`` calls.
:class:`AsgiRunner` drives an ASGI app with a prebuilt scope (shallow-copied per
request, as a server would build a fresh one) and a minimal receive/send pair;
:class:`CallRunner` times a plain function (raw codec calls).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Scope

__all__ = ["AsgiRunner", "CallRunner", "Exchange", "Request", "Runner", "calibrate"]

_DISCONNECT: Message = {"type": "http.disconnect"}


@dataclass
class Request:
    """One HTTP request to replay: method, path, headers (str pairs) and body."""

    method: str = "POST"
    path: str = "/aduib_rpc/v2/rpc"
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    query: bytes = b""

    def scope(self) -> Scope:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        if self.body and not any(k == b"content-length" for k, _ in raw):
            raw.append((b"content-length", str(len(self.body)).encode()))
        raw.insert(0, (b"host", b"127.0.0.1:8000"))
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode("latin-1"),
            "query_string": self.query,
            "root_path": "",
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }


class Exchange:
    """receive/send for one request: the body once, then disconnect after the response."""

    __slots__ = ("_waiter", "body_msg", "done", "headers", "nbytes", "sent_body", "status")

    def __init__(self, body_msg: Message) -> None:
        self.body_msg = body_msg
        self.sent_body = False
        self.done = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.nbytes = 0
        self._waiter: asyncio.Event | None = None

    async def receive(self) -> Message:
        if not self.sent_body:
            self.sent_body = True
            return self.body_msg
        if not self.done:  # like a server: block until the response is over
            self._waiter = asyncio.Event()
            await self._waiter.wait()
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        t = message["type"]
        if t == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif t == "http.response.body":
            self.nbytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
                if self._waiter is not None:
                    self._waiter.set()

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Runner(ABC):
    """Something timed in rounds. ``check`` runs once and returns an error text or None."""

    async def check(self) -> str | None:
        return None

    @abstractmethod
    async def round(self, n: int) -> float:
        """Run ``n`` operations; return seconds elapsed."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the runner holds (default: nothing)."""


Check = Callable[[Exchange], str | None]


@dataclass
class AsgiRunner(Runner):
    """Drive ``app`` with ``request`` ``n`` times per round.

    ``expect_status`` and ``check`` validate one response before timing, so a
    case that silently answers an error is reported, never timed as a success.
    ``prime`` requests run once first (for example to store an idempotent reply).
    """

    app: ASGIApp
    request: Request
    expect_status: int = 200
    extra_check: Check | None = None
    prime: int = 0
    scope_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._tmpl = self.request.scope()
        self._tmpl.update(self.scope_extra)
        self._body_msg: Message = {
            "type": "http.request", "body": self.request.body, "more_body": False,
        }

    async def _one(self) -> Exchange:
        ex = Exchange(self._body_msg)
        await self.app(dict(self._tmpl), ex.receive, ex.send)
        return ex

    async def check(self) -> str | None:
        for _ in range(self.prime):
            await self._one()
        try:
            ex = await self._one()
        except Exception as exc:  # a case that crashes is reported, not timed
            return f"raised {type(exc).__name__}: {exc}"
        if ex.status != self.expect_status:
            return f"answered HTTP {ex.status}, expected {self.expect_status}"
        if not ex.done:
            return "response never completed"
        if self.extra_check is not None:
            return self.extra_check(ex)
        return None

    async def round(self, n: int) -> float:
        app = self.app
        tmpl = self._tmpl
        body_msg = self._body_msg
        t0 = time.perf_counter()
        for _ in range(n):
            ex = Exchange(body_msg)
            await app(dict(tmpl), ex.receive, ex.send)
        return time.perf_counter() - t0


@dataclass
class CallRunner(Runner):
    """Time a plain synchronous call (``func()``), e.g. one raw codec compression."""

    func: Callable[[], Any]

    async def round(self, n: int) -> float:
        func = self.func
        t0 = time.perf_counter()
        for _ in range(n):
            func()
        return time.perf_counter() - t0


async def calibrate(runner: Runner, round_seconds: float, *, max_n: int = 200_000) -> int:
    """How many operations make one round of about ``round_seconds``."""
    n = 1
    while True:
        elapsed = await runner.round(n)
        if elapsed >= round_seconds / 8 or n >= max_n:
            per_op = elapsed / n
            break
        n *= 4
    if per_op <= 0:
        return max_n
    return max(1, min(max_n, int(round_seconds / per_op)))
