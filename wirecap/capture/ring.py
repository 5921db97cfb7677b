"""A shared-memory ring that carries big body chunks from the proxy to its capture writer process.

Through the pipe, each byte of a big body cost two kernel copies (the proxy's write, the writer
process's read) and a pipe page allocated and freed per 4 KiB: 0.74 CPU seconds per GiB on this
project's machines, against 0.06 for a copy into memory both processes map. So big chunks go
through memory both processes map, and the pipe carries only where they lie. They get there two
ways: the relay receives a big response chunk straight from the upstream's socket into a slot of
the ring (:meth:`BodyRing.reserve`, then ``recv_into``; the client is sent the slot's bytes, so
the proxy never copies them), or the capture pump copies a chunk it was handed into the ring
(:meth:`BodyRing.put`). The writer process copies each chunk from where it lies straight into
its frame (:meth:`BodyRing.chunk`) and gives its space back as it goes, never past the point the
batch names nor past a chunk of the batch still to be copied (:meth:`RingChunk.copied`). The
proxy computes that point: the start of the oldest slot whose record has not yet gone out in a
batch, or the end of the history when there is none. Slots are received into by many exchanges at
once and their records reach the pipe in any order, so the reader must never release past a slot
it has not yet been told of.

The layout, private to this module: the first 8 bytes of the mapping hold how many bytes of the
ring's history the reader has released (an unsigned 64-bit counter in the machine's order, written
only by the reader, read and written through a ``Q`` memoryview: one aligned 8-byte load or store,
never torn), the next 8 a flag by which the proxy asks to be woken when space is released, the
data follows from :data:`DATA_OFFSET`. Positions are counted from the start of the history and
never wrap; a chunk lies at ``position % capacity`` and never across the end (the writer skips to
the next lap instead; the skipped end counts as written, so the reader can release it before the
chunk after it is there). The writer only writes where the reader has released, the reader only
reads what a message named, and the counter is written after the copy out: on x86-64 (the only
place where wirecap has been measured) stores are seen in order, and each side reads the other's
writes only after a pipe message or a system call.

When the ring has no room (the writer process is behind), :meth:`BodyRing.reserve` and
:meth:`BodyRing.put` say so. The relay then waits for room, as it waits for a full capture buffer
under the ``block`` policy: the writer process signals an eventfd when it releases space the proxy
asked for (:meth:`BodyRing.want`). Under ``drop``, or without a ring, the chunk is received into a
buffer of its own and goes through the pipe: the ring changes no behaviour, only the cost. It needs
``os.memfd_create`` (Linux); elsewhere :func:`BodyRing.create` returns None and every chunk takes
the pipe.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import Final

#: Bytes of the ring (the data area): the chunks received or put but not yet copied out by the
#: writer process. Each process maps it, so it counts twice in their summed peak RSS: 2 MiB held
#: a 1 GiB body as fast as 4 MiB did, within the noise (docs/PERFORMANCE.md, session 14).
RING_BYTES: Final = 2 * 1024 * 1024
#: The most the relay receives into one slot: a quarter MiB a read where the socket has it costs a
#: quarter of the system calls, records and batches of 64 KiB reads (a 1 GiB body: 499-537 MiB/s
#: against 435-453, the proxy 1.3-1.6 CPU seconds against 1.7-1.8). The only records bigger than
#: the proxy's read size.
RING_SLOT_BYTES: Final = 256 * 1024
DATA_OFFSET: Final = 64  # the released counter, the wanted flag, then padding to a cache line


class BodyRing:
    """One side of the ring: the proxy's (:meth:`put`, :meth:`reserve`) or the writer process's
    (:meth:`take`, :meth:`release`). ``event_fd``: an eventfd the reader signals when it releases
    space the proxy said it wanted (:meth:`want`); -1 without one."""

    def __init__(self, fd: int, capacity: int, event_fd: int = -1) -> None:
        self.fd = fd
        self.capacity = capacity
        self.event_fd = event_fd
        self._map = mmap.mmap(fd, DATA_OFFSET + capacity)
        self._view = memoryview(self._map)
        self._words = self._view[:16].cast("Q")  # released, wanted
        self._written = 0  # writer side: the end of the history so far

    @classmethod
    def create(cls, capacity: int = RING_BYTES) -> BodyRing | None:
        """A new ring, its descriptors to be inherited by the writer process; None without memfd."""
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is None:
            return None
        try:
            fd = memfd_create("wirecap-ring")  # close-on-exec: the writer gets it by pass_fds
        except OSError:
            return None
        try:
            os.ftruncate(fd, DATA_OFFSET + capacity)
            ring = cls(fd, capacity)
        except OSError:
            os.close(fd)
            return None
        eventfd = getattr(os, "eventfd", None)
        if eventfd is not None:
            with contextlib.suppress(OSError):
                ring.event_fd = eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return ring

    @property
    def released(self) -> int:
        """How much of the history the reader has given back."""
        value: int = self._words[0]
        return value

    def want(self) -> None:
        """Ask the reader to signal ``event_fd`` when it next releases space (the proxy is
        waiting for room). The flag and the counter are separate words that each side writes
        and the other reads with no fence between: a signal can be missed, so whoever waits for
        it waits with a timeout."""
        self._words[1] = 1

    def put(self, data: bytes | bytearray | memoryview) -> int | None:
        """Copy ``data`` into the ring and return its position; None when there is no room."""
        slot = self.reserve(len(data))
        if slot is None:
            return None
        start, view = slot
        view[:] = data
        return start

    def reserve(self, size: int) -> tuple[int, memoryview] | None:
        """Claim ``size`` bytes for the caller to fill in place (a socket's ``recv_into``): their
        position and a view of them, or None when there is no room. Give back what was not filled
        with :meth:`shrink` before anything else is put.

        Never across the end: the rest of the lap is skipped then, for good (counted as written,
        so that the reader may release it before the chunk that follows it is there)."""
        if size > self.capacity:
            return None
        start = self._written
        offset = start % self.capacity
        if offset + size > self.capacity:
            start += self.capacity - offset
            self._written = start
        if start + size - self.released > self.capacity:
            return None
        self._written = start + size
        offset = DATA_OFFSET + start % self.capacity
        return start, self._view[offset : offset + size]

    def shrink(self, start: int, size: int, used: int) -> None:
        """Only ``used`` bytes of the last reservation (``start``, ``size``) were filled: the rest is
        free again."""
        if self._written == start + size:
            self._written = start + used

    @property
    def written(self) -> int:
        """The end of the history so far: everything before it has been put or reserved."""
        return self._written

    def take(self, start: int, size: int) -> bytes:
        """The ``size`` bytes put or received at ``start``, copied out (their space stays held
        until :meth:`release`)."""
        return bytes(self.chunk(start, size))

    def chunk(self, start: int, size: int) -> RingChunk:
        """The ``size`` bytes put or received at ``start``, where they lie: valid until their space
        is released (:meth:`RingChunk.copied` releases it, up to where the chunk's batch allows)."""
        offset = DATA_OFFSET + start % self.capacity
        return RingChunk(self, start, offset, offset + size)

    def release(self, position: int) -> None:
        """Give back everything before ``position`` of the history (the reader side; positions
        only move forward)."""
        words = self._words
        if position > words[0]:
            words[0] = position
            if words[1]:
                words[1] = 0
                if self.event_fd >= 0:
                    with contextlib.suppress(OSError):
                        os.eventfd_write(self.event_fd, 1)

    def close(self) -> None:
        """Unmap the ring and close its descriptor (a view still held elsewhere, the mapping goes
        with its last reference instead)."""
        self._words.release()
        if self.event_fd >= 0:
            os.close(self.event_fd)
        with contextlib.suppress(BufferError):
            self._view.release()
            self._map.close()
        os.close(self.fd)


#: Each byte as a one-byte string, for :meth:`RingChunk.__contains__`.
_BYTES: Final = tuple(bytes((b,)) for b in range(256))


class RingChunk:
    """A big body chunk where it lies in the writer process's map of the ring (:meth:`BodyRing.chunk`):
    copied once, straight into its frame, rather than out of the ring and then again into the
    frame (0.1 CPU seconds a GiB each). It offers what redaction's prefilter needs without a copy:
    ``byte in chunk`` (memchr over the map, :meth:`mmap.mmap.find`), and ``bytes(chunk)`` for the
    rare chunk that must be searched further. Once its frame has it, :meth:`copied` gives the ring's
    space back up to :attr:`release_to` (set by the reader: never past a chunk still to copy)."""

    __slots__ = ("_end", "_ring", "_start", "position", "release_to")

    def __init__(self, ring: BodyRing, position: int, start: int, end: int) -> None:
        self._ring = ring
        self._start = start
        self._end = end
        self.position = position  # in the ring's history
        self.release_to = 0  # what may be released once this chunk is copied

    def __len__(self) -> int:
        return self._end - self._start

    def __contains__(self, byte: int) -> bool:
        return self._ring._map.find(_BYTES[byte], self._start, self._end) >= 0

    def __bytes__(self) -> bytes:
        return self._ring._map[self._start : self._end]

    def __repr__(self) -> str:
        return f"RingChunk({self.position}, {len(self)})"

    def view(self) -> memoryview:
        """The chunk's bytes, not copied (release the view before the ring is closed)."""
        return self._ring._view[self._start : self._end]

    def copied(self) -> None:
        """The chunk is in its frame: give back the ring's space it allows."""
        self._ring.release(self.release_to)
