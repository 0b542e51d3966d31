"""uvicorn protocol classes with our mixins, chosen by the names uvicorn uses.

uvicorn only uses a protocol subclass when it is given as a class
(``uvicorn.Config(http=<class>, ws=<class>)``): a name such as ``"httptools"``
loads uvicorn's own class. :func:`protocol_classes` maps the names to
uvicorn's classes and composes mixins in front of them, so concerns that each
extend a protocol (the ``tls`` extension, connection limits, ...) stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["HTTP_NAMES", "WS_NAMES", "protocol_classes"]

HTTP_NAMES = ("auto", "h11", "httptools")
WS_NAMES = ("auto", "none", "websockets", "websockets-sansio", "wsproto")


def _compose(base: type, mixins: Sequence[type], attrs: dict[str, Any]) -> type:
    if not mixins:
        return base
    name = "".join(m.__name__.removesuffix("Mixin") for m in mixins) + base.__name__
    return type(name, (*mixins, base), {"__module__": __name__, **attrs})


def protocol_classes(
    http: str | type = "auto",
    ws: str | type | None = "auto",
    *,
    http_mixins: Sequence[type] = (),
    ws_mixins: Sequence[type] = (),
    attrs: dict[str, Any] | None = None,
) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol] | None]:
    """uvicorn's HTTP and WebSocket protocol classes with ``*_mixins`` in front.

    ``http``/``ws`` are uvicorn's names (``auto`` picks what uvicorn's ``auto``
    picks) or classes; ``attrs`` become class attributes of the composed classes.
    Pass the results as ``uvicorn.Config(http=..., ws=...)``.
    """
    from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    http_base = import_from_string(HTTP_PROTOCOLS[http]) if isinstance(http, str) else http
    ws_base: type | None
    if isinstance(ws, str):
        target = WS_PROTOCOLS[ws]
        ws_base = import_from_string(target) if target is not None else None
    else:
        ws_base = ws
    extra = attrs or {}
    http_cls = _compose(http_base, http_mixins, extra)
    ws_cls = _compose(ws_base, ws_mixins, extra) if ws_base is not None else None
    return http_cls, ws_cls
