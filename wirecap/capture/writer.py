"""Writing capture files: a blocking segment sink and the trio task that feeds it.

The proxy hands records to :class:`CaptureWriter` and never waits on disk. Each record is prepared
(redaction) and CBOR-encoded as it is submitted, in the submitting task: a few microseconds of work
that would otherwise run in the worker thread under the GIL, where handing the GIL back and forth
with the event loop cost more than the work itself (measured: 60-100 us per proxied request). The
writer's collector task batches the encoded records into frames (closed 250 ms after their first
record or at 1 MiB), and its flusher task runs :class:`SegmentSink` in a worker thread, which only
compresses and writes (both release the GIL) and keeps the timing index. Collecting the next frame
overlaps writing the last one.

A write error (a full disk) never reaches traffic: the writer logs it once, loudly, stops writing, and
keeps draining the channel so the proxy never blocks on it; :meth:`CaptureWriter.statistics` counts
what was lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, TypeAlias

import trio

from wirecap import __version__
from wirecap.capture import frames
from wirecap.capture.index import IndexBuilder
from wirecap.capture.records import (
    BodyChunk,
    Gap,
    Header,
    Record,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)

logger = logging.getLogger("wirecap.capture")

FRAME_MAX_BYTES: Final = 1024 * 1024
FRAME_MAX_SECONDS: Final = 0.25
#: Frames smaller than this are compressed at SMALL_FRAME_LEVEL (at least): see SegmentSink.
SMALL_FRAME_BYTES: Final = 256 * 1024
SMALL_FRAME_LEVEL: Final = 9
#: Records waiting between the proxy and the writer: at most this many records or this many bytes (a
#: record holds at most one 64 KiB read). 4 MiB is four frames' worth: enough to keep the compressor
#: busy; more only raises peak memory on large bodies (16 MiB gave 100 MB RSS on a 1 GiB stream).
DEFAULT_CHANNEL_RECORDS: Final = 4096
DEFAULT_CHANNEL_BYTES: Final = 4 * 1024 * 1024

OnFull: TypeAlias = Literal["block", "drop"]
Prepare: TypeAlias = Callable[[Record], Record]
Opener: TypeAlias = Callable[[Path], BinaryIO]


def header_factory(
    redaction: Mapping[str, Any], listen: str | None = None
) -> Callable[[int], Header]:
    """The header of each new segment written by this process (its host, pid, and settings)."""
    host = socket.gethostname()

    def header(segment: int) -> Header:
        return Header(
            wirecap_version=__version__,
            created_ns=time.time_ns(),
            host=host,
            pid=os.getpid(),
            segment=segment,
            redaction=redaction,
            listen=listen,
        )

    return header


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


class SegmentSink:
    """Blocking writer of one capture segment at a time. Run its methods in a worker thread.

    Not thread-safe: one thread at a time (the writer's flusher task guarantees it).
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
    ) -> None:
        self.directory = directory
        self._header = header
        self._prepare = prepare
        self._level = level
        self._compressor = frames.new_compressor(level)
        # Small frames (quiet traffic, SSE) get a stronger level: cheap at their size, and it is where
        # per-record overhead shows. Large frames keep ``level`` so big bodies stay fast.
        self._small_compressor = frames.new_compressor(max(level, SMALL_FRAME_LEVEL))
        self._opener = opener
        self._prefix = prefix
        self._file: BinaryIO | None = None
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
            / f"{self._prefix}-{stamp}-{os.getpid()}-{self.segment:04d}{frames.SEGMENT_SUFFIX}"
        )
        self._file = self._opener(path)
        self.path = path
        self.paths.append(path)
        self.offset = 0
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

    def write_frame(self, records: Sequence[Record]) -> int:
        """Prepare, encode, compress and append ``records`` as one frame; returns the frame's size."""
        prepared: list[Record] = []
        parts: list[bytes] = []
        for record in records:
            record, data = self.encode(record)
            prepared.append(record)
            parts.append(data)
        return self.write_encoded(prepared, b"".join(parts))

    def write_encoded(self, records: Sequence[Record | str], payload: bytes) -> int:
        """Compress and append one frame: ``payload`` is the encoding of ``records`` (from
        :meth:`encode`). Returns the frame's size."""
        compressor = (
            self._small_compressor if len(payload) < SMALL_FRAME_BYTES else self._compressor
        )
        frame = bytes(compressor.compress(payload))
        at = self.offset
        self._write(frame)
        self._index.observe_all(records, at)
        return len(frame)

    def close(self) -> None:
        """Append the index and footer, flush to disk, and close the segment."""
        if self._file is None:
            return
        index_frame = frames.encode_index_frame(self._index.build().to_map(), self._level)
        index_at = self.offset
        self._write(index_frame + frames.encode_footer(index_at, len(index_frame)))
        file, self._file = self._file, None
        # Not every file object has a real descriptor (tests); the data is written either way.
        with contextlib.suppress(OSError, ValueError):
            os.fsync(file.fileno())
        file.close()

    def abandon(self) -> None:
        """Close the file without an index, after a write error."""
        file, self._file = self._file, None
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


