"""A capture segment on disk: blocking code that compresses frames, appends them and keeps the index.

:class:`SegmentSink` is the end of the capture pipeline: the trio writer (writer.py) calls it from a
worker thread, where zstd's compression runs without the GIL beside the event loop; the writer
process (child.py) calls it directly. Its memory does not grow with the segment: the index rows of
finished exchanges wait on disk (:class:`IndexSpill`) until the segment closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import struct
import tempfile
import time
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Final, TypeAlias

from wirecap import __version__
from wirecap.capture import frames
from wirecap.capture.index import (
    RUN_HEAD,
    IndexBuilder,
    IndexItem,
    encode_rows,
    index_item,
    run_layout,
    write_index,
)
from wirecap.capture.records import Gap, Header, Record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from wirecap.capture.index import IndexEntry

#: A frame closes at this size of records, or this long after its first record: a crash loses at
#: most the last quarter second, while busy traffic still gets frames big enough to compress well.
FRAME_MAX_BYTES: Final = 1024 * 1024
FRAME_MAX_SECONDS: Final = 0.25
#: Small frames (quiet traffic, streams) get a stronger zstd level than ``level``: at their size it
#: costs little (level 15 packs 256 KiB of stream records in about 7 ms, at most four times a second
#: when frames close on time), and per-record overhead is where their ratio is made; level 12 left
#: a stream's capture about 5% bigger. (size below, at least level)
SMALL_FRAME_LEVELS: Final = ((256 * 1024, 15),)
#: A large frame whose first SAMPLE_BYTES compress to more than STORE_ABOVE of their size at
#: ``level`` (base64, compressed media; JSON gives about 0.4) is stored at zstd's fastest level
#: instead: raw blocks with their checksum, six times faster than level 1 and barely bigger.
SAMPLE_BYTES: Final = 32 * 1024
STORE_ABOVE: Final = 0.6
STORED_LEVEL: Final = -131072
#: A capture is written once and read later, if ever: its pages leave the page cache as the file
#: grows. Every RELEASE_STEP bytes, the RELEASE_WINDOW bytes before the end are handed to
#: posix_fadvise(DONTNEED), which starts writing back the dirty ones and drops those already on
#: disk; the kernel then reuses those pages for the next writes instead of fresh memory.
RELEASE_STEP: Final = 4 * 1024 * 1024
RELEASE_WINDOW: Final = 16 * 1024 * 1024
#: The open segment's finished index rows go to its :class:`IndexSpill` once this many are held:
#: about 1 KiB each in memory, written as one run of a few dozen KiB.
SPILL_ROWS: Final = 1024
#: Bytes read from or copied between files at a time while the index is written.
COPY_BYTES: Final = 1024 * 1024
Opener: TypeAlias = "Callable[[Path], BinaryIO]"


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentHeader:
    """Makes the header record of each new segment: what wrote it and with which settings."""

    redaction: Mapping[str, Any]
    listen: str | None = None
    host: str = dataclasses.field(default_factory=socket.gethostname)
    pid: int = dataclasses.field(default_factory=os.getpid)

    def __call__(self, segment: int) -> Header:
        return Header(
            wirecap_version=__version__,
            created_ns=time.time_ns(),
            host=self.host,
            pid=self.pid,
            segment=segment,
            redaction=self.redaction,
            listen=self.listen,
        )


def open_exclusive(path: Path) -> BinaryIO:
    """Create ``path`` with mode 0600 (never overwriting) and open it for unbuffered writing.

    Unbuffered so that every frame is handed to the kernel as soon as it is written: a process killed
    with SIGKILL loses nothing that the writer finished writing.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb", buffering=0)


@dataclasses.dataclass(slots=True)
class OpenFrame:
    """The frame being collected: what the index needs of each record, and their encodings. Both
    writers collect into one and close it by size or age (their clocks differ: ``now`` is given)."""

    items: list[IndexItem] = dataclasses.field(default_factory=list)
    parts: list[bytes] = dataclasses.field(default_factory=list)
    size: int = 0
    opened: float = 0.0  # when its first record came

    def add(self, record: Record, data: bytes, now: float) -> None:
        """Add ``record``, whose encoding is ``data``."""
        if not self.parts:
            self.opened = now
        self.items.append(index_item(record))
        self.parts.append(data)
        self.size += len(data)

    def payload(self) -> bytes:
        """The frame's CBOR sequence (its parts are released)."""
        payload = b"".join(self.parts)
        self.parts.clear()
        return payload


