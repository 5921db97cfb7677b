"""The in-process capture writer: a bounded buffer that producers hand records to, and the task that
writes it. (``wirecap proxy`` writes through a process of its own instead, process.py; both offer
the producer methods of :class:`RecordWriter`.)

Producers (replay, tests, a proxy built without the writer process) call
:meth:`CaptureWriter.submit_nowait`, which never waits:
the record is redacted and CBOR-encoded there, and its bytes join the frame being collected. The
writer task closes a frame :data:`FRAME_MAX_SECONDS` after its first record or at
:data:`FRAME_MAX_BYTES`, and hands it to :class:`SegmentSink` in a worker thread, which compresses
(zstd releases the GIL, so this runs beside the event loop), appends and indexes it.

Memory is bounded by ``max_bytes`` of encoded records waiting or being written. Past it, the
``block`` policy makes producers wait (:meth:`wait_for_room`, lose nothing) and ``drop`` refuses
records (counted in a ``gap`` record, never slowing traffic). A write error (a full disk) never
reaches traffic: the writer logs it once, loudly, stops writing, and counts what is lost.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias

import trio

from wirecap.capture.frames import encode_record
from wirecap.capture.records import Gap, Record
from wirecap.capture.sink import FRAME_MAX_BYTES, FRAME_MAX_SECONDS, OpenFrame, SegmentSink

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

logger = logging.getLogger("wirecap.capture")

#: Encoded records waiting or being written, at most: four frames, enough to keep the compressor
#: busy while the next frame fills.
DEFAULT_BUFFER_BYTES: Final = 4 * 1024 * 1024
OnFull: TypeAlias = Literal["block", "drop"]
#: Makes a record ready for the file (the redactor), or leaves it as it is.
Prepare: TypeAlias = "Callable[[Record], Record]"


@dataclasses.dataclass(frozen=True, slots=True)
class WriterStatistics:
    """A snapshot of the capture writer's state."""

    queued_bytes: int
    records_written: int
    frames_written: int
    bytes_written: int
    records_dropped: int  # refused by a full buffer under ``drop``
    records_lost: int  # accepted or offered, but not written because writing had failed
    failed: str | None
    path: Path | None
    paths: tuple[Path, ...]


class RecordWriter(Protocol):
    """What producers (the recorder, the proxy) need of a capture writer: :class:`CaptureWriter`
    in this process, or :class:`~wirecap.capture.process.ProcessWriter` beside it."""

    @property
    def full(self) -> bool: ...

    @property
    def failed(self) -> str | None: ...

    def submit_nowait(self, record: Record) -> bool: ...

    async def wait_for_room(self) -> None: ...

    def statistics(self) -> WriterStatistics: ...

    async def run(self, *, task_status: trio.TaskStatus[Path | None] = ...) -> None: ...

    async def aclose(self) -> None: ...

    async def wait_finished(self) -> None: ...


class BoundedProducer:
    """The producer side both writers share: the bound on records held, the ``block``/``drop``
    policy, and closing. Subclasses add records to ``_held`` and call :meth:`_freed`."""

    def __init__(self, *, on_full: OnFull, max_bytes: int) -> None:
        self.on_full = on_full
        self._max_bytes = max_bytes
        self._held = 0  # bytes of records taken and not yet written (or sent)
        self._room = trio.Event()
        self._closed = False
        self._failed: str | None = None
        self._finished = trio.Event()

    @property
    def full(self) -> bool:
        """Producers under ``block`` must :meth:`wait_for_room` before handing over more."""
        return (
            self.on_full == "block"
            and self._held >= self._max_bytes
            and not self._closed
            and self._failed is None
        )

    @property
    def failed(self) -> str | None:
        return self._failed

    async def wait_for_room(self) -> None:
        """Wait until the buffer is below its bound (returns at once after a failure or close)."""
        if not self.full:
            await trio.lowlevel.checkpoint()
            return
        while self.full:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    async def wait_finished(self) -> None:
        """Wait until the writer has finished its file (after :meth:`aclose`)."""
        await self._finished.wait()

    def _freed(self, size: int) -> None:
        """``size`` bytes of records were written (or handed on): let waiting producers go on."""
        self._held -= size
        self._room.set()


@dataclasses.dataclass(slots=True)
class _Drops:
    records: int = 0
    bytes: int = 0
    exchanges: set[str] = dataclasses.field(default_factory=set)


