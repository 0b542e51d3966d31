"""The ``aduib-asgi`` command: ``demo`` (the demo server) and friends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main"]


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo server (DEMO.md)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--env", choices=("dev", "prod"), default="dev")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="use Redis for rate-limit, idempotency and task stores")
    p.add_argument("--stream-framing", choices=("message", "envelope"), default="message")
    p.add_argument("--heartbeat", type=float, default=15.0, metavar="SECONDS")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--shutdown-grace", type=float, default=8.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may finish")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                   help="HTTP/1.1 parser (auto: httptools when installed)")
    p.set_defaults(func=_run_demo)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure per-layer overhead (docs/performance.md)")
    p.add_argument("--layers", default=None, metavar="A,B",
                   help="only these of our layers (comma-separated; 'stack' for the stacks)")
    p.add_argument("--cases", default=None, metavar="TEXT,...",
                   help="only cases whose id contains one of these (references always run)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 2 minutes)")
    p.add_argument("--quickest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=None, help="rounds per case")
    p.add_argument("--round-ms", type=float, default=None, help="target length of one round")
    p.add_argument("--json", dest="json_path", default=None, metavar="OUT.json")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="OUT.png")
    p.add_argument("--http", action=argparse.BooleanOptionalAction, default=True,
                   help="also run HTTP mode: uvicorn on 127.0.0.1 under wrk (default: on)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_bench)


def _openapi_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("openapi", help="print the OpenAPI 3.1 document of the demo server")
    p.add_argument("--indent", type=int, default=2, help="JSON indentation (0: compact)")
    p.add_argument("--env", choices=("dev", "prod"), default="prod")
    p.set_defaults(func=_run_openapi)


def _run_openapi(args: argparse.Namespace) -> int:
    """What the demo serves at ``GET /aduib_rpc/v2/openapi.json``, asked in-process."""
    import json

    from aduib_asgi.demo import DemoConfig, build_demo_app

    app = build_demo_app(DemoConfig(env=args.env))
    status, body = asyncio.run(_get(app, "/aduib_rpc/v2/openapi.json"))
    if status != 200:
        sys.stderr.write(body.decode("utf-8", "replace") + "\n")
        return 1
    doc = json.loads(body)
    print(json.dumps(doc, indent=args.indent or None, ensure_ascii=False))
    return 0


async def _get(app: Any, path: str) -> tuple[int, bytes]:
    """One in-process ``GET path`` on an ASGI app: (status, body)."""
    out: dict[str, Any] = {"status": 0, "body": []}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"].append(message.get("body", b""))

    await app(scope, receive, send)
    return int(out["status"]), b"".join(out["body"])


def _run_bench(args: argparse.Namespace) -> int:
    from aduib_asgi.bench import BenchOptions, run_bench

    def split(v: str | None) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    run_bench(BenchOptions(
        layers=split(args.layers), cases=split(args.cases), quick=args.quick,
        quickest=args.quickest, rounds=args.rounds, round_ms=args.round_ms,
        json_path=args.json_path, plot_path=args.plot_path, http=args.http,
        progress=args.progress,
    ))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import uvicorn

    from aduib_asgi.demo import DemoConfig, build_demo_app
    from aduib_asgi.observability.logs import RefusedHandshakeFilter
    from aduib_asgi.qos import ShutdownController

    shutdown = ShutdownController(grace_s=args.shutdown_grace)
    app = build_demo_app(DemoConfig(env=args.env, redis_url=args.redis,
                                    stream_framing=args.stream_framing,
                                    heartbeat=args.heartbeat,
                                    shutdown=shutdown))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else ~40 ms per keep-alive reply)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    # loop/http "auto": uvloop and httptools (the `uvicorn[standard]` dependency), the
    # fastest stack uvicorn has; no access log (a log record per request); no
    # ProxyHeadersMiddleware (the rate-limit layer decides which proxies to believe)
    # and no `server` header (a wrapper and a header less per request).
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                            proxy_headers=False, server_header=False,
                            loop=args.loop, http=args.http,
                            timeout_graceful_shutdown=int(args.shutdown_grace) + 2)
    # after Config (which sets up uvicorn's loggers): refused handshakes are not app errors
    logging.getLogger("uvicorn.error").addFilter(RefusedHandshakeFilter())
    server = _Server(config)
    server.aduib_shutdown = shutdown

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"listening on http://{host}:{port}", flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt), \
            asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    return 0


def _make_server_class() -> type:
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGINT/SIGTERM end it with exit status 0.

        (uvicorn re-raises the captured signal after shutdown, which would make
        the process die "by signal".)
        """

        aduib_shutdown: Any = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Graceful shutdown: stop admitting (503 5002) now; after the grace
            # period, end what is still in flight (streams with an end frame).
            shutdown = self.aduib_shutdown
            if shutdown is not None and not shutdown.draining:
                shutdown.start_draining()
                asyncio.get_running_loop().call_later(shutdown.grace_s,
                                                      shutdown.abort_in_flight)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    return Server


def _Server(config: object) -> Any:
    return _make_server_class()(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aduib-asgi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _bench_parser(sub)
    _openapi_parser(sub)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
