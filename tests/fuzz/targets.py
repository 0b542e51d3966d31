"""Fuzz targets: every request decoder and parser, with one invariant.

Each target takes raw bytes and must end with a value or a standard
:class:`~aduib_asgi.errors.RpcError` of the table — never another exception,
never a hang — within a memory bound (tracemalloc peak per input, see
:func:`checked`). The same targets run under atheris (coverage-guided,
``tests/fuzz/fuzz.py``) and, for the seed corpora and regressions, in-process.
"""

from __future__ import annotations

import asyncio
import re
import tracemalloc
from collections.abc import Callable
from typing import Any

from aduib_asgi.errors import ERROR_TABLE, RpcError

#: Bytes one input may make the target allocate (Python heap, tracemalloc peak).
PEAK_BOUND = 48 * 1024 * 1024
#: Decompressed-size cap the decoders run with (the layer's default is 16 MiB).
DECODE_LIMIT = 1024 * 1024
#: Longest an in-process request may take.
REQUEST_TIMEOUT_S = 10.0
#: Statuses a table error may be answered with besides its row's (PROTOCOL.md §3).
_ALTERNATES = {1003: {406, 415}, 1004: {415}, 4011: {422}, 2000: {405}}

Target = Callable[[bytes], None]


class InvariantError(AssertionError):
    """The target broke the invariant (a crash for the fuzzer)."""


def check_error(exc: RpcError, allowed: set[int] | None = None, *,
                server_errors: bool = False) -> None:
    """A standard error: a table code (or its range), the table's status or a named alternate."""
    if exc.code not in ERROR_TABLE and not 1000 <= exc.code <= 6999:
        raise InvariantError(f"code {exc.code} outside the table's ranges")
    if exc.http_status != exc.spec.http_status and \
            exc.http_status not in _ALTERNATES.get(exc.code, ()):
        raise InvariantError(f"{exc.code} answered with HTTP {exc.http_status}")
    if allowed is not None and exc.code not in allowed:
        raise InvariantError(f"unexpected code {exc.code}: {exc.message}")
    if exc.code >= 5000 and not server_errors:
        raise InvariantError(f"a decoder answered a server error {exc.code}: {exc.message}")


def checked(target: Target) -> Target:
    """``target`` under the memory bound (tracemalloc must be started by the driver)."""

    def run(data: bytes) -> None:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        target(data)
        peak = tracemalloc.get_traced_memory()[1] - base
        if peak > getattr(target, "peak_bound", PEAK_BOUND):
            raise InvariantError(f"{target.__name__} allocated {peak} bytes for "
                                 f"{len(data)} input bytes")

    run.__name__ = target.__name__
    return run


def _split(data: bytes, n: int) -> list[bytes]:
    """``data`` cut at the first ``n - 1`` 0xFF bytes (missing parts are empty)."""
    parts = data.split(b"\xff", n - 1)
    return parts + [b""] * (n - len(parts))


# -- codecs ---------------------------------------------------------------------------


def _codec_target(media_type: str) -> Target:
    from aduib_asgi.body import parse_envelope
    from aduib_asgi.codecs import default_registry
    from aduib_asgi.context import RequestContext

    codec = default_registry().get(media_type)
    assert codec is not None, f"{media_type} codec not installed"

    def target(data: bytes) -> None:
        try:
            value = codec.decode(data)
        except RpcError as exc:
            check_error(exc, {1003})
            return
        try:  # what the layers do next with a decoded body
            parse_envelope(RequestContext(), value)
        except RpcError as exc:
            check_error(exc, {1001, 1002, 2003, 3000, 3010, 3011})

    target.__name__ = "codec_" + media_type.rsplit("/", 1)[1]
    return target


# -- content codings --------------------------------------------------------------------


def _coding_target(name: str) -> Target:
    from aduib_asgi.compression import available_codings
    from aduib_asgi.middleware.compression import _DecodingReceive

    coding = available_codings()[name]
    loop = asyncio.new_event_loop()

    def target(data: bytes) -> None:
        # the body arrives in up to three chunks (cut at 0xFF bytes)
        chunks = [c for c in _split(data, 3) if c] or [b""]
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def drain() -> int:
            decoding = _DecodingReceive(receive, coding, DECODE_LIMIT)
            total = 0
            while True:
                message = await decoding()
                if message["type"] != "http.request":
                    return total
                total += len(message.get("body", b""))
                if total > DECODE_LIMIT:
                    raise InvariantError(f"{name}: {total} bytes passed the cap")
                if not message.get("more_body", False):
                    return total

        try:
            loop.run_until_complete(drain())
        except RpcError as exc:
            check_error(exc, {1004, 2004})

    target.__name__ = "coding_" + name
    return target


# -- header parsers -------------------------------------------------------------------


