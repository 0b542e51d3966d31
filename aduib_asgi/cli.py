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
    p = sub.add_parser("demo", help="run the demo server (docs/demo.md)",
                       description="The demo server: every middleware in front of the demo "
                                   "services. Methods, credentials and flags: docs/demo.md; "
                                   "the configuration file: docs/configuration.md.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--env", choices=("dev", "prod"), default="prod",
                   help="dev shows debug info (stack traces) in errors (default: prod)")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="use Redis for rate-limit, idempotency and task stores")
    p.add_argument("--config", default=None, metavar="PATH",
                   help="configuration file (TOML, or JSON by the .json extension), "
                        "reloaded when it changes and on SIGHUP (docs/configuration.md)")
    p.add_argument("--config-poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often the --config file is checked for a change "
                        "(0: only on SIGHUP; default 1)")
    p.add_argument("--stream-framing", choices=("message", "envelope"), default="message")
    p.add_argument("--heartbeat", type=float, default=15.0, metavar="SECONDS")
    p.add_argument("--log-level", default="warning",
                   help="level of the server's logs unless the configuration has [log]")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log line rendering unless the configuration has [log] format")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one log line per call unless the configuration has [log] access "
                        "(default: on)")
    p.add_argument("--shutdown-grace", type=float, default=8.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may finish")
    p.add_argument("--drain-delay", type=float, default=0.0, metavar="SECONDS",
                   help="on SIGTERM, answer readyz 503 and keep serving this long before "
                        "draining (lets a load balancer stop routing here first)")
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

    from aduib_asgi.config import ConfigError
    from aduib_asgi.demo import DemoConfig, build_demo_app
    from aduib_asgi.observability.logs import RefusedHandshakeFilter
    from aduib_asgi.qos import ShutdownController

    handler = _log_handler(args.log_format == "json", args.access_log)
    shutdown = ShutdownController(grace_s=args.shutdown_grace)
    try:
        app = build_demo_app(DemoConfig(env=args.env, redis_url=args.redis,
                                        stream_framing=args.stream_framing,
                                        heartbeat=args.heartbeat,
                                        shutdown=shutdown, config_path=args.config,
                                        config_poll_s=args.config_poll,
                                        log_level=args.log_level,
                                        log_json=args.log_format == "json",
                                        on_config=[handler.apply]))
    except ConfigError as exc:
        print(f"aduib-asgi demo: invalid configuration: {exc}", file=sys.stderr)
        return 2
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
    # fastest stack uvicorn has; no uvicorn access log (the stack writes its own); no
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
    server.aduib_readiness = getattr(app, "monitor", None)  # the probes' ReadinessMonitor
    server.aduib_drain_delay = args.drain_delay

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
        aduib_readiness: Any = None
        aduib_drain_delay: float = 0.0
        _delaying = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Readiness answers 503 at once; with a drain delay the server keeps
            # serving that long (a load balancer stops routing here) before it
            # drains. A second signal during the delay proceeds at once.
            readiness = self.aduib_readiness
            if readiness is not None:
                readiness.stop_ready()
            if self.aduib_drain_delay > 0 and not self._delaying:
                self._delaying = True
                asyncio.get_running_loop().call_later(self.aduib_drain_delay,
                                                      self._drain_and_exit, sig, frame)
                return
            self._drain_and_exit(sig, frame)

        def _drain_and_exit(self, sig: int, frame: Any) -> None:
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


class _LogHandler(logging.StreamHandler):
    """The demo's log handler: request ids on every record; text or JSON by config."""

    def __init__(self, json_format: bool, access: bool = True) -> None:
        from aduib_asgi.observability.logs import RequestContextFilter

        super().__init__(sys.stderr)
        self.default_json = json_format
        self.default_access = access
        self.addFilter(RequestContextFilter())
        self.apply(None)

    def apply(self, config: Any) -> None:
        from aduib_asgi.observability.logs import TEXT_FORMAT, JsonFormatter

        log = getattr(config, "log", None)
        json_format = log.format == "json" if log is not None else self.default_json
        access = log.access if log is not None else self.default_access
        self.setFormatter(JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT))
        # the access log is written at INFO whatever the level of the other logs
        logging.getLogger("aduib_asgi.access").setLevel(
            logging.INFO if access else logging.WARNING)


def _log_handler(json_format: bool, access: bool = True) -> _LogHandler:
    """Install the demo's handler on the root logger (every library's records get ids)."""
    handler = _LogHandler(json_format, access)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    return handler


def _Server(config: object) -> Any:
    return _make_server_class()(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aduib-asgi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _bench_parser(sub)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
