"""uvicorn HTTP protocol classes with connection guards, composed from mixins.

uvicorn takes a protocol *class* (``uvicorn.Config(http=cls)``). Each behaviour
here is a mixin over uvicorn's protocol that calls ``super()`` cooperatively, and
:func:`http_protocol` composes the mixins you name over a parser's class::

    from aduib_asgi.server.protocols import http_protocol
    cls = http_protocol("httptools", max_head_bytes=64 * 1024, head_timeout_s=10)
    uvicorn.Config(app, http=cls)

:class:`HeadGuard` (always included) bounds every request head:

* **size** - a head over ``max_head_bytes`` is answered ``431`` and the
  connection closed, on both parsers (h11 and httptools) - measured while it
  streams in, so an endless header is cut off at the bound, not buffered;
* **time** - a connection that does not complete its head within
  ``head_timeout_s`` of opening (or of the first byte of a later request) gets
  ``408`` and is closed (slow-header clients hold no descriptor for long);
* **connections** - over ``max_connections`` open connections, the oldest one
  still waiting for its head is closed to make room (else the new one is).

Another behaviour is one more mixin: ``http_protocol("h11", TlsScopeMixin, ...)``
puts the ASGI ``tls`` scope extension (:mod:`aduib_asgi.server.tls`) in front of
the guard; :func:`ws_protocol` does the same for uvicorn's WebSocket classes
(a WebSocket upgraded from a TLS connection gets the extension too). A name
given to uvicorn instead of a class would load uvicorn's own class and silently
skip every mixin.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aduib_asgi.extras import require

__all__ = ["HeadGuard", "ParserRelease", "http_protocol", "ws_protocol"]

#: End of a request head: CRLF CRLF, or the bare-LF form h11 also accepts.
_HEAD_END = re.compile(b"\n\r?\n")

_PLAIN = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
_REPLIES = {
    status: b"HTTP/1.1 %d %s\r\n%scontent-length: %d\r\n\r\n%s" % (
        status, reason, _PLAIN, len(text), text)
    for status, reason, text in (
        (431, b"Request Header Fields Too Large", b"request header block too large"),
        (408, b"Request Timeout", b"request header block not received in time"),
    )
}


class _HeadTooLarge(Exception):
    """Raised from a parser callback; uvicorn's parse-error path then answers 431."""


