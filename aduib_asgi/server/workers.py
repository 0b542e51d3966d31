"""uvicorn worker processes (``--workers N``) with the same protocol classes as one process.

uvicorn starts each worker by pickling its ``Config``; protocol classes built at run
time (:func:`~aduib_asgi.server.protocols.http_protocol`) cannot be pickled, so a
:class:`WorkerConfig` carries a :class:`ProtocolPlan` and builds the classes in the
worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aduib_asgi.extras import require

require("uvicorn", "server", "aduib_asgi.server.workers")
import uvicorn

from aduib_asgi.server.protocols import http_protocol, ws_protocol

__all__ = ["ProtocolPlan", "WorkerConfig"]


@dataclass(frozen=True)
class ProtocolPlan:
    """The HTTP and WebSocket protocol classes to build (picklable).

    ``http`` and ``ws`` name uvicorn's implementations; ``mixins`` go in front of
    both; ``http_settings`` and ``ws_settings`` are the classes' attributes.
    """

    http: str = "auto"
    ws: str = "auto"
    mixins: tuple[type, ...] = ()
    http_settings: dict[str, Any] = field(default_factory=dict)
    ws_settings: dict[str, Any] = field(default_factory=dict)

    def build(self) -> tuple[type, type | None]:
        """``(http_class, ws_class)``; the WebSocket class is None without one."""
        return (http_protocol(self.http, *self.mixins, **self.http_settings),
                ws_protocol(self.ws, *self.mixins, **self.ws_settings))


class WorkerConfig(uvicorn.Config):
    """``uvicorn.Config`` whose protocol classes are built from ``plan`` where it
    loads (in each worker process); its ``http`` and ``ws`` arguments are ignored."""

    def __init__(self, app: Any, *, plan: ProtocolPlan, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.plan = plan

    def load(self) -> None:
        if self.loaded:
            return
        http_cls, ws_cls = self.plan.build()
        self.http, self.ws = http_cls, ws_cls or "none"
        super().load()