class CaptureWriter(BoundedProducer):
    """Records in, segment files out.

    Start :meth:`run` in a nursery (``await nursery.start(writer.run)``: it reports the first file),
    hand it records from any task, and call :meth:`aclose` to finish: the writer drains what it
    holds, writes the index and footer, and :meth:`run` returns.
    """

    def __init__(
        self,
        sink: SegmentSink,
        *,
        prepare: Prepare | None = None,
        on_full: OnFull = "block",
        max_bytes: int = DEFAULT_BUFFER_BYTES,
        frame_bytes: int = FRAME_MAX_BYTES,
        frame_seconds: float = FRAME_MAX_SECONDS,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
    ) -> None:
        super().__init__(on_full=on_full, max_bytes=max_bytes)
        self.sink = sink
        self._prepare = prepare
        self._frame_bytes = frame_bytes
        self._frame_seconds = frame_seconds
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._frame = OpenFrame()
        self._drops = _Drops()
        self._frame_due = trio.Event()  # the collecting frame got its first record, or is full
        self._records_written = self._frames_written = self._bytes_written = 0
        self._records_dropped = self._records_lost = 0

    # -- producers ------------------------------------------------------------------------------------

    def submit_nowait(self, record: Record) -> bool:
        """Take ``record`` (redacted and encoded now); returns whether it will be written.

        Never waits. Under ``drop`` a full buffer refuses the record; under ``block`` it is taken,
        and the producer calls :meth:`wait_for_room` before its next read (so the buffer exceeds
        its bound by one read per producer at most).
        """
        if self._closed or self._failed is not None:
            self._records_lost += 1
            return False
        if self._prepare is not None:
            record = self._prepare(record)
        data = encode_record(record)
        if self.on_full == "drop" and self._held >= self._max_bytes:
            self._count_drop(record, len(data))
            return False
        frame = self._frame
        if not frame.parts:
            self._frame_due.set()
        frame.add(record, data, trio.current_time())
        self._held += len(data)
        if frame.size >= self._frame_bytes or self._held >= self._max_bytes:
            self._frame_due.set()
        return True

    async def submit(self, record: Record) -> bool:
        """:meth:`submit_nowait`, then wait for room under ``block``."""
        taken = self.submit_nowait(record)
        await self.wait_for_room()
        return taken

    def _count_drop(self, record: Record, size: int) -> None:
        self._records_dropped += 1
        self._drops.records += 1
        self._drops.bytes += size
        x = getattr(record, "x", None)
        if x is not None:
            self._drops.exchanges.add(x)

    # -- state ----------------------------------------------------------------------------------------

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            queued_bytes=self._held,
            records_written=self._records_written,
            frames_written=self._frames_written,
            bytes_written=self._bytes_written,
            records_dropped=self._records_dropped,
            records_lost=self._records_lost,
            failed=self._failed,
            path=self.sink.path,
            paths=tuple(self.sink.paths),
        )

    async def aclose(self) -> None:
        """No more records: let the writer drain, index and close its file."""
        self._closed = True
        self._frame_due.set()
        self._room.set()
        await trio.lowlevel.checkpoint()

    # -- the writer task -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the first segment, then write frames until :meth:`aclose`; close the segment."""
        try:
            await self._in_thread(self.sink.open)
            task_status.started(self.sink.path)
            rotate_at = self._next_rotation()
            while not (self._closed and not self._frame.parts and not self._drops.records):
                with trio.move_on_at(rotate_at):
                    await self._wait_for_frame()
                if self._frame.parts or self._drops.records:
                    frame = self._take_frame()
                    await self._write(*frame)
                if trio.current_time() >= rotate_at:
                    rotate_at = self._next_rotation()
                    if not self._closed:
                        await self._in_thread(self.sink.rotate)
        finally:
            with trio.CancelScope(shield=True):
                if self._failed is None:
                    await self._in_thread(self.sink.close)
                else:
                    self.sink.abandon()
            self._finished.set()

    async def _wait_for_frame(self) -> None:
        """Until the collecting frame is full (or the buffer is), old enough, or the writer closes."""
        while not self._frame.parts and not self._drops.records and not self._closed:
            self._frame_due = trio.Event()
            await self._frame_due.wait()
        deadline = self._frame.opened + self._frame_seconds
        while (
            self._frame.size < self._frame_bytes
            and self._held < self._max_bytes
            and not self._closed
        ):
            self._frame_due = trio.Event()
            with trio.move_on_at(deadline) as scope:
                await self._frame_due.wait()
            if scope.cancelled_caught:
                return

    def _take_frame(self) -> tuple[OpenFrame, int]:
        """The frame collected (with a gap record for the records dropped since the last one),
        and the bytes it holds of the buffer."""
        frame, self._frame = self._frame, OpenFrame()
        held = frame.size
        drops, self._drops = self._drops, _Drops()
        if drops.records:
            gap = Gap(
                wall_ns=time.time_ns(),
                records=drops.records,
                bytes=drops.bytes,
                exchanges=tuple(sorted(drops.exchanges)),
            )
            frame.add(gap, encode_record(gap), frame.opened)
        return frame, held

    async def _write(self, frame: OpenFrame, held: int) -> None:
        if self._failed is None:
            written = await self._in_thread(self.sink.write_frame, frame.items, frame.payload())
            if written is not None:
                self._records_written += len(frame.items)
                self._frames_written += 1
                self._bytes_written += written
                if self._rotate_bytes is not None and self.sink.offset >= self._rotate_bytes:
                    await self._in_thread(self.sink.rotate)
        if self._failed is not None:
            self._records_lost += len(frame.items)
        self._freed(held)

    def _next_rotation(self) -> float:
        if self._rotate_seconds is None:
            return math.inf
        return trio.current_time() + self._rotate_seconds

    async def _in_thread(self, fn: Callable[..., int | Path | None], *args: object) -> int | None:
        """Run a sink method in a worker thread; a write error stops capture for good."""
        if self._failed is not None:
            return None
        try:
            result = await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return None
        return result if isinstance(result, int) else 0

    def _fail(self, reason: str) -> None:
        self._failed = reason
        self.sink.abandon()
        self._room.set()
        logger.error(
            "CAPTURE STOPPED: writing %s failed (%s). Traffic continues uncaptured; "
            "records from now on are counted as lost.",
            self.sink.path,
            reason,
        )