def headers_target(data: bytes) -> None:
    """traceparent/baggage/tenant/idempotency-key/version/framing/accept parsers, directly."""
    from aduib_asgi.codecs import default_registry
    from aduib_asgi.codecs.negotiation import choose_codec, parse_qlist
    from aduib_asgi.context import RequestContext
    from aduib_asgi.middleware.idempotency import parse_idempotency_key
    from aduib_asgi.streaming.sse import select_framing
    from aduib_asgi.versioning import ServerVersions, parse_version

    parts = _split(data, 4)
    text = parts[0].decode("latin-1")
    for quoted in (True, False):
        try:
            key = parse_idempotency_key(text, quoted_header=quoted)
        except RpcError as exc:
            check_error(exc, {2003})
        else:
            if not key or len(key) > 255:
                raise InvariantError(f"bad key accepted: {key!r}")
    parse_version(text)
    versions = ServerVersions(("2.0", "1.0"))
    listed = [v.strip() for v in parts[1].decode("latin-1").split(",") if v.strip()]
    try:
        versions.negotiate(text or None, listed or None)
    except RpcError as exc:
        check_error(exc, {1001})
    ranges = parse_qlist(text)
    if any(not 0.0 <= q <= 1.0 for _, q in ranges):
        raise InvariantError(f"q out of range: {ranges}")
    choose_codec(ranges, _REGISTRY.setdefault("codecs", default_registry()), None)
    ctx = RequestContext(raw_headers=[(b"aduib-stream-framing", parts[2])])
    try:
        select_framing(ctx)
    except RpcError as exc:
        check_error(exc, {2003})


_REGISTRY: dict[str, Any] = {}


# -- the whole stack, in-process --------------------------------------------------------

_PATHS = ("/aduib_rpc/v2/rpc", "/aduib_rpc/v2/rpc/stream", "/aduib_rpc/v1/rpc",
          "/aduib_rpc/v2/TaskService/Submit", "/aduib_rpc/v2/HealthService/Check",
          "/aduib_rpc/v2/rpc/cancel")
_TYPES = (b"application/json", b"application/msgpack", b"application/protobuf",
          b"application/avro", b"application/x-msgpack", b"text/plain")
_ENCODINGS = (None, b"gzip", b"zstd", b"lz4", b"snappy", b"br", b"identity")
_HEADERS = (b"traceparent", b"tracestate", b"baggage", b"x-tenant-id", b"idempotency-key",
            b"x-timeout-ms", b"x-priority", b"aduib-rpc-version",
            b"aduib-rpc-supported-versions", b"aduib-stream-framing", b"accept",
            b"accept-encoding")


class _Stack:
    def __init__(self) -> None:
        from aduib_asgi.demo import DemoConfig, build_demo_app

        self.app = build_demo_app(DemoConfig(env="prod"))
        self.loop = asyncio.new_event_loop()
        self._lifespan = self._start()  # as a server would: task workers, health monitor

    def _start(self) -> asyncio.Task[None]:
        """Run the app's lifespan startup; the lifespan task stays for the stack's life."""
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def run() -> None:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            await self.app(scope, events.get, answers.put)

        async def start() -> asyncio.Task[None]:
            task = asyncio.ensure_future(run())
            await events.put({"type": "lifespan.startup"})
            answer = await asyncio.wait_for(answers.get(), REQUEST_TIMEOUT_S)
            if answer["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"the demo app did not start: {answer}")
            return task

        return self.loop.run_until_complete(start())

    def request(self, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        out: dict[str, Any] = {"status": 0, "body": [], "done": False}

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(REQUEST_TIMEOUT_S * 2)  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"].append(message.get("body", b""))
                out["done"] = not message.get("more_body", False)

        try:
            self.loop.run_until_complete(
                asyncio.wait_for(self.app(scope, receive, send), REQUEST_TIMEOUT_S))
        except TimeoutError:
            raise InvariantError(f"no answer within {REQUEST_TIMEOUT_S} s") from None
        if not out["done"]:
            raise InvariantError("the response never ended")
        return int(out["status"]), b"".join(out["body"])


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80)}


def http_target(data: bytes) -> None:
    """One request through the demo's full stack: headers and body from the input.

    Byte 0 picks the path, byte 1 the Content-Type, byte 2 the Content-Encoding,
    byte 3 a bit set of which headers to send; then 0xFF-separated header values
    and the body. Invariant: a complete response; a 5xx only as 5003 when the
    input asked for a deadline.
    """
    stack = _REGISTRY.get("stack")
    if stack is None:
        stack = _REGISTRY["stack"] = _Stack()
    head, rest = data[:4].ljust(4, b"\0"), data[4:]
    parts = _split(rest, len(_HEADERS) + 1)
    headers = [(b"content-type", _TYPES[head[1] % len(_TYPES)])]
    encoding = _ENCODINGS[head[2] % len(_ENCODINGS)]
    if encoding is not None:
        headers.append((b"content-encoding", encoding))
    mask = head[3] | (head[0] & 0xF0) << 4
    for i, name in enumerate(_HEADERS):
        if mask >> i & 1:
            headers.append((name, parts[i].replace(b"\r", b"").replace(b"\n", b"")))
    status, body = stack.request(_scope(_PATHS[head[0] % len(_PATHS)], headers), parts[-1])
    code = _check_error_body(status, body) if status >= 400 else None
    if status >= 500 and code != 5003 and not _INTENDED.search(parts[-1]):
        raise InvariantError(f"HTTP {status}: {body[:300]!r}")


