"""Shared by the shims: the marker for a peer test that reaches into the peer's internals."""

from __future__ import annotations


class NotApplicable(Exception):
    """The test calls an internal API of the peer library, which we do not have."""
