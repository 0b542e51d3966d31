"""Content codings: one-shot and streaming compressors, bounded streaming decompressors.

Each :class:`Coding` wraps its library (zlib for gzip, zstandard, lz4.frame,
python-snappy's framing format, brotli); nothing here re-implements a format.
Decoders are bounded: :meth:`Decoder.decompress` returns the output in pieces
of at most ``step`` bytes and raises :class:`TooLarge` as soon as the total
would pass ``budget``, so a decompression bomb never materialises; the pieces
decoded so far are dropped before raising (no traceback keeps them alive).

Native contexts are reused: zstd (and lz4 frame) compressors and
decompressors come from a bounded :class:`ContextPool` per coding and go back
to it when the response or request body ends (:meth:`Encoder.close`), so a
stream of responses does not allocate and free a fresh ~1 MiB native context
each (which glibc's allocator keeps as fragmented heap). zlib and brotli have
no reset API: their objects are fresh per response (their allocations measured
flat under a soak); snappy's framing keeps no native state.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import lz4.frame
import snappy
import zstandard

__all__ = [
    "DCTX_KEEP_BYTES",
    "DEFAULT_LEVELS",
    "DEFAULT_POOL_SIZE",
    "LEVEL_RANGES",
    "ZSTD_MAX_WINDOW",
    "Coding",
    "ContextPool",
    "Decoder",
    "Encoder",
    "TooLarge",
    "available_codings",
    "check_levels",
]

#: Levels used unless configured: fast settings that still compress JSON well.
DEFAULT_LEVELS: dict[str, int] = {"gzip": 6, "zstd": 3, "br": 4, "lz4": 0}

#: Idle native contexts kept per coding and direction (a zstd-3 compressor that
#: served SSE holds ~0.8 MiB resident, up to ~3 MiB after multi-MiB bodies).
DEFAULT_POOL_SIZE = 32

#: A zstd decompressor is kept for reuse only while its buffers are at most this
#: large: one that decoded a large-window body (up to 8 MiB) is freed, so a flood
#: of such bodies leaves nothing pinned.
DCTX_KEEP_BYTES = 1024 * 1024

#: Largest zstd window a request body may use (RFC 9659 section 3: 8 MB for the
#: ``zstd`` content coding); a frame that needs more is refused as corrupt
#: instead of making the server allocate up to 128 MiB for it.
ZSTD_MAX_WINDOW = 8 * 1024 * 1024

_STEP = 256 * 1024
_T = TypeVar("_T")


class TooLarge(Exception):
    """Decompressed output passed the budget."""


class Encoder(Protocol):
    """A streaming compressor for one response."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes:
        """Everything compressed so far, decodable now (sync flush)."""
        ...

    def finish(self) -> bytes:
        """The end of the stream; the encoder is closed after it."""
        ...

    def close(self) -> None:
        """Give native state back (idempotent; also after an abandoned response)."""
        ...


class Decoder(Protocol):
    """A bounded streaming decompressor for one request body."""

    def decompress(self, data: bytes, budget: int) -> list[bytes]:
        """Output for ``data`` in pieces; TooLarge once it would exceed ``budget`` bytes."""
        ...

    def finish(self) -> None:
        """Raise ValueError when the input ended mid-stream."""
        ...

    def close(self) -> None:
        """Give native state back (idempotent)."""
        ...


class ContextPool(Generic[_T]):
    """Idle native codec contexts of one kind, reused across responses.

    :meth:`take` pops an idle one (or makes one); :meth:`give` keeps it for the
    next response while fewer than ``limit`` are idle and ``keep(ctx)`` allows
    (a context that grew large is freed instead). ``list.pop``/``append``
    are atomic, so worker threads may give back too; a context is used by one
    response at a time.
    """

    __slots__ = ("_idle", "_keep", "_make", "created", "limit")

    def __init__(self, make: Callable[[], _T], limit: int = DEFAULT_POOL_SIZE,
                 keep: Callable[[_T], bool] | None = None) -> None:
        self._make = make
        self._keep = keep  # False: too big to keep idle (freed instead)
        self._idle: list[_T] = []
        self.limit = limit
        self.created = 0  # contexts made so far (reuse keeps this near peak concurrency)

    def take(self) -> _T:
        try:
            return self._idle.pop()
        except IndexError:
            self.created += 1
            return self._make()

    def give(self, ctx: _T) -> None:
        if len(self._idle) < self.limit and (self._keep is None or self._keep(ctx)):
            self._idle.append(ctx)

    @property
    def idle(self) -> int:
        """Contexts waiting for reuse."""
        return len(self._idle)