#: Requests that may answer 5xx by design: Echo/crash, Echo/fail (any spelling, and the
#: circuit breaker their failures open); 5003 is the deadline the request asked for.
_INTENDED = re.compile(rb"(?i)crash|fail")
#: Echo/big answers up to 64 MiB by contract: the whole-stack targets get more room.
STACK_PEAK_BOUND = 512 * 1024 * 1024
http_target.peak_bound = STACK_PEAK_BOUND  # type: ignore[attr-defined]


def _check_error_body(status: int, body: bytes) -> int | None:
    """The error code of an error response (None for protobuf/avro bodies)."""
    import msgpack
    import pydantic_core

    try:
        env = pydantic_core.from_json(body)
    except ValueError:
        try:
            env = msgpack.unpackb(body, raw=False)
        except Exception:
            return None  # protobuf/avro error bodies: their codecs are fuzzed on their own
    error = env.get("error") if isinstance(env, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        raise InvariantError(f"HTTP {status} without an error envelope: {body[:300]!r}")
    check_error(RpcError(error["code"], http_status=status), server_errors=True)
    return int(error["code"])


# -- WebSocket ------------------------------------------------------------------------


def websocket_target(data: bytes) -> None:
    """Client frames over the demo's WebSocket endpoint: each 0xFF-separated part is one
    message (text when it starts with an odd byte, else binary msgpack)."""
    stack = _REGISTRY.get("stack")
    if stack is None:
        stack = _REGISTRY["stack"] = _Stack()
    frames = [p for p in data.split(b"\xff")[:16]]
    messages: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    for f in frames:
        if f and f[0] & 1:
            messages.append({"type": "websocket.receive",
                             "text": f[1:].decode("utf-8", "replace")})
        else:
            messages.append({"type": "websocket.receive", "bytes": f[1:]})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = _scope("/aduib_rpc/v2/rpc/ws", [(b"x-timeout-ms", b"2000")])
    scope["type"] = "websocket"
    try:
        stack.loop.run_until_complete(
            asyncio.wait_for(stack.app(scope, receive, send), REQUEST_TIMEOUT_S))
    except TimeoutError:
        raise InvariantError("the WebSocket call did not end") from None
    for message in sent:
        if message["type"] == "websocket.close" and message.get("code") == 1011 \
                and not _INTENDED.search(data):
            raise InvariantError(f"internal error close: {message}")


websocket_target.peak_bound = STACK_PEAK_BOUND  # type: ignore[attr-defined]


# -- SSE encoding -----------------------------------------------------------------------


def sse_target(data: bytes) -> None:
    """Whatever the data, event and id fields hold, the encoder writes exactly one event
    that a WHATWG parser reads back with the same data (no injected fields or events)."""
    from aduib_asgi.streaming.sse import sse_event

    event, ident, payload = _split(data, 3)
    raw = sse_event(payload, event=event or None, id=ident or None)
    events = _parse_sse(raw)
    if len(events) != 1:
        raise InvariantError(f"{len(events)} events from one: {raw!r}")
    expected = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    got = events[0].get(b"data", b"")
    if got != expected:
        raise InvariantError(f"data changed: {expected!r} -> {got!r}")
    if event and events[0].get(b"event") is None:
        raise InvariantError("event lost")


def _parse_sse(raw: bytes) -> list[dict[bytes, bytes]]:
    """A WHATWG event-stream parser (bytes, CR/LF/CRLF line ends)."""
    events: list[dict[bytes, bytes]] = []
    current: dict[bytes, bytes] = {}
    data_lines: list[bytes] = []
    for line in raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line:
            if data_lines:
                current[b"data"] = b"\n".join(data_lines)
                events.append(current)
            current, data_lines = {}, []
            continue
        if line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"data":
            data_lines.append(value)
        else:
            current[field] = value
    return events


def combined(targets: dict[str, Target]) -> Target:
    """One target over all of them: the first byte picks which (one fuzzing process)."""
    order = [targets[name] for name in sorted(targets)]

    def all_parsers(data: bytes) -> None:
        if data:
            order[data[0] % len(order)](data[1:])

    return all_parsers


def combined_prefix(name: str, targets: dict[str, Target]) -> bytes:
    """The first byte that makes :func:`combined` run target ``name``."""
    return bytes([sorted(targets).index(name)])


def all_targets() -> dict[str, Target]:
    """Every target by name (only what is installed: br needs brotli)."""
    from aduib_asgi.compression import available_codings

    targets: list[Target] = [
        _codec_target("application/json"), _codec_target("application/msgpack"),
        _codec_target("application/protobuf"), _codec_target("application/avro"),
        *(_coding_target(name) for name in sorted(available_codings())),
        headers_target, sse_target, http_target, websocket_target,
    ]
    return {t.__name__: t for t in targets}
