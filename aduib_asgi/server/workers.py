"""uvicorn worker processes (``--workers N``) with the same protocol classes as one process.

uvicorn starts each worker by pickling its ``Config``; a protocol class built at run
time (:func:`~aduib_asgi.server.protocols.http_protocol`) cannot be pickled, so a
:class:`WorkerConfig` carries the settings instead and builds the class in the worker.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from aduib_asgi.server.protocols import http_protocol

__all__ = ["WorkerConfig"]


class WorkerConfig(uvicorn.Config):
    """``uvicorn.Config`` whose HTTP protocol class is built in the worker process.

    ``http_settings`` are :func:`http_protocol`'s arguments (``parser`` plus the
    class settings); the ``http`` argument is ignored.
    """

    def __init__(self, app: Any, *, http_settings: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.http_settings = dict(http_settings)

    def load(self) -> None:
        if self.loaded:
            return
        settings = dict(self.http_settings)
        self.http = http_protocol(settings.pop("parser", "auto"), **settings)
        super().load()
