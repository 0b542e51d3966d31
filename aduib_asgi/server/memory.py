"""Large buffers go back to the operating system when they are freed.

glibc's malloc serves a large request with ``mmap`` and returns it on ``free`` -
until the first such free: then it raises its *dynamic* mmap threshold to that
size, and later buffers of that size come from the heap, which it keeps. A few
hostile 16 MiB messages or bodies would leave the process that much larger for
good. :func:`return_large_allocations` fixes the threshold (which also turns the
dynamic adjustment off): every allocation of at least ``threshold`` bytes is
mapped on its own and unmapped when freed; smaller ones are unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["LARGE_ALLOCATION", "return_large_allocations"]

#: Allocations of at least this size are returned to the OS when freed (demo default).
LARGE_ALLOCATION = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_large_allocations(threshold: int = LARGE_ALLOCATION) -> bool:
    """Make glibc map (and unmap on free) every allocation of ``threshold`` bytes or more.

    Returns False where that is not possible (not Linux/glibc): nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
