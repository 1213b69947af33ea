"""Large buffers straight from the OS, so a worker's memory is what it holds.

glibc's malloc serves a block of at least its mmap threshold with a mapping of its
own, given back on free, but raises that threshold (up to 32 MiB on 64-bit) each
time such a block is freed. After the first few 8 MiB raws, the download threads'
objects come from per-thread heap arenas instead, whose freed space stays resident
and fragmented: a worker zipping two 205 x 8 MiB exposures at once peaked at about
510 MB where it held about 340. A fixed 1 MiB threshold keeps every object of that
size in its own mapping (340 MB peak, same CPU time); small allocations are unchanged.
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameter number, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
THRESHOLD = 1024 * 1024


def map_large_buffers(threshold: int = THRESHOLD) -> bool:
    """Fix malloc's mmap threshold; False where the C library has no ``mallopt`` (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
