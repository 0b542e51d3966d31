"""The ``aduib-asgi`` command: ``demo`` (the demo server) and friends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from aduib_asgi.body import DEFAULT_MAX_BODY
from aduib_asgi.extras import MissingExtra, require
from aduib_asgi.observability.log_sink import NonBlockingStreamHandler

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
                   help="use Redis for rate-limit, idempotency and task stores and the "
                        "cancel fan-out: redis://, rediss://, "
                        "redis+sentinel://host:port[,...]/service[/db], "
                        "redis+cluster://host:port[,...] (docs/deployment.md)")
    p.add_argument("--config", default=None, metavar="PATH",
                   help="configuration file (TOML, or JSON by the .json extension), "
                        "reloaded when it changes and on SIGHUP (docs/configuration.md)")
    p.add_argument("--config-poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often the --config file is checked for a change "
                        "(0: only on SIGHUP; default 1)")
    p.add_argument("--tenant-budget", type=int, default=None, metavar="BYTES",
                   help="stored state one tenant may hold (default 64 MiB; docs/limits.md)")
    p.add_argument("--total-budget", type=int, default=None, metavar="BYTES",
                   help="stored state all tenants may hold (default 512 MiB)")
    p.add_argument("--replay-limit", type=int, default=None, metavar="BYTES",
                   help="largest response stored for idempotent replay (default 1 MiB)")
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
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes sharing the socket (N > 1 needs --redis)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a connection whose request head is not complete in time")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="open-connection budget (default: the fd limit minus 256)")
    p.add_argument("--ws", choices=("auto", "websockets", "websockets-sansio", "wsproto"),
                   default="auto", help="WebSocket implementation (auto: uvicorn's choice)")
    p.add_argument("--ws-max-size", type=int, default=WS_MAX_SIZE, metavar="BYTES",
                   help="largest WebSocket message, after decompression; a larger one "
                        "closes the connection with 1009 (default 16 MiB, the RPC body "
                        "limit; docs/limits.md)")
    p.add_argument("--ws-deflate", action=argparse.BooleanOptionalAction, default=False,
                   help="accept permessage-deflate on WebSockets (default: off; a small "
                        "compressed message costs the server up to --ws-max-size: "
                        "docs/serving.md)")
    tls = p.add_argument_group("TLS (OPERATIONS.md §3)")
    tls.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key (else in --tls-cert)")
    tls.add_argument("--tls-client-ca", metavar="PEM",
                     help="verify client certificates against these CAs (mTLS)")
    tls.add_argument("--tls-require-client-cert", action="store_true",
                     help="refuse connections and requests without a verified client certificate")
    tls.add_argument("--tls-min-version", choices=("1.2", "1.3"), default="1.2")
    tls.add_argument("--tls-ciphers", metavar="OPENSSL", default=None,
                     help="OpenSSL cipher string for TLS 1.2")
    tls.add_argument("--mtls-role", action="append", default=[], metavar="NAME=ROLE[,ROLE]",
                     help="roles of certificate callers whose principal or SAN is NAME "
                          "(repeatable)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="a proxy whose X-Forwarded-For/Forwarded and Client-Cert/"
                        "X-Forwarded-Client-Cert headers count (repeatable)")
    p.set_defaults(func=_run_demo)


def _tls_settings(args: argparse.Namespace) -> Any:
    """The demo's TlsSettings from its flags (None without --tls-cert)."""
    from aduib_asgi.server import TlsSettings

    if not args.tls_cert:
        if args.tls_key or args.tls_client_ca or args.tls_require_client_cert:
            raise SystemExit("aduib-asgi demo: --tls-key/--tls-client-ca need --tls-cert")
        return None
    if args.tls_require_client_cert and not args.tls_client_ca:
        raise SystemExit("aduib-asgi demo: --tls-require-client-cert needs --tls-client-ca")
    return TlsSettings(certfile=args.tls_cert, keyfile=args.tls_key,
                       client_ca=args.tls_client_ca,
                       require_client_cert=args.tls_require_client_cert,
                       min_version=args.tls_min_version, ciphers=args.tls_ciphers)