@dataclasses.dataclass(frozen=True, slots=True)
class WriterStatistics:
    """A snapshot of the capture writer's state."""

    queued: int
    records_written: int
    frames_written: int
    bytes_written: int
    records_dropped: int  # refused by a full channel under --on-full drop
    records_lost: int  # accepted but not written because writing had failed
    failed: str | None
    path: Path | None
    paths: tuple[Path, ...]


@dataclasses.dataclass(slots=True)
class _Batch:
    """The records of one frame and their encodings."""

    records: list[Record | str]  # what the index needs: a body chunk is just its exchange id
    encoded: list[bytes]


class _DropCounter:
    __slots__ = ("bytes", "exchanges", "records")

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.exchanges: set[str] = set()


class CaptureWriter:
    """The capture pipeline: a bounded buffer in, segment files out.

    Start :meth:`run` in a nursery (``await nursery.start(writer.run)``), :meth:`submit` records from
    any task, and call :meth:`aclose` to finish: the writer drains the buffer, writes the index and
    footer, and :meth:`run` returns.

    Producers append to a plain list (no task switch per record); the collector task is woken only
    when a frame starts, fills up, or the buffer reaches its bound. The bound is ``channel_records``
    records or ``channel_bytes`` bytes, whichever comes first.
    """

    def __init__(
        self,
        sink: SegmentSink,
        *,
        on_full: OnFull = "block",
        channel_records: int = DEFAULT_CHANNEL_RECORDS,
        channel_bytes: int = DEFAULT_CHANNEL_BYTES,
        frame_bytes: int = FRAME_MAX_BYTES,
        frame_seconds: float = FRAME_MAX_SECONDS,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
    ) -> None:
        self.sink = sink
        self.on_full = on_full
        self._limit_records = channel_records
        self._limit_bytes = channel_bytes
        self._pending: list[Record | str] = []
        self._encoded: list[bytes] = []
        self._pending_bytes = 0
        self._encode = sink.encode
        self._wake = trio.Event()
        self._space = trio.Event()
        self._frame_bytes = frame_bytes
        self._frame_seconds = frame_seconds
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._dropped = _DropCounter()
        self._records_dropped = 0
        self._records_written = 0
        self._frames_written = 0
        self._bytes_written = 0
        self._records_lost = 0
        self._failed: str | None = None
        self._closed = False
        self._finished = trio.Event()

    # -- producer side (proxy tasks) ----------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._pending) >= self._limit_records or self._pending_bytes >= self._limit_bytes

    def _append(self, record: Record) -> None:
        record, data = self._encode(record)
        pending = self._pending
        # Once encoded, a body chunk's bytes (or an upstream head) are not needed twice: the index only
        # wants to know which exchange has a record in the frame.
        pending.append(record.x if isinstance(record, BodyChunk | UpstreamRequest) else record)
        self._encoded.append(data)
        self._pending_bytes += len(data)
        if len(pending) == 1 or self._pending_bytes >= self._frame_bytes or self._full():
            self._wake.set()  # a frame starts, or is full: the collector has work

    def offer(self, record: Record) -> bool:
        """Queue ``record`` at once when there is room (the usual case); False when the caller must
        ``await submit(record)`` instead (the buffer is full, or the writer closed or failed)."""
        if self._closed or self._failed is not None or self._full():
            return False
        self._append(record)
        return True

    async def submit(self, record: Record) -> None:
        """Queue ``record``. Under ``block`` waits for room; under ``drop`` never waits."""
        if self._closed or self._failed is not None:
            self._records_lost += 1
            return
        if self._full():
            if self.on_full == "drop":
                self._count_drop(record)
                return
            while self._full() and not self._closed:
                if self._space.is_set():
                    self._space = trio.Event()
                await self._space.wait()
        self._append(record)

    def submit_nowait(self, record: Record) -> bool:
        """Queue ``record`` if there is room; count it as dropped otherwise. Returns whether queued."""
        if self._closed or self._failed is not None:
            self._records_lost += 1
            return False
        if self._full():
            self._count_drop(record)
            return False
        self._append(record)
        return True

    def _count_drop(self, record: Record) -> None:
        self._records_dropped += 1
        self._dropped.records += 1
        self._dropped.bytes += record_size(record)
        x = getattr(record, "x", None)
        if x is not None:
            self._dropped.exchanges.add(x)

    async def aclose(self) -> None:
        """No more records: let the writer drain, index and close its file."""
        self._closed = True
        self._wake.set()
        self._space.set()

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            queued=len(self._pending),
            records_written=self._records_written,
            frames_written=self._frames_written,
            bytes_written=self._bytes_written,
            records_dropped=self._records_dropped,
            records_lost=self._records_lost,
            failed=self._failed,
            path=self.sink.path,
            paths=tuple(self.sink.paths),
        )

    @property
    def failed(self) -> str | None:
        return self._failed

    # -- consumer side ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the first segment, then write until :meth:`aclose`; close the segment on the way out."""
        await self._in_thread(self.sink.open)
        task_status.started(self.sink.path)
        batches_send, batches_receive = trio.open_memory_channel[_Batch](1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flusher, batches_receive)
                await self._collector(batches_send)
        finally:
            if self._failed is None:
                with trio.CancelScope(shield=True):
                    await self._in_thread(self.sink.close)
            else:
                self.sink.abandon()
            self._finished.set()

    async def wait_finished(self) -> None:
        """Wait until :meth:`run` has written the index and closed the file (after :meth:`aclose`)."""
        await self._finished.wait()

    def _take(self) -> _Batch:
        batch = _Batch(self._pending, self._encoded)
        self._pending, self._encoded, self._pending_bytes = [], [], 0
        self._space.set()
        return batch

    async def _collector(self, batches: trio.MemorySendChannel[_Batch]) -> None:
        async with batches:
            rotate_deadline = self._next_rotation()
            while True:
                if not self._pending and not self._closed:
                    # Idle: sleep until a record arrives (or a time-based rotation is due).
                    self._wake = trio.Event()
                    with trio.move_on_at(rotate_deadline):
                        await self._wake.wait()
                if self._pending and not self._closed:
                    # A frame has started: close it 250 ms later at the latest, sooner when full.
                    deadline = trio.current_time() + self._frame_seconds
                    while (
                        self._pending_bytes < self._frame_bytes
                        and not self._full()
                        and not self._closed
                        and trio.current_time() < deadline
                    ):
                        self._wake = trio.Event()
                        with trio.move_on_at(deadline):
                            await self._wake.wait()
                if self._pending or self._dropped.records:
                    batch = self._take()
                    if self._failed is not None:
                        self._records_lost += len(batch.records)
                    else:
                        self._add_gap(batch)
                        await batches.send(batch)
                elif trio.current_time() >= rotate_deadline and not self._closed:
                    await batches.send(_Batch([], []))  # an empty batch asks the flusher to rotate
                if trio.current_time() >= rotate_deadline:
                    rotate_deadline = self._next_rotation()
                if self._closed and not self._pending:
                    return

    def _next_rotation(self) -> float:
        if self._rotate_seconds is None:
            return math.inf
        return trio.current_time() + self._rotate_seconds

    def _add_gap(self, batch: _Batch) -> None:
        dropped = self._dropped
        if not dropped.records:
            return
        gap, data = self._encode(
            Gap(
                wall_ns=time.time_ns(),
                records=dropped.records,
                bytes=dropped.bytes,
                exchanges=tuple(sorted(dropped.exchanges)),
            )
        )
        batch.records.append(gap)
        batch.encoded.append(data)
        self._dropped = _DropCounter()

    async def _flusher(self, batches: trio.MemoryReceiveChannel[_Batch]) -> None:
        async with batches:
            async for batch in batches:
                if self._failed is not None:
                    self._records_lost += len(batch.records)
                    continue
                await self._in_thread(self._write_batch, batch)

    def _write_batch(self, batch: _Batch) -> None:
        """Worker-thread side of a flush: write the frame, then rotate if the segment is due."""
        if batch.records:
            self._bytes_written += self.sink.write_encoded(batch.records, b"".join(batch.encoded))
            self._frames_written += 1
            self._records_written += len(batch.records)
        rotate = (self._rotate_bytes is not None and self.sink.offset >= self._rotate_bytes) or (
            self._rotate_seconds is not None
            and time.monotonic() - self.sink.opened_at >= self._rotate_seconds
        )
        if rotate:
            self.sink.close()
            self.sink.open()

    async def _in_thread(self, fn: Callable[..., object], *args: object) -> None:
        if self._failed is not None:
            return
        try:
            await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            self._fail(exc, args)

    def _fail(self, exc: OSError, args: Iterable[object]) -> None:
        self._failed = f"{type(exc).__name__}: {exc}"
        for arg in args:
            if isinstance(arg, _Batch):
                self._records_lost += len(arg.records)
        logger.error(
            "CAPTURE STOPPED: writing %s failed (%s). Traffic continues uncaptured; "
            "records from now on are counted as lost.",
            self.sink.path,
            self._failed,
        )
        self.sink.abandon()
