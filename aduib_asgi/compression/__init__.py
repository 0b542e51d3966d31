"""Content codings for the compression layer (gzip, zstd, lz4, snappy, optional br)."""

from aduib_asgi.compression.codings import (
    DEFAULT_LEVELS,
    Coding,
    Decoder,
    Encoder,
    TooLarge,
    available_codings,
)

__all__ = ["DEFAULT_LEVELS", "Coding", "Decoder", "Encoder", "TooLarge", "available_codings"]
