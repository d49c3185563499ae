"""CPU training: keep freed memory in the process for the next step instead of handing it back to the OS.

Each training step allocates and frees the same large tensors: a gradient as large as the colour-feature grid
(~40 MB on Lego), the corners' indices and weights of ~10^5 samples, the march's per-point buffers. glibc serves
allocations above its mmap threshold (128 KB, rising to at most 32 MB as large blocks are freed) with fresh pages
from the OS and returns them on free, so every step page-faults them in again: 9766 page faults for each 40 MB block,
and a 40 MB ``new_zeros`` + ``index_add_`` took 29 ms against 12 ms with the settings below, on this project's
2-core machine. PyTorch's CPU tuning guide recommends an allocator such as jemalloc for the same reason; this needs
no library and no ``LD_PRELOAD``.

The price is that the process's resident memory stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
"""Allocations below this come from the heap, and up to this much free memory at its top is kept."""

_applied = False


def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where that is not glibc (macOS,
    Windows, musl), which is left as it is."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    return _applied