def _networks(values: Sequence[str]) -> tuple[str, ...]:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise SystemExit(f"aduib-asgi demo: --trusted-proxy wants an IP or CIDR, "
                             f"not {value!r}") from None
    return tuple(values)


def _mtls_roles(values: Sequence[str]) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for value in values:
        name, sep, roles = value.rpartition("=")
        if not sep or not name or not roles:
            raise SystemExit(f"aduib-asgi demo: --mtls-role wants NAME=ROLE[,ROLE], not {value!r}")
        table[name] = table.get(name, ()) + tuple(r for r in roles.split(",") if r)
    return table


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure per-layer overhead (docs/performance.md)")
    p.add_argument("--layers", default=None, metavar="A,B",
                   help="only these of our layers (comma-separated; 'stack' for the stacks)")
    p.add_argument("--cases", default=None, metavar="TEXT,...",
                   help="only cases whose id contains one of these (references always run)")
    p.add_argument("--groups", default=None, metavar="G,...",
                   help="only these case groups: layers, compress-20k, compress-1m, rpc")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 2 minutes)")
    p.add_argument("--quickest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=None, help="rounds per case")
    p.add_argument("--round-ms", type=float, default=None, help="target length of one round")
    p.add_argument("--json", dest="json_path", default=None, metavar="OUT.json")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="OUT.png")
    p.add_argument("--http", action=argparse.BooleanOptionalAction, default=True,
                   help="also run HTTP mode: uvicorn on 127.0.0.1 under wrk (default: on)")
    p.add_argument("--http-rounds", type=int, default=None, metavar="N",
                   help="alternating HTTP rounds (default 6; --quick 3)")
    p.add_argument("--http-seconds", type=float, default=None, metavar="S",
                   help="seconds of load per server and round (default 5; --quick 2)")
    p.add_argument("--http-servers", default=None, metavar="NAME,...",
                   help="only these HTTP servers (demo and bare-starlette always run)")
    p.add_argument("--alloc", action=argparse.BooleanOptionalAction, default=True,
                   help="allocations per call with tracemalloc, rpc group (default: on)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile per call and the stack built up layer by layer (rpc)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 when a target is missed (for CI)")
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

    try:
        doc = run_bench(BenchOptions(
            layers=split(args.layers), cases=split(args.cases), groups=split(args.groups),
            quick=args.quick, quickest=args.quickest, rounds=args.rounds,
            round_ms=args.round_ms, json_path=args.json_path, plot_path=args.plot_path,
            http=args.http, http_rounds=args.http_rounds, http_seconds=args.http_seconds,
            http_servers=split(args.http_servers), alloc=args.alloc, profile=args.profile,
            progress=args.progress,
        ))
    except ValueError as exc:  # an unknown group or server name
        print(f"aduib-asgi bench: {exc}", file=sys.stderr)
        return 2
    return check_status(doc["targets"]) if args.check else 0


def check_status(targets: list[dict[str, Any]]) -> int:
    """``bench --check``: 1 (and the missed targets on stderr) when any is missed, else 0."""
    from aduib_asgi.bench.targets import missed_targets

    missed = missed_targets(targets)
    for row in missed:
        print(f"bench --check: missed {row['target']}: {row['measured']} "
              f"(goal {row['goal']})", file=sys.stderr)
    if missed:
        print(f"bench --check: {len(missed)} of {len(targets)} targets missed", file=sys.stderr)
    return 1 if missed else 0


#: Environment variable carrying the demo settings to ``--workers`` processes.
DEMO_SETTINGS_ENV = "ADUIB_DEMO_SETTINGS"


