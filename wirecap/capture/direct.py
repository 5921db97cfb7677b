"""Appending to a capture file with ``O_DIRECT``: no page cache, no copy into it.

A capture is written once and read later if ever, so the page cache does nothing for it, and on
this project's virtual machines it costs: writing 1 GiB through the page cache took 0.7-0.8 CPU
seconds of kernel time with the pages given back as the file grows (``sink.release_window``), 1.8
without, against 0.05-0.09 with ``O_DIRECT`` (docs/PERFORMANCE.md, session 13). Beside a proxy that
needs both cores, that difference is the capture's cost.

``O_DIRECT`` wants offsets, lengths and memory aligned to the device's logical block, and a capture
file grows by frames of any size. So :class:`DirectAppender` copies each frame into an aligned
staging buffer and writes whole blocks; the frame's last partial block goes out at once too (a
frame must reach the file when it closes: a killed process loses at most what was not written),
padded to the block's end with a zstd skippable frame (``frames.PAD_MAGIC``, zero payload) that every
reader skips. The next frame is written from that block's start again, its bytes over the padding:
the bytes of the frames already there are written again unchanged, so a write cut short by a crash
cannot damage them. :meth:`DirectAppender.finish` writes the last block without padding, so a
closed file holds no padding at all.

Where the filesystem refuses ``O_DIRECT`` (tmpfs on older kernels, some network filesystems),
:func:`enable_direct` says so and the sink writes through the page cache as before; if it accepted
the flag but then rejects a write, :class:`DirectAppender` clears the flag and carries on buffered.
No trio: blocking ``os`` calls on a descriptor the caller owns, made from the sink's thread.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Final

from wirecap.capture.frames import PAD_MAGIC, skippable_frame

#: Alignment of offsets, lengths and memory for O_DIRECT: the page size covers every logical block
#: size in use (512 or 4096 bytes).
BLOCK: Final = 4096
#: Staging buffer: a frame of up to this much goes out in one write; bigger ones in several.
STAGE_BYTES: Final = 256 * 1024
_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)


def enable_direct(fd: int) -> bool:
    """Turn ``O_DIRECT`` on for ``fd``; False where the system or filesystem does not have it."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False
    return True


def _disable_direct(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)


def padding(size: int) -> bytes:
    """A skippable frame of exactly ``size`` bytes (at least 8: its magic and length)."""
    return skippable_frame(PAD_MAGIC, bytes(size - 8))


class DirectAppender:
    """Appends to ``fd``: a new, empty file opened for writing, with ``O_DIRECT`` on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = True  # False once the filesystem refused a direct write
        # Room for a partial block, a full stage, and the padding of its tail.
        self._stage = mmap.mmap(-1, STAGE_BYTES + 2 * BLOCK)
        self._view = memoryview(self._stage)
        self._at = 0  # file offset of the stage's first byte (block-aligned)
        # Bytes in the stage: the file's last partial block (already on disk, padded), then new data.
        self._held = 0

    @property
    def end(self) -> int:
        """The file's logical size: everything appended, padding not counted."""
        return self._at + self._held

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` after what is there; on return it is in the file (followed by padding up
        to the end of its last block)."""
        view = memoryview(data)
        while view:
            take = min(len(view), STAGE_BYTES + BLOCK - self._held)
            self._view[self._held : self._held + take] = view[:take]
            self._held += take
            view = view[take:]
            self._flush()

    def finish(self) -> None:
        """Write the last partial block as it is and cut the file there: no padding is left."""
        if self._held:
            if self.direct:
                _disable_direct(self.fd)
                self.direct = False
            self._pwrite(self._held)
        os.ftruncate(self.fd, self.end)

    def close(self) -> None:
        """Free the staging buffer (the descriptor is the caller's)."""
        self._view.release()
        self._stage.close()

    def _flush(self) -> None:
        """Write the stage's whole blocks and its last partial block, padded; keep that block."""
        held = self._held
        whole = held - held % BLOCK
        length = whole
        if held > whole:
            room = BLOCK - (held - whole)
            if room < 8:  # a skippable frame needs 8 bytes: pad into the next block as well
                room += BLOCK
            self._view[held : held + room] = padding(room)
            length = held + room
        if length:
            self._pwrite(length)
        if whole:  # keep the partial block, to be written again with what follows it
            tail = held - whole
            self._stage.move(0, whole, tail)
            self._at += whole
            self._held = tail

    def _pwrite(self, length: int) -> None:
        view = self._view[:length]
        done = 0
        while done < length:
            try:
                done += os.pwrite(self.fd, view[done:], self._at + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                _disable_direct(self.fd)  # accepted by fcntl, refused by the filesystem
                self.direct = False