def _release_pages(file: BinaryIO, start: int) -> None:
    """Best effort: drop ``file``'s page cache from ``start`` (a no-op without posix_fadvise)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError, ValueError):
            advise(file.fileno(), max(0, start), RELEASE_WINDOW, os.POSIX_FADV_DONTNEED)


def sync_and_close(file: BinaryIO) -> None:
    """Flush ``file`` to disk, then close it."""
    with contextlib.suppress(OSError, ValueError):  # a file object without a descriptor (tests)
        os.fsync(file.fileno())
    file.close()


class IndexSpill:
    """The index rows of the open segment's finished exchanges, kept on disk until it closes.

    A busy segment holds millions of exchanges; their rows stay out of memory. Rows are appended in
    runs (:func:`~wirecap.capture.index.encode_rows`: each column's CBOR items, ready to be copied)
    to an unnamed temporary file in the segment's directory, made when the first run comes: mode
    0600, on the capture's file system (not a RAM-backed /tmp), and gone when closed or when the
    process dies, so a crash leaves nothing to clean up (readers rebuild a crashed file's index by
    scanning it). At close, :meth:`write_index_frame` streams the index from the runs, a column at a
    time, through a streaming zstd compressor: closing a segment does not hold its index in memory
    either.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: IO[bytes] | None = None
        self.rows = self.gaps = 0
        self._bytes = 0  # CBOR bytes of the runs' parts

    def add(self, entries: Sequence[IndexEntry], gaps: Sequence[Gap]) -> None:
        """Append a run of finished rows and gaps."""
        if entries or gaps:
            run = encode_rows(entries, gaps)
            self._opened().write(run)
            self.rows += len(entries)
            self.gaps += len(gaps)
            self._bytes += len(run) - RUN_HEAD.size

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            # closed by close(), or by the process's end
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115
        return self._file

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def write_index_frame(self, write: Callable[[bytes], None], level: int) -> int:
        """Write the index frame (docs/FORMAT.md, section 4) of every run through ``write``, in
        pieces of at most :data:`COPY_BYTES`; returns its length. The compressed index is first
        appended to the spill file, after the runs: the frame's head holds its length."""
        file = self._opened()
        file.flush()
        runs_end = file.seek(0, os.SEEK_END)
        skeleton = io.BytesIO()  # the index with no rows: its size plus the runs' is the whole's
        write_index(skeleton, self.rows, self.gaps, lambda _part: ())
        size = len(skeleton.getvalue()) + self._bytes
        with frames.new_compressor(level).stream_writer(file, size=size, closefd=False) as stream:
            write_index(stream, self.rows, self.gaps, lambda part: _run_parts(file, part, runs_end))
        file.flush()
        length = file.tell() - runs_end
        payload = len(frames.INDEX_TAG) + length
        write(struct.pack("<II", frames.INDEX_MAGIC, payload) + frames.INDEX_TAG)  # section 2
        for data in _read_range(file, runs_end, length):
            write(data)
        return 8 + payload


def _run_parts(file: IO[bytes], part: int, runs_end: int) -> Iterator[bytes]:
    """Part ``part`` of every run in ``file`` before ``runs_end``, in order (a column's items, or
    the gaps)."""
    at = 0
    while at < runs_end:
        _rows, _gaps, lengths = run_layout(_read_exact(file, at, RUN_HEAD.size))
        start = at + RUN_HEAD.size + sum(lengths[:part])
        yield from _read_range(file, start, lengths[part])
        at += RUN_HEAD.size + sum(lengths)


def _read_range(file: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    """The bytes ``start`` to ``start + length`` of ``file``, :data:`COPY_BYTES` at a time."""
    end = start + length
    while start < end:
        data = _read_exact(file, start, min(COPY_BYTES, end - start))
        yield data
        start += len(data)


def _read_exact(file: IO[bytes], start: int, length: int) -> bytes:
    data = os.pread(file.fileno(), length, start)
    if len(data) != length:
        raise OSError(f"index spill file: {length} bytes at {start} are cut short")
    return data


class SegmentSink:
    """Blocking writer of one capture segment at a time; call it from one thread at a time."""

    def __init__(
        self,
        directory: Path,
        header: Callable[[int], Header],
        *,
        level: int = 3,
        opener: Opener = open_exclusive,
        prefix: str = "capture",
        pid: int | None = None,
        spill_rows: int = SPILL_ROWS,
    ) -> None:
        self.directory = directory
        self._header = header
        self._level = level
        self._compressors = [
            (limit, frames.new_compressor(max(level, small))) for limit, small in SMALL_FRAME_LEVELS
        ]
        self._compressor = frames.new_compressor(level)
        self._stored = frames.new_compressor(STORED_LEVEL)
        self._opener = opener
        self._prefix = prefix
        self._pid = os.getpid() if pid is None else pid  # in file names: the capturing process
        self._file: BinaryIO | None = None
        self._released_at = 0  # the offset of the last page cache release
        self._index = IndexBuilder()
        self._spill: IndexSpill | None = None
        self._spill_rows = spill_rows
        self.path: Path | None = None
        self.segment = -1
        self.offset = 0
        self.paths: list[Path] = []

    def open(self) -> Path:
        """Start the next segment: create the file and write its header frame."""
        self.segment += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{self._prefix}-{stamp}-{self._pid}-{self.segment:04d}{frames.SEGMENT_SUFFIX}"
        path = self.directory / name
        self._file = self._opener(path)
        self.path = path
        self.paths.append(path)
        self.offset = self._released_at = 0
        self._index = IndexBuilder()
        self._spill = IndexSpill(self.directory)
        header = self._header(self.segment)
        self._write(frames.encode_data_frame([header], self._compressor))
        return path

    def write_records(self, records: Sequence[Record]) -> int:
        """Encode ``records`` and append them as one frame (for code that writes without a
        :class:`~wirecap.capture.writer.CaptureWriter`: tools, tests). Returns the frame's size."""
        return self.write_frame([index_item(r) for r in records], frames.encode_records(records))

    def write_frame(self, items: Sequence[IndexItem], payload: bytes) -> int:
        """Compress and append one frame: ``payload`` is the CBOR sequence of the records that
        ``items`` stand for in the index (see :func:`~wirecap.capture.index.index_item`).
        Returns the frame's size."""
        compressor = self._compressor
        for limit, small in self._compressors:
            if len(payload) < limit:
                compressor = small
                break
        else:
            sample = payload[:SAMPLE_BYTES]
            if len(compressor.compress(sample)) > STORE_ABOVE * len(sample):
                compressor = self._stored
        frame = compressor.compress(payload)
        at = self.offset
        self._write(frame)
        self._index.observe_all(items, at)
        if self._index.finished >= self._spill_rows:
            assert self._spill is not None
            self._spill.add(*self._index.take_finished())
        return len(frame)

    @property
    def index_rows_held(self) -> int:
        """Index rows of the open segment held in memory (the rest wait in its spill file)."""
        return len(self._index)

    def close(self) -> None:
        """Append the index and footer, flush to disk, and close the segment."""
        file = self._finish()
        if file is not None:
            sync_and_close(file)

    def _finish(self) -> BinaryIO | None:
        if self._file is None:
            return None
        assert self._spill is not None
        self._spill.add(*self._index.take_all())
        index_at = self.offset
        length = self._spill.write_index_frame(self._write, self._level)
        self._write(frames.encode_footer(index_at, length))
        self._close_spill()
        file, self._file = self._file, None
        return file

    def _close_spill(self) -> None:
        spill, self._spill = self._spill, None
        if spill is not None:
            spill.close()

    def rotate(self) -> Path:
        """Close the open segment (index and footer) and start the next one."""
        self.close()
        return self.open()

    def abandon(self) -> None:
        """Close the file without an index, after a write error."""
        file, self._file = self._file, None
        with contextlib.suppress(OSError):
            self._close_spill()
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if written is None or written <= 0:
                raise OSError("short write to the capture file")
            view = view[written:]
        self.offset += len(data)
        if self.offset - self._released_at >= RELEASE_STEP:
            self._released_at = self.offset
            _release_pages(self._file, self.offset - RELEASE_WINDOW)