def _demo_settings(args: argparse.Namespace, tls: Any) -> dict[str, Any]:
    """The :class:`~aduib_asgi.demo.DemoConfig` fields the command line sets (JSON-able)."""
    settings: dict[str, Any] = {"env": args.env, "redis_url": args.redis,
                                "stream_framing": args.stream_framing,
                                "heartbeat": args.heartbeat,
                                "config_path": args.config, "config_poll_s": args.config_poll,
                                "log_level": args.log_level,
                                "log_json": args.log_format == "json",
                                "mtls": tls is not None and tls.verifies_clients,
                                "mtls_required": tls is not None and tls.require_client_cert,
                                "mtls_roles": _mtls_roles(args.mtls_role),
                                "trusted_proxies": _networks(args.trusted_proxy)}
    for name in ("tenant_budget", "total_budget", "replay_limit"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def _demo_app(settings: dict[str, Any], shutdown: Any, access_log: bool) -> Any:
    """The demo app and its logging: the same in one process and in each worker.

    Raises :class:`~aduib_asgi.config.ConfigError` for an invalid configuration.
    """
    from aduib_asgi.demo import DemoConfig, build_demo_app
    from aduib_asgi.observability.logs import (
        CredentialHeaderFilter,
        RefusedHandshakeFilter,
        RequestContextFilter,
    )

    handler = _log_handler(settings["log_json"], access_log)
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addFilter(RefusedHandshakeFilter())  # refused handshakes are not app errors
    # websockets dumps handshake headers at DEBUG through uvicorn.error: no credentials
    uvicorn_error.addFilter(CredentialHeaderFilter())
    # uvicorn's own records (an exception escaping the app) are escaped as well
    uvicorn_error.addFilter(RequestContextFilter())
    return build_demo_app(DemoConfig(shutdown=shutdown, on_config=[handler.apply],
                                     access_log=access_log, **settings))


def demo_worker_app() -> Any:
    """The app of one ``--workers`` process (a uvicorn factory): settings from the parent."""
    import json
    import os

    from aduib_asgi.qos import ShutdownController
    from aduib_asgi.server.memory import return_large_allocations

    settings = json.loads(os.environ[DEMO_SETTINGS_ENV])
    return_large_allocations()  # each worker process, as one process does
    shutdown = ShutdownController(grace_s=float(settings.pop("shutdown_grace")))
    drain_delay = float(settings.pop("drain_delay"))
    app = _demo_app(settings, shutdown, settings.pop("access_log"))
    chain_exit_signals(_GracefulExit(shutdown, getattr(app, "monitor", None), drain_delay))
    return app


def chain_exit_signals(exit_plan: Any) -> bool:
    """Route SIGINT/SIGTERM through ``exit_plan`` before the server's own handler.

    In a ``--workers`` process uvicorn's supervisor builds the ``Server`` and its
    ``capture_signals`` has installed ``server.handle_exit`` (with
    ``signal.signal``) before the app factory runs: this wraps those installed
    handlers, so the worker's SIGTERM goes through the same graceful exit as one
    process - without touching ``uvicorn.Server`` (a global of every server in
    the process). The plan runs on the event loop (``call_soon_threadsafe``, safe
    from a signal handler). False (nothing done) outside a running loop or the
    main thread.
    """
    import signal
    import threading

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in (signal.SIGINT, signal.SIGTERM):
        server_exit = signal.getsignal(sig)
        if not callable(server_exit):
            continue

        def on_signal(signum: int, frame: Any, server_exit: Any = server_exit) -> None:
            loop.call_soon_threadsafe(exit_plan, server_exit, signum, frame)

        signal.signal(sig, on_signal)
    return True


class _GracefulExit:
    """SIGTERM: readiness answers 503 at once; with a drain delay the server keeps
    serving that long (a load balancer stops routing here), then stops admitting
    (503/5002) and exits; after the grace period what is still in flight ends
    (streams with an end frame). A second signal during the delay proceeds at once.
    """

    def __init__(self, shutdown: Any, readiness: Any, drain_delay: float) -> None:
        self.shutdown = shutdown
        self.readiness = readiness
        self.drain_delay = drain_delay
        self._delaying = False

    def __call__(self, server_exit: Any, sig: int, frame: Any) -> None:
        if self.readiness is not None:
            self.readiness.stop_ready()
        if self.drain_delay > 0 and not self._delaying:
            self._delaying = True
            asyncio.get_running_loop().call_later(self.drain_delay, self._drain_and_exit,
                                                  server_exit, sig, frame)
            return
        self._drain_and_exit(server_exit, sig, frame)

    def _drain_and_exit(self, server_exit: Any, sig: int, frame: Any) -> None:
        shutdown = self.shutdown
        if not shutdown.draining:
            shutdown.start_draining()
            asyncio.get_running_loop().call_later(shutdown.grace_s, shutdown.abort_in_flight)
        server_exit(sig, frame)


def _check_config(path: str) -> None:
    """Load and validate ``path`` as the workers will (raises ConfigError)."""
    from aduib_asgi.config import ConfigManager, FileSource

    ConfigManager([FileSource(path)], lambda _config: _no_app).start()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("only validates a configuration")


def _run_demo(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "server", "aduib-asgi demo")

    from aduib_asgi.config import ConfigError
    from aduib_asgi.qos import ShutdownController
    from aduib_asgi.server import TlsScopeMixin
    from aduib_asgi.server.memory import return_large_allocations
    from aduib_asgi.server.workers import ProtocolPlan, WorkerConfig

    if args.workers < 1:
        print("aduib-asgi demo: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and not args.redis:
        print("aduib-asgi demo: --workers N > 1 needs --redis URL: with the in-memory "
              "stores every worker would keep its own rate-limit quotas, idempotency "
              "records and tasks (a quota would become N quotas, a key could run N times)",
              file=sys.stderr)
        return 2
    if args.ws_max_size < 1024:
        print("aduib-asgi demo: --ws-max-size must be at least 1024", file=sys.stderr)
        return 2
    if args.ws_deflate and args.ws == "wsproto":
        print("aduib-asgi demo: --ws-deflate needs --ws websockets or websockets-sansio: "
              "wsproto inflates a compressed frame without a bound before --ws-max-size "
              "is checked", file=sys.stderr)
        return 2
    if args.ws == "auto" and not any(
            importlib.util.find_spec(name) for name in ("websockets", "wsproto")):
        print("aduib-asgi demo: WebSocket off (no WebSocket library installed): "
              "pip install 'aduib-asgi[server]'", file=sys.stderr, flush=True)
    tls = _tls_settings(args)
    settings = _demo_settings(args, tls)
    # freed large buffers (16 MiB messages, bodies) go back to the OS at once
    return_large_allocations()
    shutdown = ShutdownController(grace_s=args.shutdown_grace)
    app: Any = None
    try:
        if args.workers == 1:
            app = _demo_app(settings, shutdown, args.access_log)
        elif args.config:
            _check_config(args.config)
    except ConfigError as exc:
        print(f"aduib-asgi demo: invalid configuration: {exc}", file=sys.stderr)
        return 2
    # The connection budget (docs/serving.md): request heads are bounded in bytes
    # (431 over 64 KiB) and in time (--header-timeout); idle keep-alive connections
    # close after 5 s; above --max-connections (default: the fd limit less a reserve
    # for Redis, files and the listener) the oldest connection still waiting for its
    # head is closed. Per-method concurrency is the admission layer's job (429/5021
    # envelopes), so uvicorn's limit_concurrency (a bare 503) stays off.
    # With TLS, the tls extension mixin goes in front (HTTP and WebSocket classes):
    # uvicorn uses protocol subclasses only when given as classes.
    extra = {"tls_server_cert": tls.server_cert_pem()} if tls is not None else {}
    plan = ProtocolPlan(
        http=args.http, ws=args.ws, mixins=(TlsScopeMixin,) if tls is not None else (),
        http_settings={"max_head_bytes": MAX_HEAD_BYTES, "head_timeout_s": args.header_timeout,
                       "max_connections": args.max_connections or _fd_budget(), **extra},
        ws_settings=extra)
    ssl_options = tls.uvicorn_options() if tls is not None else {}
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else ~40 ms per keep-alive reply)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    options = uvicorn_options(args, ssl_options)
    scheme = "https" if tls is not None else "http"
    if args.workers > 1:  # each worker builds its app from the settings in its environment
        import json
        import os

        from uvicorn.supervisors import Multiprocess

        os.environ[DEMO_SETTINGS_ENV] = json.dumps(
            {**settings, "shutdown_grace": args.shutdown_grace,
             "drain_delay": args.drain_delay, "access_log": args.access_log})
        worker_config = WorkerConfig("aduib_asgi.cli:demo_worker_app", factory=True,
                                     workers=args.workers, plan=plan, **options)
        # the supervisor's records (workers started, died, restarted) like every line
        _log_handler(settings["log_json"], args.access_log)
        # the socket listens already: connections wait in its backlog for the workers
        print(f"listening on {scheme}://{host}:{port}", flush=True)
        Multiprocess(worker_config, sockets=[sock]).run()
        return 0
    http_cls, ws_cls = plan.build()
    config = uvicorn.Config(app, http=http_cls, ws=ws_cls or "none", **options)
    server = _Server(config)
    server.aduib_exit = _GracefulExit(shutdown, getattr(app, "monitor", None), args.drain_delay)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"listening on {scheme}://{host}:{port}", flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt), \
            asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    return 0


