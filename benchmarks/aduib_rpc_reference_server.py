"""Serve aduib-rpc 2.0.1's own REST app with an Echo handler (HTTP bench comparison row).

Run with the interop virtualenv's python (it has aduib-rpc 2.0.1 and its server deps):

    .venv-interop/bin/python benchmarks/aduib_rpc_reference_server.py --port 8011

``rpc.v2/Echo/echo`` returns ``data`` unchanged, like the demo's Echo/echo. Prints
``listening on http://HOST:PORT`` once it accepts connections. Loopback only.
Runs on the asyncio loop with uvicorn's h11 parser, like ``aduib_asgi.bench.serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from typing import Any

import uvicorn
from aduib_rpc.server.protocols.rest.fastapi_app import AduibRpcRestFastAPIApp
from aduib_rpc.server.request_handlers.default_request_handler import DefaultRequestHandler
from aduib_rpc.server.rpc_execution.context import RequestContext
from aduib_rpc.server.rpc_execution.request_executor import RequestExecutor

METHOD = "rpc.v2/Echo/echo"


class EchoExecutor(RequestExecutor):
    """``rpc.v2/Echo/echo``: returns ``data`` unchanged (aduib-rpc's most direct path)."""

    def execute(self, context: RequestContext) -> Any:
        return context.request.data


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--http", default="h11")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    handler = DefaultRequestHandler(request_executors={METHOD: EchoExecutor()})
    app = AduibRpcRestFastAPIApp(request_handler=handler).build()
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto is TCP
    # (with proto 0 every keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            http=args.http)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"listening on http://{args.host}:{port}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
