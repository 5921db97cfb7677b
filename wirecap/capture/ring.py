"""A shared-memory ring that carries big body chunks from the proxy to its capture writer process.

Through the pipe, each byte of a big body cost two kernel copies (the proxy's write, the writer
process's read) and a pipe page allocated and freed per 4 KiB: 0.74 CPU seconds per GiB on this
project's machines, against 0.06 for a copy into memory both processes map. So the proxy copies a
big chunk's data into the ring and sends only where it lies (:meth:`BodyRing.put`); the writer
process copies it out into a bytes object of its own and gives the space back at once
(:meth:`BodyRing.take`), so a chunk never stays in the ring while it waits for its frame, and the
ring can stay small (it only covers the batches in the pipe).

The layout, private to this module: the first 8 bytes of the mapping hold how many bytes of the
ring's history the reader has released (an unsigned 64-bit counter in the machine's order, written
only by the reader, read and written through a ``Q`` memoryview: one aligned 8-byte load or store,
never torn), the data follows from :data:`DATA_OFFSET`. Positions are counted from the start of
the history and never wrap; a chunk lies at ``position % capacity`` and never across the end (the
writer skips to the next lap instead, and the reader releases the skipped bytes with the chunk).
The writer only writes where the reader has released, the reader only reads what a message named,
and the counter is written after the copy out: on x86-64 (the only place where wirecap has been
measured) stores are seen in order, and each side reads the other's writes only after a pipe
message or a system call.

When the ring has no room (the writer process is behind), :meth:`BodyRing.put` says so and the
chunk goes through the pipe as before: the ring changes no behaviour, only the cost. It needs
``os.memfd_create`` (Linux); elsewhere :func:`BodyRing.create` returns None and every chunk takes the
pipe.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

#: Bytes of the ring (the data area): what the batches in the pipe refer to. Each process maps it,
#: so it counts twice in their summed peak RSS. At 1 MiB, 3 in 4 chunks of a 1 GiB body took the
#: ring (the others found it full while the writer process was behind, and took the pipe).
RING_BYTES: Final = 1024 * 1024
DATA_OFFSET: Final = 64  # the released counter, then padding to a cache line


class BodyRing:
    """One side of the ring: the proxy's (:meth:`put`) or the writer process's (:meth:`take`)."""

    def __init__(self, fd: int, capacity: int) -> None:
        self.fd = fd
        self.capacity = capacity
        self._map = mmap.mmap(fd, DATA_OFFSET + capacity)
        self._view = memoryview(self._map)
        self._released = self._view[:8].cast("Q")
        self._written = 0  # writer side: the end of the history so far

    @classmethod
    def create(cls, capacity: int = RING_BYTES) -> BodyRing | None:
        """A new ring, its descriptor to be inherited by the writer process; None without memfd."""
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is None:
            return None
        try:
            fd = memfd_create("wirecap-ring")  # close-on-exec: the writer gets it by pass_fds
        except OSError:
            return None
        try:
            os.ftruncate(fd, DATA_OFFSET + capacity)
            return cls(fd, capacity)
        except OSError:
            os.close(fd)
            return None

    @property
    def released(self) -> int:
        """How much of the history the reader has given back."""
        value: int = self._released[0]
        return value

    def put(self, data: bytes | bytearray | memoryview) -> int | None:
        """Copy ``data`` into the ring and return its position; None when there is no room."""
        size = len(data)
        start = self._written
        offset = start % self.capacity
        if offset + size > self.capacity:  # not across the end: the next lap
            start += self.capacity - offset
            offset = 0
        end = start + size
        if end - self.released > self.capacity:
            return None
        self._view[DATA_OFFSET + offset : DATA_OFFSET + offset + size] = data
        self._written = end
        return start

    def take(self, start: int, size: int) -> bytes:
        """The ``size`` bytes :meth:`put` placed at ``start``, copied out; their space (and any
        skipped before them) is released."""
        offset = DATA_OFFSET + start % self.capacity
        data = bytes(self._view[offset : offset + size])
        self._released[0] = start + size
        return data

    def close(self) -> None:
        """Unmap the ring and close its descriptor."""
        self._released.release()
        self._view.release()
        self._map.close()
        os.close(self.fd)
