"""Content codings for the compression layer (gzip, zstd, lz4, snappy, optional br)."""

from aduib_asgi.compression.codings import (
    DEFAULT_LEVELS,
    DEFAULT_POOL_SIZE,
    ZSTD_MAX_WINDOW,
    Coding,
    ContextPool,
    Decoder,
    Encoder,
    TooLarge,
    available_codings,
)

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_POOL_SIZE",
    "ZSTD_MAX_WINDOW",
    "Coding",
    "ContextPool",
    "Decoder",
    "Encoder",
    "TooLarge",
    "available_codings",
]
