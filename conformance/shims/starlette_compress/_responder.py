"""starlette-compress internals: not part of our API."""

from __future__ import annotations

from typing import Any

from shim_common import NotApplicable


class CompressionResponder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotApplicable("starlette-compress's CompressionResponder")
