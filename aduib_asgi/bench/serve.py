"""Serve one bench app under uvicorn on loopback (a child process of HTTP mode).

``python -m aduib_asgi.bench.serve --app demo|dispatcher|bare [--port 0]``
prints ``listening on http://HOST:PORT`` once it accepts connections. The event
loop and HTTP parser are pinned (``--loop``/``--http``, default asyncio + h11, the
aduib-rpc reference's settings); ``auto`` picks uvloop/httptools when installed.
(HTTP mode serves the demo through ``aduib-asgi demo`` itself, as shipped.)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

__all__ = ["build_app", "main"]


def build_app(name: str) -> Any:
    """The ASGI app called ``name``: ``bare``, ``dispatcher`` or ``demo``."""
    if name == "bare":
        from aduib_asgi.bench.apps import bare_asgi_app

        return bare_asgi_app()
    if name == "dispatcher":
        from aduib_asgi.bench.cases import _dispatcher

        return _dispatcher()
    if name == "demo":
        from aduib_asgi.demo import DemoConfig, build_demo_app

        return build_demo_app(DemoConfig(env="prod"))
    raise SystemExit(f"unknown app {name!r}")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m aduib_asgi.bench.serve")
    p.add_argument("--app", required=True, choices=("bare", "dispatcher", "demo"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--loop", default="asyncio", choices=("auto", "asyncio", "uvloop"))
    p.add_argument("--http", default="h11", choices=("auto", "h11", "httptools"))
    args = p.parse_args(argv)
    app = build_app(args.app)
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto is TCP
    # (with proto 0 every keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            loop=args.loop, http=args.http)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"listening on http://{args.host}:{port}", flush=True)
        await task

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
