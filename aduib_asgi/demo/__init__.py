"""The demo server (DEMO.md): the full stack in front of the demo services."""

from aduib_asgi.demo.server import DemoConfig, build_demo_app

__all__ = ["DemoConfig", "build_demo_app"]
