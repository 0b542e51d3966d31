"""Serve one bench app under uvicorn on loopback (a child process of HTTP mode).

``python -m aduib_asgi.bench.serve --app starlette-json|dispatcher|bare|demo [--port 0]``
prints ``listening on http://HOST:PORT`` once it accepts connections. The event
loop and HTTP parser are pinned (``--loop``/``--http``, default asyncio + h11, the
aduib-rpc reference's settings); ``auto`` picks uvloop/httptools when installed.
Every other server setting is the demo's (``aduib-asgi demo``): a TCP socket with
``TCP_NODELAY``, the same listen backlog, 5 s keep-alive, no access log, no proxy
headers wrapper, no ``server`` header, lifespan on. ``--guarded`` also uses the
demo's HTTP protocol classes (head size/time bounds, connection budget), so the
server's own per-request cost can be told apart from the app's.
(HTTP mode serves the demo through ``aduib-asgi demo`` itself, as shipped.)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

__all__ = ["APPS", "build_app", "main", "server_options"]

APPS = ("bare", "starlette-json", "dispatcher", "demo")


def build_app(name: str) -> Any:
    """The ASGI app called ``name`` (one of :data:`APPS`)."""
    if name == "bare":
        from aduib_asgi.bench.apps import bare_asgi_app

        return bare_asgi_app()
    if name == "starlette-json":
        from aduib_asgi.bench.apps import starlette_json_app

        return starlette_json_app()
    if name == "dispatcher":
        from aduib_asgi.bench.cases import _dispatcher

        return _dispatcher()
    if name == "demo":
        from aduib_asgi.demo import DemoConfig, build_demo_app

        return build_demo_app(DemoConfig(env="prod"))
    raise SystemExit(f"unknown app {name!r}")


def server_options(loop: str) -> dict[str, Any]:
    """uvicorn options of ``aduib-asgi demo`` (minus TLS, logging level and shutdown)."""
    from aduib_asgi.cli import MAX_HEAD_BYTES

    return {"access_log": False, "lifespan": "on", "proxy_headers": False,
            "server_header": False, "loop": loop, "timeout_keep_alive": 5,
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


def _protocol(parser: str, guarded: bool) -> Any:
    if not guarded:
        return parser
    from aduib_asgi.cli import MAX_HEAD_BYTES, _fd_budget
    from aduib_asgi.server.protocols import http_protocol

    return http_protocol(parser, max_head_bytes=MAX_HEAD_BYTES, head_timeout_s=10.0,
                         max_connections=_fd_budget())


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from aduib_asgi.cli import LISTEN_BACKLOG

    p = argparse.ArgumentParser(prog="python -m aduib_asgi.bench.serve")
    p.add_argument("--app", required=True, choices=APPS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--loop", default="asyncio", choices=("auto", "asyncio", "uvloop"))
    p.add_argument("--http", default="h11", choices=("auto", "h11", "httptools"))
    p.add_argument("--guarded", action="store_true",
                   help="the demo's HTTP protocol classes (head bounds, connection budget)")
    args = p.parse_args(argv)
    app = build_app(args.app)
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto is TCP
    # (with proto 0 every keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", http=_protocol(args.http, args.guarded),
                            ws="none", **server_options(args.loop))
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
