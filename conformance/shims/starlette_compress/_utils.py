"""starlette-compress internals: not part of our API."""

from __future__ import annotations

from typing import Any

from shim_common import NotApplicable


def classify_start_message(*args: Any, **kwargs: Any) -> Any:
    raise NotApplicable("starlette-compress's classify_start_message")


def parse_accept_encoding(*args: Any, **kwargs: Any) -> Any:
    raise NotApplicable("starlette-compress's parse_accept_encoding")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotApplicable(f"starlette-compress's {name}")
