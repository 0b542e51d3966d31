"""Composable pure-ASGI middlewares implementing the Aduib RPC Protocol v2 over HTTP."""

from aduib_asgi._version import __version__

__all__ = ["__version__"]