def uvicorn_options(args: argparse.Namespace, ssl_options: dict[str, Any]) -> dict[str, Any]:
    """The demo's ``uvicorn.Config`` options (one process and ``--workers`` alike)."""
    # loop/http "auto": uvloop and httptools (the `uvicorn[standard]` dependency), the
    # fastest stack uvicorn has; no uvicorn access log (the stack writes its own); no
    # ProxyHeadersMiddleware (the identity layer decides which proxies to believe)
    # and no `server` header (a wrapper and a header less per request).
    # log_config None: uvicorn's records go to the demo's handler (non-blocking, request
    # context, escaped) instead of uvicorn's own stream handlers
    return {"log_level": args.log_level, "log_config": None, "access_log": False,
            "lifespan": "on", "proxy_headers": False,
            "server_header": False, "loop": args.loop,
            "timeout_keep_alive": 5,
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
            # WebSocket messages: bounded after decompression (1009 past it); no
            # permessage-deflate unless asked (docs/serving.md)
            "ws_max_size": args.ws_max_size,
            "ws_per_message_deflate": args.ws_deflate,
            "timeout_graceful_shutdown": int(args.shutdown_grace) + 2,
            **ssl_options}


#: Request heads over this are answered 431 (OPERATIONS.md section 5).
MAX_HEAD_BYTES = 64 * 1024
#: Largest WebSocket message (after decompression) by default: the RPC body limit.
WS_MAX_SIZE = DEFAULT_MAX_BODY
#: Pending connections the kernel queues before the server accepts them.
LISTEN_BACKLOG = 2048
#: Descriptors kept free for Redis, files and the listener.
_FD_RESERVE = 256


def _fd_budget() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, soft - _FD_RESERVE)


def _make_server_class() -> type:
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGINT/SIGTERM end it with exit status 0.

        (uvicorn re-raises the captured signal after shutdown, which would make
        the process die "by signal".)
        """

        #: The graceful exit (:class:`_GracefulExit`); None: uvicorn's own.
        aduib_exit: Any = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.aduib_exit is None:
                super().handle_exit(sig, frame)
            else:
                self.aduib_exit(super().handle_exit, sig, frame)

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


class _LogHandler(NonBlockingStreamHandler):
    """The demo's log handler: request ids on every record; text or JSON by config;
    written from a thread, so a stalled log sink never blocks the event loop."""

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
    _openapi_parser(sub)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
