"""``GET /aduib_rpc/debug/stats``: the demo's process and registry sizes, for soaks and drills.

Off unless the demo's environment has ``ADUIB_DEMO_STATS=1`` (never on by
default, in either ``--env``). The answer is a JSON object of counts only —
no request data, no identities, no configuration::

    {"rss_bytes": 61440000, "open_fds": 23, "asyncio_tasks": 9, "threads": 3,
     "inflight_calls": 0, "tasks_running": 0, "task_subscribers": 0,
     "task_queue": 0, "task_records": 0, "idempotency_records": 0,
     "echo_streams_open": 0, "echo_streams_closed": 12}

``echo_streams_open``/``echo_streams_closed`` count ``rpc.v2/Echo/stream``
generators that started and whose cleanup (``finally``) ran: a drill reads
them to see that a dropped stream's handler really stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aduib_asgi.dispatcher import RpcDispatcher
    from aduib_asgi.tasks import TaskManager

__all__ = ["STATS_ENV", "DemoStats", "install_stats_route", "stats_enabled"]

#: Environment variable that turns the route on (value ``1``).
STATS_ENV = "ADUIB_DEMO_STATS"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def stats_enabled() -> bool:
    """True when the process environment asks for the stats route."""
    return os.environ.get(STATS_ENV) == "1"


@dataclass
class DemoStats:
    """Counters the demo services update."""

    echo_streams_open: int = 0
    echo_streams_closed: int = 0


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux
        return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _size(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def _idempotency_records(app: Any) -> int | None:
    """Size of the first idempotency layer's store found down the ``.app`` chain."""
    seen = 0
    while app is not None and seen < 64:
        if type(app).__name__ == "IdempotencyMiddleware":
            return _size(getattr(app, "store", None))
        app = getattr(app, "app", None)
        seen += 1
    return None


def install_stats_route(dispatcher: RpcDispatcher, stats: DemoStats,
                        tasks: TaskManager, top: Callable[[], Any]) -> None:
    """Serve ``GET /aduib_rpc/debug/stats`` on ``dispatcher`` (see the module docstring).

    ``top()`` returns the outermost app of the stack (its layers are searched
    for the idempotency store).
    """
    inflight = dispatcher.streaming.inflight

    def snapshot() -> dict[str, Any]:
        return {
            "rss_bytes": _rss_bytes(),
            "open_fds": _open_fds(),
            "asyncio_tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "inflight_calls": len(inflight),
            "tasks_running": len(getattr(tasks, "_running", ())),
            "task_subscribers": sum(len(s) for s in getattr(tasks, "_subs", {}).values()),
            "task_queue": len(getattr(tasks, "_ready", ())) + len(getattr(tasks, "_delayed", ())),
            "task_records": _size(getattr(tasks.store, "_tasks", None)),
            "idempotency_records": _idempotency_records(top()),
            "echo_streams_open": stats.echo_streams_open,
            "echo_streams_closed": stats.echo_streams_closed,
        }

    async def endpoint(scope: Any, receive: Any, send: Any, ctx: Any) -> None:
        body = json.dumps(snapshot()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    dispatcher.add_route("/debug/stats", endpoint, methods=("GET",))
