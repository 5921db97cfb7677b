"""Large buffers reused instead of mapped and unmapped for each use (glibc's malloc; else a no-op).

The proxy and the capture writer move big bodies in buffers of 256 KiB to a few MiB: a read from a
socket, a batch of records, a frame. By default glibc's malloc serves each such buffer with a fresh
``mmap`` and gives it back with ``munmap`` when it is freed, so every buffer costs a page fault per
4 KiB page; for a 1 GiB body that is more CPU than the copying itself. With a higher mmap threshold
these buffers come from the heap, where freed memory is reused at once; the trim threshold bounds
how much free memory the heap keeps before it returns it to the system.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Final

#: Buffers up to this size come from the heap (mallopt's M_MMAP_THRESHOLD).
MMAP_THRESHOLD: Final = 8 * 1024 * 1024
#: Free memory at the top of the heap beyond this goes back to the system (M_TRIM_THRESHOLD).
TRIM_THRESHOLD: Final = 16 * 1024 * 1024
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3


def reuse_large_buffers() -> bool:
    """Set glibc's thresholds for this process; returns whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        return bool(
            mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return False