class Coding:
    """One content coding: name, one-shot compress, encoder and decoder factories.

    ``content_encoding`` is the response header pair, built once;
    ``encoder_pool``/``decoder_pool`` are the pools of reused native contexts
    (None for codings whose objects cannot be reset).
    """

    __slots__ = ("compress", "content_encoding", "decoder", "decoder_pool", "encoder",
                 "encoder_pool", "name")

    def __init__(
        self,
        name: str,
        compress: Callable[[bytes], bytes],
        encoder: Callable[[], Encoder],
        decoder: Callable[[], Decoder],
        *,
        encoder_pool: ContextPool[Any] | None = None,
        decoder_pool: ContextPool[Any] | None = None,
    ) -> None:
        self.name = name
        self.compress = compress
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_pool = encoder_pool
        self.decoder_pool = decoder_pool
        self.content_encoding = (b"content-encoding", name.encode("latin-1"))


# -- gzip ---------------------------------------------------------------------------


class _GzipEncoder:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)

    def close(self) -> None:
        return None  # zlib has no reset: the object is simply dropped


class _GzipDecoder:
    """gzip members (several may follow each other), via zlib's ``max_length``."""

    __slots__ = ("_d", "_total")

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self._total = 0

    def decompress(self, data: bytes, budget: int) -> list[bytes]:
        out: list[bytes] = []
        while data:
            d = self._d
            if d.eof:  # a following member, or garbage
                self._d = d = zlib.decompressobj(31)
            piece = d.decompress(data, _STEP)
            if piece:
                self._total += len(piece)
                if self._total > budget:
                    out.clear()
                    raise TooLarge()
                out.append(piece)
            data = d.unconsumed_tail or (d.unused_data if d.eof else b"")
        return out

    def finish(self) -> None:
        if not self._d.eof:
            raise ValueError("truncated gzip stream")

    def close(self) -> None:
        return None


# -- zstd ---------------------------------------------------------------------------

class _ZstdContexts(threading.local):
    """One reusable compressor per thread for one-shot bodies (not thread-safe).

    Reused for every one-shot body, small or large: measured here, a reused
    context is as fast as or faster than a fresh one at 20 KiB-1 MiB (a fresh one
    costs ~13 µs of setup at 20 KiB).
    """

    def __init__(self, level: int) -> None:
        self.cctx = zstandard.ZstdCompressor(level=level)


def _zstd_compress_for(level: int) -> Callable[[bytes], bytes]:
    local = _ZstdContexts(level)

    def compress(data: bytes) -> bytes:
        return local.cctx.compress(data)

    return compress


class _ZstdEncoder:
    """A streamed response: a compressor taken from the pool, given back at the end.

    ``compressobj()`` starts a new frame on the reused context (zstandard resets
    the session), so every response is an independent frame even when the
    previous user of the context abandoned its frame midway.
    """

    __slots__ = ("_c", "_cctx", "_pool")

    def __init__(self, pool: ContextPool[zstandard.ZstdCompressor]) -> None:
        self._pool = pool
        self._cctx: zstandard.ZstdCompressor | None = pool.take()
        self._c = self._cctx.compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        out = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        self.close()
        return out

    def close(self) -> None:
        cctx, self._cctx = self._cctx, None
        if cctx is not None:
            self._pool.give(cctx)


class _BoundedSink:
    """Collects decoded pieces; past the budget it drops them and sets ``over``.

    It never raises: python-zstandard's ``stream_writer`` leaks its output
    buffer (``write_size`` bytes) when the sink's ``write`` raises.
    """

    __slots__ = ("budget", "out", "over", "total")

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.total = 0
        self.budget = 0
        self.over = False

    def write(self, data: Any) -> int:
        n = len(data)
        self.total += n
        if self.total > self.budget:
            self.over = True
            self.out.clear()
        elif not self.over:
            self.out.append(bytes(data))
        return n


def _zstd_dctx() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)


