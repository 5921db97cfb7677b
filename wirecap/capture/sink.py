"""A capture segment on disk: blocking code that compresses frames, writes them and keeps the index.

:class:`SegmentSink` is the end of both capture pipelines: the trio writer (writer.py) runs it in a
worker thread, the writer process (child.py) runs it in its own process. It imports no trio, so the
writer process starts without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, TypeAlias

from wirecap import __version__
from wirecap.capture import frames, packing
from wirecap.capture.direct import DirectAppender, enable_direct
from wirecap.capture.index import IndexBuilder, IndexItem, index_item, packed_index_item
from wirecap.capture.records import (
    BodyChunk,
    Header,
    Record,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.capture.ring import RingChunk

FRAME_MAX_BYTES: Final = 1024 * 1024
FRAME_MAX_SECONDS: Final = 0.25
#: Frames smaller than this are compressed at SMALL_FRAME_LEVEL (at least): see SegmentSink.
SMALL_FRAME_BYTES: Final = 256 * 1024
#: zstd level of a large frame written in a hurry (see SegmentSink.write_encoded): no entropy
#: coding, so data without repeats (base64) is stored as it is at several GB/s; text with repeats
#: still compresses almost as well as at level 1 (JSON: 21% against 19%).
HURRIED_LEVEL: Final = -1
#: zstd level of a large frame found not to compress (see SegmentSink.write_encoded): zstd's
#: fastest (ZSTD_minCLevel), which all but skips the search for repeats and stores the frame's bytes
#: in raw blocks with its checksum: 0.17 against 0.24 ms a MiB of base64 at HURRIED_LEVEL here,
#: whose output is the same size.
STORED_LEVEL: Final = -131072
#: How hard a large frame is compressed (see SegmentSink.write_encoded).
Pace: TypeAlias = Literal["level", "hurried", "stored"]
#: A small frame closes 250 ms after its first record, so at most four a second take this level:
#: ~9 ms each at 256 KiB on this machine's cores, under 4% of one in the worst case. SSE records
#: (workload B): 19.7% of the raw bytes at 9, 19.4% at 12, 18.5% at 15 (but ~35 ms a frame).
SMALL_FRAME_LEVEL: Final = 12
#: Frames smaller than this get TINY_FRAME_LEVEL (at least): ~13 ms for 73 KB of SSE records (less
#: below 64 KiB), so at most ~50 ms a second (four such frames). SSE records: 18.5% of the raw
#: bytes against 19.4% at level 12.
TINY_FRAME_BYTES: Final = 64 * 1024
TINY_FRAME_LEVEL: Final = 15
#: The capture file's pages leave the page cache as the file grows (see release_window):
#: every RELEASE_STEP bytes, the last RELEASE_WINDOW bytes are handed to posix_fadvise(DONTNEED),
#: which starts writing back the dirty ones and drops those already on disk.
RELEASE_STEP: Final = 4 * 1024 * 1024
RELEASE_WINDOW: Final = 16 * 1024 * 1024
Prepare: TypeAlias = Callable[[Record], Record]
#: A Prepare hook's optional method for batches of packed records (see Redactor.redact_batch).
RedactBatch: TypeAlias = Callable[[Sequence[packing.PackedRecord]], Sequence[packing.Redacted]]
Opener: TypeAlias = Callable[[Path], BinaryIO]


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentHeader:
    """Makes the header record of each new segment: what wrote it (host and pid of the process that
    captured, which is not the writer process's) and its settings. A value, so it can be pickled to
    the writer process."""

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


def sync_and_close(file: BinaryIO) -> None:
    """Flush ``file`` to disk, drop it from the page cache, then close it."""
    # Not every file object has a real descriptor (tests); the data is written either way.
    with contextlib.suppress(OSError, ValueError):
        os.fsync(file.fileno())
        release_pages(file.fileno(), 0, 0)
    file.close()


def release_pages(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to write back and drop the page cache of ``fd``'s ``length`` bytes from
    ``offset`` (0: to the end). Best effort; a no-op where posix_fadvise is missing.

    A capture is written once and read later, if ever, so its pages are of no use in the cache. And
    they are costly: new page cache pages are fresh memory, and on this project's virtual machines a
    first touch of fresh memory cost up to 2 CPU seconds per GiB written (the copy into the page
    cache was 43% of the writer process's time on a 1 GiB body); pages given back as the file grows
    are reused at once, still warm (0.3 s per GiB, measured in docs/PERFORMANCE.md).
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def release_window(fd: int, offset: int) -> None:
    """Give back the page cache of the RELEASE_WINDOW bytes of ``fd`` before ``offset``, for a file
    that grows by appends and calls this every RELEASE_STEP bytes: each page is in four windows,
    so the first call starts its writeback and a later one, once it is on disk, drops it. Pages
    still being written back stay in the cache, as without this (a slow disk)."""
    start = max(0, offset - RELEASE_WINDOW)
    release_pages(fd, start, offset - start)


def open_exclusive(path: Path) -> BinaryIO:
    """Create ``path`` with mode 0600 (never overwriting) and open it for unbuffered writing.

    Unbuffered so that every frame is handed to the kernel as soon as it is written: a process killed
    with SIGKILL loses nothing that the writer finished writing.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb", buffering=0)


def record_size(record: Record) -> int:
    """Approximate encoded size of ``record``, for frame and drop accounting."""
    if isinstance(record, BodyChunk):
        return len(record.data) + 48
    if isinstance(record, RequestReceived | UpstreamRequest | ResponseHead):
        return len(record.head) + 128
    return 96


def _in_memory(packed: packing.PackedRecord) -> packing.PackedRecord:
    """``packed`` with a body chunk that lies in the capture's shared ring copied out."""
    code, values = packed
    if code == packing.BODY and type(values[3]) is RingChunk:
        return code, (*values[:3], bytes(values[3]))
    return packed


class SegmentSink:
    """Blocking writer of one capture segment at a time. Run its methods in a worker thread.

    ``direct``: write with ``O_DIRECT`` where the filesystem has it (direct.py), bypassing the page
    cache; otherwise, and with ``direct=False``, through it, giving its pages back as the file grows.

    Not thread-safe, in two halves: :meth:`encode` (redaction and CBOR) touches no file state, so one
    thread may encode while another writes; each half is called from one thread at a time.
    """

    def __init__(
        self,
        directory: Path,
        header: Callable[[int], Header],
        *,
        prepare: Prepare | None = None,
        level: int = 3,
        opener: Opener = open_exclusive,
        prefix: str = "capture",
        pid: int | None = None,
        direct: bool = True,
    ) -> None:
        self.directory = directory
        self._header = header
        self._prepare = prepare
        #: The redactor's way with packed records, when the hook has one (see encode_batch).
        self._redact_batch: RedactBatch | None = getattr(prepare, "redact_batch", None)
        self._level = level
        self._compressor = frames.new_compressor(level)
        # Small frames (quiet traffic, SSE) get a stronger level: cheap at their size, and it is where
        # per-record overhead shows. Large frames keep ``level`` so big bodies stay fast.
        self._small_compressor = frames.new_compressor(max(level, SMALL_FRAME_LEVEL))
        self._tiny_compressor = frames.new_compressor(max(level, TINY_FRAME_LEVEL))
        self._hurried_compressor = frames.new_compressor(min(level, HURRIED_LEVEL))
        self._stored_compressor = frames.new_compressor(STORED_LEVEL)
        self._opener = opener
        self._prefix = prefix
        self._pid = os.getpid() if pid is None else pid  # in file names: the capturing process
        self._file: BinaryIO | None = None
        self._fd = -1  # the file's descriptor, when it has one (see _release)
        #: ``O_DIRECT`` writes where the filesystem has them (direct.py): no page cache at all.
        self._direct = direct
        self._appender: DirectAppender | None = None
        self._released_at = 0  # the offset of the last page cache release
        self._index = IndexBuilder()
        self.path: Path | None = None
        self.segment = -1
        self.offset = 0
        self.opened_at = 0.0
        self.paths: list[Path] = []

    def open(self) -> Path:
        """Start the next segment: create the file and write its header frame."""
        self.segment += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = (
            self.directory
            / f"{self._prefix}-{stamp}-{self._pid}-{self.segment:04d}{frames.SEGMENT_SUFFIX}"
        )
        self._file = self._opener(path)
        try:
            self._fd = self._file.fileno()
        except (OSError, ValueError):  # a file object without a descriptor (tests)
            self._fd = -1
        if self._direct and self._fd >= 0 and enable_direct(self._fd):
            self._appender = DirectAppender(self._fd)
        self.path = path
        self.paths.append(path)
        self.offset = 0
        self._released_at = 0
        self.opened_at = time.monotonic()
        self._index = IndexBuilder()
        self._write(frames.encode_data_frame([self._header(self.segment)], self._compressor))
        return path

    def encode(self, record: Record) -> tuple[Record, bytes]:
        """``record`` prepared (redacted) and its CBOR encoding, for :meth:`write_encoded`.

        Any thread may call it, one at a time (the redactor keeps per-exchange state).
        """
        if self._prepare is not None:
            record = self._prepare(record)
        return record, frames.encode_record(record)

    def encode_batch(
        self, batch: Sequence[packing.PackedRecord]
    ) -> list[tuple[IndexItem, bytes, bytes | bytearray | RingChunk]]:
        """:meth:`encode` for packed records (the writer process's input), a batch at a time: for
        each, what the index needs of it and its CBOR encoding, in two parts (see
        :func:`packing.encode_packed_split`). Records are redacted (a batch at a time, see
        ``Redactor.redact_batch``) and encoded as they are packed; one that a body pattern matches
        in a body or URL comes back from the redactor as a record object and goes the record's way.
        """
        if self._prepare is None:
            done: Sequence[packing.Redacted] = [(packed, ()) for packed in batch]
        elif self._redact_batch is not None:
            done = self._redact_batch(batch)
        else:  # a hook that only knows records (and bytes)
            done = [self._prepare(packing.unpack_record(_in_memory(packed))) for packed in batch]
        encoded: list[tuple[IndexItem, bytes, bytes | bytearray | RingChunk]] = []
        for item in done:
            if type(item) is tuple:
                packed, redactions = item
                head, data = packing.encode_packed_split(packed, redactions)
                encoded.append((packed_index_item(packed), head, data))
            else:
                assert not isinstance(item, tuple)
                encoded.append((index_item(item), frames.encode_record(item), b""))
        return encoded

    def write_frame(self, records: Sequence[Record]) -> int:
        """Prepare, encode, compress and append ``records`` as one frame; returns the frame's size."""
        prepared: list[Record] = []
        parts: list[bytes] = []
        for record in records:
            record, data = self.encode(record)
            prepared.append(record)
            parts.append(data)
        return self.write_encoded(prepared, b"".join(parts))

    def write_encoded(
        self,
        records: Sequence[IndexItem],
        payload: bytes | bytearray | memoryview,
        *,
        pace: Pace = "level",
    ) -> int:
        """Compress and append one frame: ``payload`` is the encoding of ``records`` (from
        :meth:`encode`). Returns the frame's size. ``pace`` applies to a large frame: ``"level"``
        compresses it at the configured level, ``"hurried"`` at :data:`HURRIED_LEVEL` (the writer
        is falling behind the traffic: a bigger file rather than slower traffic), ``"stored"`` at
        :data:`STORED_LEVEL` (its bytes do not compress: base64, compressed media)."""
        if len(payload) < TINY_FRAME_BYTES:
            compressor = self._tiny_compressor
        elif len(payload) < SMALL_FRAME_BYTES:
            compressor = self._small_compressor
        elif pace == "level":
            compressor = self._compressor
        else:
            compressor = self._hurried_compressor if pace == "hurried" else self._stored_compressor
        frame = bytes(compressor.compress(payload))
        at = self.offset
        self._write(frame)
        self._index.observe_all(records, at)
        return len(frame)

    def flush(self) -> None:
        """Return once every frame written so far is in the file (an ``O_DIRECT`` segment is
        written by a thread of its appender's, a frame behind at most: see direct.py)."""
        if self._appender is not None:
            self._appender.wait()

    def close(self) -> None:
        """Append the index and footer, flush to disk, and close the segment."""
        file = self._finish()
        if file is not None:
            sync_and_close(file)

    def _finish(self) -> BinaryIO | None:
        """Append the index and footer; return the file, still to be synced and closed."""
        if self._file is None:
            return None
        index_frame = frames.encode_index_frame(self._index.build().to_map(), self._level)
        index_at = self.offset
        self._write(index_frame + frames.encode_footer(index_at, len(index_frame)))
        if self._appender is not None:
            self._appender.finish()  # the last block without padding: the file ends with the footer
            self._drop_appender()
        file, self._file = self._file, None
        return file

    def rotation_due(self, max_bytes: int | None, max_seconds: float | None) -> bool:
        """Whether the open segment has reached ``max_bytes`` or is ``max_seconds`` old."""
        return (max_bytes is not None and self.offset >= max_bytes) or (
            max_seconds is not None and time.monotonic() - self.opened_at >= max_seconds
        )

    def rotate(self, sync: Callable[[BinaryIO], None] = sync_and_close) -> Path:
        """Close the open segment (index and footer) and start the next one.

        ``sync`` flushes the finished file to disk and closes it; pass one that does it in another
        thread so that writing goes on meanwhile (fsync of a 256 MiB segment can take seconds).
        """
        file = self._finish()
        if file is not None:
            sync(file)
        return self.open()

    def abandon(self) -> None:
        """Close the file without an index, after a write error."""
        self._drop_appender()
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _drop_appender(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        appender = self._appender
        if appender is not None:
            appender.append(data)
        else:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                if written is None or written <= 0:
                    raise OSError("short write to the capture file")
                view = view[written:]
        self.offset += len(data)
        through_cache = appender is None or not appender.direct
        if through_cache and self.offset - self._released_at >= RELEASE_STEP and self._fd >= 0:
            self._release()

    def _release(self) -> None:
        release_window(self._fd, self.offset)
        self._released_at = self.offset
