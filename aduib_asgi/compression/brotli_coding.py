"""``br`` (optional: needs the ``aduib-asgi[brotli]`` extra)."""

from __future__ import annotations

from aduib_asgi.extras import require

require("brotli", "brotli", "The br content coding")
import brotli

from aduib_asgi.compression.codings import Coding, TooLarge

__all__ = ["brotli_coding"]

_STEP = 256 * 1024


class _BrotliEncoder:
    __slots__ = ("_c",)

    def __init__(self, quality: int) -> None:
        self._c = brotli.Compressor(quality=quality)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._c.process(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._c.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._c.finish()
        return out

    def close(self) -> None:
        return None  # brotli has no reset: the object is simply dropped


class _BrotliDecoder:
    __slots__ = ("_d", "_total")

    def __init__(self) -> None:
        self._d = brotli.Decompressor()
        self._total = 0

    def decompress(self, data: bytes, budget: int) -> list[bytes]:
        out: list[bytes] = []
        d = self._d
        while True:
            piece: bytes = d.process(data, output_buffer_limit=_STEP)
            data = b""
            if piece:
                self._total += len(piece)
                if self._total > budget:
                    out.clear()
                    raise TooLarge()
                out.append(piece)
            if len(piece) < _STEP and d.can_accept_more_data():
                return out

    def finish(self) -> None:
        if not self._d.is_finished():
            raise ValueError("truncated brotli stream")

    def close(self) -> None:
        return None


def brotli_coding(quality: int) -> Coding:
    """The ``br`` coding at ``quality``."""
    return Coding("br", lambda b: bytes(brotli.compress(b, quality=quality)),
                  lambda: _BrotliEncoder(quality), _BrotliDecoder)