def _small_dctx(dctx: zstandard.ZstdDecompressor) -> bool:
    return dctx.memory_size() <= DCTX_KEEP_BYTES


#: Compressed input fed to the zstd writer per call: after each slice the budget is
#: checked, so a bomb past it costs at most one slice's output (discarded).
_ZSTD_IN_STEP = 1024


class _ZstdDecoder:
    """zstandard's stream_writer into a sink that stops collecting at the budget.

    (zstandard's ``decompressobj`` has no ``max_length``; its writer emits at most
    ``write_size`` bytes per sink call, and the input goes in 1 KiB slices, so
    the budget is checked at least every slice.) The decompression context
    comes from a pool (``stream_writer`` resets it).
    """

    __slots__ = ("_dctx", "_pool", "_sink", "_w")

    def __init__(self, pool: ContextPool[zstandard.ZstdDecompressor]) -> None:
        self._pool = pool
        self._sink = _BoundedSink()
        self._dctx: zstandard.ZstdDecompressor | None = pool.take()
        self._w = self._dctx.stream_writer(
            self._sink, write_size=_STEP)  # type: ignore[arg-type]  # any .write() works

    def decompress(self, data: bytes, budget: int) -> list[bytes]:
        sink = self._sink
        sink.budget = budget
        write = self._w.write
        view = memoryview(data)
        for i in range(0, len(data), _ZSTD_IN_STEP):
            write(view[i:i + _ZSTD_IN_STEP])
            if sink.over:
                raise TooLarge()
        out, sink.out = sink.out, []
        return out

    def finish(self) -> None:
        # zstandard's bounded API does not report frame completion; a truncated
        # frame yields a truncated body, which the content decoder rejects.
        return None

    def close(self) -> None:
        dctx, self._dctx = self._dctx, None
        if dctx is not None:
            self._sink.out.clear()
            self._pool.give(dctx)


# -- lz4 frame ----------------------------------------------------------------------


class _Lz4Encoder:
    """lz4 frames from a pooled ``LZ4FrameCompressor`` (``reset()`` makes it reusable)."""

    __slots__ = ("_c", "_pool", "_started")

    def __init__(self, pool: ContextPool[lz4.frame.LZ4FrameCompressor]) -> None:
        self._pool = pool
        self._c: lz4.frame.LZ4FrameCompressor | None = pool.take()
        self._started = False

    def _ctx(self) -> lz4.frame.LZ4FrameCompressor:
        c = self._c
        assert c is not None, "encoder used after close"
        return c

    def compress(self, data: bytes) -> bytes:
        c = self._ctx()
        if not self._started:
            self._started = True
            return bytes(c.begin()) + bytes(c.compress(data))
        return bytes(c.compress(data))

    def flush(self) -> bytes:
        return b""  # auto_flush: every compress() call returns complete blocks

    def finish(self) -> bytes:
        c = self._ctx()
        head = b"" if self._started else bytes(c.begin())
        self._started = True
        out = head + bytes(c.flush())
        self.close()
        return out

    def close(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            c.reset()
            self._pool.give(c)


class _Lz4Decoder:
    """lz4 frames (several may follow each other) from a pooled decompressor."""

    __slots__ = ("_d", "_pool", "_total")

    def __init__(self, pool: ContextPool[lz4.frame.LZ4FrameDecompressor]) -> None:
        self._pool = pool
        self._d: lz4.frame.LZ4FrameDecompressor | None = pool.take()
        self._total = 0

    def decompress(self, data: bytes, budget: int) -> list[bytes]:
        out: list[bytes] = []
        d = self._d
        assert d is not None, "decoder used after close"
        while True:
            if d.eof:
                rest = d.unused_data or b""
                data = rest + data if rest else data
                if not data:
                    break
                d.reset()
            piece = d.decompress(data, max_length=_STEP)
            data = b""
            if piece:
                self._total += len(piece)
                if self._total > budget:
                    out.clear()
                    raise TooLarge()
                out.append(piece)
            if d.needs_input and not d.eof:
                break
        return out

    def finish(self) -> None:
        if self._d is None or not self._d.eof:
            raise ValueError("truncated lz4 frame")

    def close(self) -> None:
        d, self._d = self._d, None
        if d is not None:
            d.reset()
            self._pool.give(d)


# -- snappy framing -----------------------------------------------------------------


class _SnappyEncoder:
    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c = snappy.StreamCompressor()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data) if data else b""

    def flush(self) -> bytes:
        return b""  # every compress() call emits complete frames

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        return None  # no native state