class HeadGuard:
    """Bounds each request head in bytes and in time; bounds open connections.

    A mixin: the parser-specific subclasses below say when a head begins and ends.
    """

    #: Largest request head (request line and header fields) accepted, in bytes.
    max_head_bytes: int = 64 * 1024
    #: Seconds a connection may take to complete a request head.
    head_timeout_s: float = 10.0
    #: Open connections above which the oldest head-waiting one is closed (None: no bound).
    max_connections: int | None = None
    #: Connections waiting for a head, oldest first (one dict per composed class).
    _waiting: dict[Any, None] = {}
    #: Per event loop, the one timer armed for the oldest waiting head's deadline
    #: (one dict per composed class): no timer per request.
    _sweeps: dict[Any, asyncio.TimerHandle] = {}

    # set by uvicorn's protocols
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any

    _head_waiting: bool = False
    _head_since: float = 0.0
    _head_bytes: int = 0
    _head_rejected: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        limit = self.max_connections
        if limit is not None and len(self.connections) > limit:
            victim = next(iter(self._waiting), None)
            if victim is None:  # everyone is busy with a request: refuse the newcomer
                self.transport.close()
                return
            victim._head_end()
            victim.transport.close()
        self._head_begin()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_end()
        super().connection_lost(exc)  # type: ignore[misc]

    def _head_begin(self) -> None:
        """A head starts: the clock runs (unless it already does) and bytes are counted.

        Waiting connections are kept oldest first, all with the same timeout, so
        one timer per loop at the oldest one's deadline enforces every deadline
        exactly; it is armed only when none is.
        """
        self._head_bytes = 0
        if not self._head_waiting:
            self._head_waiting = True
            loop = self.loop
            self._head_since = loop.time()
            self._waiting[self] = None
            if loop not in self._sweeps:
                self._sweeps[loop] = loop.call_at(self._head_since + self.head_timeout_s,
                                                  self._sweep, loop)

    def _head_end(self) -> None:
        if self._head_waiting:
            self._head_waiting = False
            self._waiting.pop(self, None)

    @property
    def _head_pending(self) -> bool:
        return self._head_waiting

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Time out every head of ``loop`` past its deadline; re-arm for the next one."""
        cls._sweeps.pop(loop, None)
        now = loop.time()
        for proto in list(cls._waiting):
            if proto.loop is not loop:
                continue
            deadline = proto._head_since + proto.head_timeout_s
            if deadline > now:  # the oldest still in time: later ones are too
                cls._sweeps[loop] = loop.call_at(deadline, cls._sweep, loop)
                return
            proto._head_timed_out()

    def _head_timed_out(self) -> None:
        self._head_end()
        self._refuse(408)

    def _refuse(self, status: int) -> None:
        """Answer ``status`` (unless a response is under way) and close the connection."""
        self._head_end()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            transport.write(_REPLIES[status])
        transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._head_rejected or self._parser_over_limit():
            self._refuse(431)
        else:
            super().send_400_response(msg)  # type: ignore[misc]

    def _parser_over_limit(self) -> bool:
        return False


def _httptools_guard() -> type:
    require("httptools", "server", "http_protocol('httptools')")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeadGuard(HeadGuard, HttpToolsProtocol):
        """HeadGuard for httptools: llhttp's callbacks mark a head's start and end.

        A head that begins and completes within one chunk (every ordinary request)
        never enters the waiting registry: a head that began in a chunk is
        registered at the end of that chunk only if it is still incomplete, with
        the clock of that chunk - the deadline it would have had from its first
        byte.
        """

        #: A head began in the chunk being parsed and has not completed yet.
        _began_in_feed = False
        _feed_bytes = 0

        def data_received(self, data: bytes) -> None:
            self._began_in_feed = False
            self._feed_bytes = len(data)
            super().data_received(data)
            if self._began_in_feed:  # began in this chunk, still incomplete
                if not self.transport.is_closing():
                    self._head_begin()  # (its clock runs already if it waits since connect)
                    self._head_bytes = len(data)  # count all of it: an upper bound
                    if self._head_bytes > self.max_head_bytes:
                        self._refuse(431)
            elif self._head_waiting and not self.transport.is_closing():
                self._head_bytes += len(data)  # a head that began in an earlier chunk
                if self._head_bytes > self.max_head_bytes:
                    self._refuse(431)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began_in_feed = True

        def on_headers_complete(self) -> None:
            began = self._began_in_feed
            self._began_in_feed = False
            if self._head_waiting:  # waiting since connect, or begun in an earlier chunk
                self._head_end()
            # The chunks that carried this head bound its size; only past the bound
            # is it measured: what uvicorn collected (URL, fields without the
            # whitespace around values, which nothing keeps) + "METHOD ",
            # " HTTP/1.1\r\n", ": " and CRLF per field, the blank line. No
            # per-field callback of ours runs for an ordinary request.
            carried = self._feed_bytes if began else self._head_bytes + self._feed_bytes
            if carried > self.max_head_bytes:
                size = len(self.url) + len(self.parser.get_method()) + 14
                for name, value in self.headers:
                    size += len(name) + len(value) + 4
                if size > self.max_head_bytes:
                    self._head_rejected = True
                    raise _HeadTooLarge
            super().on_headers_complete()

    return HttpToolsHeadGuard


def _h11_guard() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11HeadGuard(HeadGuard, H11Protocol):
        """HeadGuard for h11: a head is pending while h11 waits for a request."""

        _tail = b""

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            # h11's own bound on an incomplete head (its 400 becomes our 431)
            self.conn = h11.Connection(h11.SERVER, self.max_head_bytes)

        def _head_begin(self) -> None:
            super()._head_begin()
            self._tail = b""

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                if not self._head_pending:
                    self._head_begin()
                buf = self._tail + data
                end = _HEAD_END.search(buf)
                size = self._head_bytes + (len(data) if end is None else
                                           end.end() - len(self._tail))
                if size > self.max_head_bytes:
                    self._refuse(431)
                    return
                self._head_bytes += len(data)
                self._tail = buf[-2:]
            super().data_received(data)
            if self._head_pending and self.conn.their_state is not h11.IDLE:
                self._head_end()

        def _parser_over_limit(self) -> bool:
            return len(self.conn.trailing_data[0]) > self.max_head_bytes

    return H11HeadGuard


_GUARDS = {"httptools": _httptools_guard, "h11": _h11_guard}


def http_protocol(parser: str = "auto", *mixins: type, **settings: Any) -> type:
    """A uvicorn HTTP protocol class: ``mixins`` (first wins) over :class:`HeadGuard`
    over ``parser``'s protocol ("h11", "httptools", or "auto": httptools when installed).

    ``settings`` set class attributes (``max_head_bytes``, ``head_timeout_s``,
    ``max_connections`` or a mixin's own).
    """
    require("uvicorn", "server", "http_protocol")
    if parser == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:
            parser = "h11"
        else:
            parser = "httptools"
    try:
        guard = _GUARDS[parser]()
    except KeyError:
        raise ValueError(f"unknown HTTP parser {parser!r} (h11, httptools)") from None
    unknown = [k for k in settings if not any(hasattr(c, k) for c in (*mixins, guard))]
    if unknown:
        raise TypeError(f"unknown protocol settings: {', '.join(unknown)}")
    names = "".join(m.__name__ for m in mixins)
    attrs: dict[str, Any] = {**settings, "_waiting": {}, "_sweeps": {}, "parser_name": parser}
    return type(f"{names}{guard.__name__}", (*mixins, guard), attrs)


class ParserRelease:
    """Frees a WebSocket's last message when its connection is lost.

    The ``websockets`` sans-I/O protocol (uvicorn's ``websockets-sansio``, its
    default) parses in a generator that keeps the last frame - a whole message,
    up to ``ws_max_size`` - and that refers to its connection, which refers back:
    a reference cycle freed only by a full garbage-collector pass, minutes later
    under load. A client that sends one large message and drops the connection
    would leave it behind. Closing the generator on connection loss frees it at
    once, as it frees a parse error's traceback (a message refused as too large
    holds what was inflated until then) and, for uvicorn's legacy ``websockets``
    implementation, its reader task's error (whose frames hold the last
    message). wsproto keeps nothing of the kind.
    """

    conn: Any

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        conn = getattr(self, "conn", None)
        close = getattr(getattr(conn, "parser", None), "close", None)
        if close is not None:
            close()
        failed = getattr(conn, "parser_exc", None)
        if failed is not None:  # e.g. a message over the size limit: its frames hold
            failed.__traceback__ = None  # what was decompressed until then
        # uvicorn's legacy ``websockets`` implementation: its reader task ends after
        # the connection, keeping its error (and through it the last message)
        task = getattr(self, "transfer_data_task", None)
        if task is not None:
            task.add_done_callback(self._release_reader_error)

    def _release_reader_error(self, _task: Any) -> None:
        failed = getattr(self, "transfer_data_exc", None)
        if failed is not None:
            failed.__traceback__ = None


def ws_protocol(name: str = "auto", *mixins: type, **settings: Any) -> type | None:
    """A uvicorn WebSocket protocol class: ``mixins`` (first wins) over
    :class:`ParserRelease` over ``name``'s implementation ("websockets",
    "websockets-sansio", "wsproto", or "auto": uvicorn's choice); None for "none"
    (or "auto" with no WebSocket library installed).

    ``settings`` set class attributes (a mixin's own).
    """
    require("uvicorn", "server", "ws_protocol")
    if name in ("websockets", "websockets-sansio"):
        require("websockets", "server", f"ws_protocol({name!r})")
    from uvicorn.config import WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    try:
        target = WS_PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown WebSocket implementation {name!r}") from None
    base: type | None = import_from_string(target) if target is not None else None
    if base is None:
        return None
    unknown = [k for k in settings if not any(hasattr(c, k) for c in mixins)]
    if unknown:
        raise TypeError(f"unknown protocol settings: {', '.join(unknown)}")
    names = "".join(m.__name__ for m in mixins)
    return type(f"{names}{base.__name__}", (*mixins, ParserRelease, base), dict(settings))
