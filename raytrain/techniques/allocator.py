"""Allocator tuning: keep freed memory in the process instead of returning it to the OS.

glibc serves blocks above a (dynamic) threshold with mmap and unmaps them on free, so every
training step re-faults and re-zeroes the pages of its activation and gradient buffers. Pinning
the mmap threshold and disabling heap trimming keeps those pages mapped (what that gains: bench/README.md).
A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit; larger blocks still use mmap
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Apply the glibc settings to this process; returns whether they took effect."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
