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
The writes themselves are made by a thread of the appender's own, from two staging buffers in
turn, so that the device's time (a direct write returns when the device has the data) overlaps the
caller's compressing of the next frame. No trio: blocking ``os`` calls on a descriptor the caller
owns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import threading
from typing import Final

from wirecap.capture.frames import PAD_MAGIC, skippable_frame

#: Alignment of offsets, lengths and memory for O_DIRECT: the page size covers every logical block
#: size in use (512 or 4096 bytes).
BLOCK: Final = 4096
#: Each of the two staging buffers: a frame of up to this much goes out in one write, bigger ones
#: in several. On this project's virtual machines every direct write costs a round trip to the
#: device: 1 GiB took 0.83-0.86 s in 256 KiB writes, 0.69-0.70 s in 1 MiB ones (docs/PERFORMANCE.md,
#: session 14). The writer process's largest frame, stored as it is (a big body that does not
#: compress: 1 MiB and the ring slot that ends it, child.FRAME_ROOM), fits one stage (tested): at
#: 1 MiB it went out in two writes, the second a padded block or a few, and a 1 GiB body ran at
#: 595 MiB/s against 626 with one (session 16).
STAGE_BYTES: Final = (1024 + 256 + 8) * 1024
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
    """Appends to ``fd``: a new, empty file opened for writing, with ``O_DIRECT`` on.

    Two staging buffers take turns: while a thread of the appender's own writes one (a direct
    write returns only when the device has the data: ~0.7 ms a MiB here), the caller fills the
    other, so compressing the next frame overlaps writing the last one. :meth:`append` returns
    once its data is handed over and the write before it is done (at most one is in flight);
    :meth:`wait` once everything is in the file. A write error is raised by the next call.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = True  # False once the filesystem refused a direct write
        # Each stage has room for a partial block, a full stage, and the padding of its tail.
        self._stages = [mmap.mmap(-1, STAGE_BYTES + 2 * BLOCK) for _ in range(2)]
        self._views = [memoryview(stage) for stage in self._stages]
        self._free = [threading.Event() for _ in range(2)]  # set: no write from it in flight
        for free in self._free:
            free.set()
        self._current = 0  # the stage being filled
        self._at = 0  # file offset of the current stage's first byte (block-aligned)
        # Bytes in the current stage: the file's last partial block (on disk, padded), then new data.
        self._held = 0
        self._error: OSError | None = None
        self._writes: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="wirecap-disk", daemon=True)
        self._thread.start()

    @property
    def end(self) -> int:
        """The file's logical size: everything appended, padding not counted."""
        return self._at + self._held

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` after what is there: its writes start now, the last one followed by
        padding up to the end of its last block."""
        view = memoryview(data)
        while view:
            take = min(len(view), STAGE_BYTES + BLOCK - self._held)
            self._views[self._current][self._held : self._held + take] = view[:take]
            self._held += take
            view = view[take:]
            self._submit(pad=not view)

    def wait(self) -> None:
        """Return once everything appended is in the file (raise the error of a write that
        failed)."""
        for free in self._free:
            free.wait()
        self._raise_error()

    def finish(self) -> None:
        """Write the last partial block as it is and cut the file there: no padding is left."""
        self.wait()
        if self._held:
            if self.direct:
                _disable_direct(self.fd)
                self.direct = False
            self._pwrite(self._current, self._held, self._at)
        os.ftruncate(self.fd, self.end)

    def close(self) -> None:
        """Stop the writing thread and free the staging buffers (the descriptor is the caller's)."""
        self._writes.put(None)
        self._thread.join()
        for view, stage in zip(self._views, self._stages, strict=True):
            view.release()
            with contextlib.suppress(BufferError):  # a view still held: freed with it instead
                stage.close()

    def _submit(self, pad: bool) -> None:
        """Hand the current stage's whole blocks to the writing thread (with ``pad``, its last
        partial block too, padded), and go on in the other stage from that partial block."""
        held = self._held
        whole = held - held % BLOCK
        length = whole
        current = self._views[self._current]
        if pad and held > whole:
            room = BLOCK - (held - whole)
            if room < 8:  # a skippable frame needs 8 bytes: pad into the next block as well
                room += BLOCK
            current[held : held + room] = padding(room)
            length = held + room
        if not length:
            return
        self._free[self._current].clear()
        self._writes.put((self._current, length, self._at))
        other = 1 - self._current
        self._free[other].wait()
        self._raise_error()
        tail = held - whole  # written again with what follows it
        self._views[other][:tail] = current[whole:held]
        self._current, self._at, self._held = other, self._at + whole, tail

    def _write_loop(self) -> None:
        while (job := self._writes.get()) is not None:
            stage, length, at = job
            try:
                if self._error is None:
                    self._pwrite(stage, length, at)
            except OSError as exc:
                self._error = exc.with_traceback(None)  # its frames hold views of the stage
            finally:
                self._free[stage].set()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _pwrite(self, stage: int, length: int, at: int) -> None:
        view = self._views[stage][:length]
        done = 0
        while done < length:
            try:
                done += os.pwrite(self.fd, view[done:], at + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                _disable_direct(self.fd)  # accepted by fcntl, refused by the filesystem
                self.direct = False