class _SnappyDecoder:
    """The framing format's chunks hold at most 64 KiB each, so output per input is bounded."""

    __slots__ = ("_d", "_total")

    def __init__(self) -> None:
        self._d = snappy.StreamDecompressor()
        self._total = 0

    def decompress(self, data: bytes, budget: int) -> list[bytes]:
        out: list[bytes] = []
        for i in range(0, len(data), 64 * 1024):
            piece = self._d.decompress(data[i:i + 64 * 1024])
            if piece:
                self._total += len(piece)
                if self._total > budget:
                    out.clear()
                    raise TooLarge()
                out.append(piece)
        return out

    def finish(self) -> None:
        if self._d.remains:
            raise ValueError("truncated snappy frame")

    def close(self) -> None:
        return None


def _snappy_compress(data: bytes) -> bytes:
    return bytes(snappy.StreamCompressor().compress(data))


# -- registry -----------------------------------------------------------------------


def available_codings(
    levels: dict[str, int] | None = None, *, pool_size: int = DEFAULT_POOL_SIZE
) -> dict[str, Coding]:
    """Every installed coding by name (``br`` only when ``brotli`` is installed).

    ``levels`` are checked here (ValueError naming the coding and its range), so a
    bad level fails at construction, not on the first response. ``pool_size``
    bounds the idle native contexts kept per coding and direction.
    """
    lv = {**DEFAULT_LEVELS, **(levels or {})}
    check_levels(lv)
    gz, zs, l4 = lv["gzip"], lv["zstd"], lv["lz4"]
    zc: ContextPool[zstandard.ZstdCompressor] = ContextPool(
        lambda: zstandard.ZstdCompressor(level=zs), pool_size)
    zd: ContextPool[zstandard.ZstdDecompressor] = ContextPool(
        _zstd_dctx, pool_size, _small_dctx)
    lc: ContextPool[lz4.frame.LZ4FrameCompressor] = ContextPool(
        lambda: lz4.frame.LZ4FrameCompressor(compression_level=l4, auto_flush=True), pool_size)
    ld: ContextPool[lz4.frame.LZ4FrameDecompressor] = ContextPool(
        lz4.frame.LZ4FrameDecompressor, pool_size)
    codings = {
        "zstd": Coding("zstd", _zstd_compress_for(zs),
                       lambda: _ZstdEncoder(zc), lambda: _ZstdDecoder(zd),
                       encoder_pool=zc, decoder_pool=zd),
        "gzip": Coding("gzip", lambda b: zlib.compress(b, gz, 31),
                       lambda: _GzipEncoder(gz), _GzipDecoder),
        "lz4": Coding("lz4", lambda b: lz4.frame.compress(b, compression_level=l4),
                      lambda: _Lz4Encoder(lc), lambda: _Lz4Decoder(ld),
                      encoder_pool=lc, decoder_pool=ld),
        "snappy": Coding("snappy", _snappy_compress, _SnappyEncoder, _SnappyDecoder),
    }
    try:
        from aduib_asgi.compression.brotli_coding import brotli_coding
    except ImportError:
        pass
    else:
        codings["br"] = brotli_coding(lv["br"])
    return codings


#: Valid level ranges per coding (inclusive).
LEVEL_RANGES: dict[str, tuple[int, int]] = {
    "gzip": (-1, 9), "zstd": (-131072, 22), "br": (0, 11), "lz4": (-65536, 16),
}


def check_levels(levels: dict[str, int]) -> None:
    """ValueError for an unknown coding name or a level outside its range."""
    for name, level in levels.items():
        rng = LEVEL_RANGES.get(name)
        if rng is None:
            raise ValueError(f"no level for coding {name!r} (levels: {', '.join(LEVEL_RANGES)})")
        if not isinstance(level, int) or isinstance(level, bool) or not rng[0] <= level <= rng[1]:
            raise ValueError(f"{name} level must be an integer in {rng[0]}..{rng[1]}, "
                             f"not {level!r}")
