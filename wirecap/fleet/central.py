"""The collector's files: runs of shipped frames, written as capture segments. Blocking file I/O.

A run is a file holding a source segment's header frame and then a contiguous stretch of that
segment's frames, byte for byte, from source offset START on: file offset ``h + (o - START)``
holds the frame at source offset ``o`` (``h``: the header frame's length). It is a valid capture
segment: it gets its index and footer when it is closed, mode 0600, and it is named
``SOURCE~SEGMENT~START~COLLECTOR.cbor.zst`` so that the reader, which orders files by header time,
segment number and then name, reads a segment's runs in source order whichever collector wrote
them. A frame that does not continue an open run starts a new one.

Exactly once, as readers see it: the stream stores each frame once (message-id de-duplication),
but a frame can be delivered again, to this collector or another, when a collector was killed
between writing it and acknowledging it. :func:`held_by_runs` tells whether any run in the
directory already holds a frame's exact bytes at its place; the collector asks it for every
frame delivered more than once and every frame that starts a run, and skips those held.

While a collector writes a run it holds an exclusive ``flock`` on it; a run without a footer that
nobody holds (its collector died) gets its index with :func:`repair_orphans`, its cut-off tail (a
frame written in part, never acknowledged, so delivered again) moved aside as the reader's repair
does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import TYPE_CHECKING, BinaryIO, Final

from wirecap.capture import CaptureError, CaptureFile, repair_index
from wirecap.capture import frames as framing
from wirecap.capture.decoding import Budget, OverBudget, read_frame_records
from wirecap.capture.index import IndexBuilder, index_item
from wirecap.capture.sink import SPILL_ROWS, IndexSpill, open_exclusive, sync_and_close
from wirecap.fleet.config import token_of

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger("wirecap.fleet")

SEPARATOR: Final = "~"
#: A run is closed and the next frame starts another once the file reaches this size.
RUN_MAX_BYTES: Final = 256 * 1024 * 1024
#: zstd level of a run's index (the frames themselves are stored as they came).
INDEX_LEVEL: Final = 3


def run_prefix(source: str, segment: str) -> str:
    """The start of the names of every run of one source segment."""
    stem = segment.removesuffix(framing.SEGMENT_SUFFIX)
    return f"{token_of(source)}{SEPARATOR}{token_of(stem)}{SEPARATOR}"


def run_name(source: str, segment: str, start: int, collector: str) -> str:
    return (
        f"{run_prefix(source, segment)}{start:015d}{SEPARATOR}{collector}{framing.SEGMENT_SUFFIX}"
    )


def run_start(name: str) -> int | None:
    """The source offset a run's name says it starts at (None for another file)."""
    parts = name.removesuffix(framing.SEGMENT_SUFFIX).split(SEPARATOR)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return int(parts[2])


class RunFile:
    """One run being written: header frame, then frames appended as they come; its index is
    built from each frame's records (file offsets), and written with the footer on :meth:`close`."""

    def __init__(self, directory: Path, name: str, header_frame: bytes, start: int) -> None:
        self.path = directory / name
        self.start = start  # source offset of the first frame after the header
        self.end = start  # source offset after the last frame appended
        self._index = IndexBuilder()
        self._spill = IndexSpill(directory)
        self.offset = 0
        self.dirty = False
        # Made under a name readers and repair_orphans do not look at, locked, given its header,
        # and only then renamed into place: nobody ever sees it unlocked and without a header.
        hidden = directory / f".{name}.new"
        self._file: BinaryIO = open_exclusive(hidden)
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write(header_frame)
        os.rename(hidden, self.path)
        self.closed = False

    def append(self, offset: int, frame: bytes) -> None:
        """Append the frame at source ``offset`` (which must continue the run)."""
        if offset != self.end:
            raise ValueError(f"frame at {offset} does not continue a run ending at {self.end}")
        at = self.offset
        self._write(frame)
        self.end += len(frame)
        self._observe(frame, at)

    def _observe(self, frame: bytes, at: int) -> None:
        try:
            info = framing.parse_frame(frame, 0)
            if info.kind != "data":
                return
            records, _problem = read_frame_records(frame, info, Budget.for_file(len(frame)))
        except (framing.FrameError, OverBudget):
            return  # stored as it came; the reader reports it
        self._index.observe_all([index_item(r) for r in records], at)
        if self._index.finished >= SPILL_ROWS:
            self._spill.add(*self._index.take_finished())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError(f"short write to {self.path}")
            view = view[written:]
        self.offset += len(data)
        self.dirty = True

    def sync(self) -> None:
        """Flush what was appended to disk (before the frames are acknowledged)."""
        if not self.closed and self.dirty:
            os.fsync(self._file.fileno())
            self.dirty = False

    def close(self) -> None:
        """Append the index and footer, flush to disk, and close (the lock goes with the file)."""
        if self.closed:
            return
        self.closed = True
        self._spill.add(*self._index.take_all())
        index_at = self.offset
        length = self._spill.write_index_frame(self._write, INDEX_LEVEL)
        self._write(framing.encode_footer(index_at, length))
        self._spill.close()
        sync_and_close(self._file)

    def abandon(self) -> None:
        """Close without an index (after a write error): the next repair_orphans indexes it."""
        if not self.closed:
            self.closed = True
            self._spill.close()
            with contextlib.suppress(OSError):
                self._file.close()


def _frame_at(path: Path, header_length: int, start: int, offset: int, frame: bytes) -> bool:
    """Whether the run at ``path`` (starting at source ``start``) holds ``frame`` at ``offset``."""
    at = header_length + offset - start
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.pread(fd, len(frame), at) == frame
    finally:
        os.close(fd)


def _header_length(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.pread(fd, 64 * 1024, 0)
    finally:
        os.close(fd)
    try:
        return framing.parse_frame(head, 0).length
    except framing.FrameError:
        return None


def held_by_runs(directory: Path, source: str, segment: str, offset: int, frame: bytes) -> bool:
    """Whether some run in ``directory`` already holds ``frame`` (from ``source``'s ``segment``
    at ``offset``): the same bytes at the place that offset maps to."""
    prefix = run_prefix(source, segment)
    with os.scandir(directory) as entries:
        names = [e.name for e in entries if e.name.startswith(prefix)]
    for name in names:
        start = run_start(name)
        if start is None or start > offset or not name.endswith(framing.SEGMENT_SUFFIX):
            continue
        path = directory / name
        header_length = _header_length(path)
        if header_length is not None and _frame_at(path, header_length, start, offset, frame):
            return True
    return False


def _unlocked(path: Path) -> bool:
    """Whether nobody holds ``path``'s lock (so nobody is writing it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing the descriptor releases the lock taken
    return True


def repair_orphans(directory: Path) -> list[Path]:
    """Give their index every run in ``directory`` that has none and that no collector is writing
    (its collector died); returns those repaired. A run without a whole header frame holds no
    frame (the header is written first) and is removed."""
    repaired = []
    for path in sorted(directory.glob(f"*{framing.SEGMENT_SUFFIX}")):
        if run_start(path.name) is None:
            continue
        try:
            with CaptureFile(path) as capture:
                if capture.indexed:
                    continue
        except CaptureError:
            if _unlocked(path):
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        if not _unlocked(path):
            continue
        try:
            repair_index(path)
        except (CaptureError, OSError) as exc:
            logger.warning("%s: cannot index it (%s)", path.name, exc)
            continue
        repaired.append(path)
        logger.warning("%s: indexed after its collector stopped", path.name)
    return repaired
