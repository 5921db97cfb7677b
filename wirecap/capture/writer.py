"""Writing capture files: the bounded buffer the proxy hands records to, and its two consumers.

The proxy hands records to a writer and never waits on disk. Both writers share the producer side
(:class:`RecordBuffer`): a plain list bounded in records and bytes, with the ``block`` or ``drop``
policy when it is full, and no task switch per record.

- :class:`ProcessCaptureWriter` (what ``wirecap proxy`` uses) takes records packed into tuples
  (the proxy builds them so) and sends batches through a pipe to a writer process (child.py), which
  redacts, encodes, compresses, indexes and writes; big body chunks go through a shared-memory ring
  (ring.py) beside the pipe. In the proxy process that work held the GIL the event loop needs (about
  100 us per exchange of workload A, see docs/PERFORMANCE.md); in its own process it runs on the
  other core.
- :class:`CaptureWriter` does the same work in the proxy's own process (replay captures, tests): each
  record is redacted and CBOR-encoded as it is submitted, a collector task batches encoded records
  into frames (closed 250 ms after their first record or at 1 MiB), and a flusher task runs
  :class:`SegmentSink` in a worker thread, which compresses and writes (both release the GIL) and
  keeps the timing index.

A write error (a full disk) never reaches traffic: the writer logs it once, loudly, stops writing, and
keeps draining the buffer so the proxy never blocks on it; ``statistics()`` counts what was lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import marshal
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import trio

from wirecap.capture.child import WriterSpec, message_head, split_blobs
from wirecap.capture.index import index_item
from wirecap.capture.packing import (
    BODY,
    PackedRecord,
    pack_record,
    pack_sized,
    packed_exchange,
    packed_size,
    unpack_record,
)
from wirecap.capture.records import Gap, Record
from wirecap.capture.ring import RING_BYTES, BodyRing
from wirecap.capture.sink import (
    FRAME_MAX_BYTES,
    FRAME_MAX_SECONDS,
    SMALL_FRAME_BYTES,
    SMALL_FRAME_LEVEL,
    Opener,
    Prepare,
    SegmentHeader,
    SegmentSink,
    open_exclusive,
    record_size,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "DEFAULT_CHANNEL_BYTES",
    "DEFAULT_CHANNEL_RECORDS",
    "FRAME_MAX_BYTES",
    "FRAME_MAX_SECONDS",
    "SMALL_FRAME_BYTES",
    "SMALL_FRAME_LEVEL",
    "CaptureWriter",
    "Item",
    "OnFull",
    "Opener",
    "Prepare",
    "ProcessCaptureWriter",
    "RecordBuffer",
    "SegmentHeader",
    "SegmentSink",
    "WriterSpec",
    "WriterStatistics",
    "open_exclusive",
]

logger = logging.getLogger("wirecap.capture")

#: Records waiting between the proxy and the writer: at most this many records or this many bytes (a
#: record holds at most one 64 KiB read). 4 MiB is four frames' worth: enough to keep the compressor
#: busy; more only raises peak memory on large bodies (16 MiB gave 100 MB RSS on a 1 GiB stream).
DEFAULT_CHANNEL_RECORDS: Final = 4096
DEFAULT_CHANNEL_BYTES: Final = 4 * 1024 * 1024
#: The process writer sends a batch when its first record is this old or the batch is this big:
#: one pipe write per few exchanges under load. A big body's batch holds four ring slots (half the
#: ring: the relay fills the other half while the writer process copies these out), not one: a
#: quarter of the pipe writes and of the writer process's wake-ups, and 0.2 CPU s less per GiB in
#: the two processes together (docs/PERFORMANCE.md, session 16). The copies a batch makes in the
#: event loop (marshal's of its small records; big chunks the relay did not receive into the ring,
#: such as chunked bodies and uploads, copied into it) are a MiB or so, ~0.1 ms, while the writer
#: process keeps up (behind it, a batch takes what the buffer holds, DEFAULT_CHANNEL_BYTES at most).
BATCH_SECONDS: Final = 0.005
BATCH_BYTES: Final = 1024 * 1024
PIPE_BYTES: Final = 1024 * 1024
#: How long a relay waits for ring space before it looks again (the writer process's signal can be
#: missed, see BodyRing.want).
RING_WAIT: Final = 0.002
_IOV_MAX: Final = 1024  # Linux's limit on buffers per writev

OnFull: TypeAlias = Literal["block", "drop"]
#: What producers hand a writer: a record, or a record already packed (packing.packed_request and
#: its siblings: the proxy's hot path builds no record objects).
Item: TypeAlias = Record | PackedRecord


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


class RecordBuffer:
    """The producer side shared by both writers: a bounded buffer of records and its policy.

    Records come as objects or packed (:data:`Item`); each writer takes both.

    Producers append to a plain list (no task switch per record); the consumer task is woken only
    when the buffer gets its first record, reaches ``wake_bytes``, or reaches its bound. The bound is
    ``channel_records`` records or ``channel_bytes`` bytes, whichever comes first. Subclasses say
    what a record becomes in the buffer (:meth:`_append`) and consume it.
    """

    def __init__(
        self,
        *,
        on_full: OnFull,
        channel_records: int,
        channel_bytes: int,
        wake_bytes: int,
    ) -> None:
        self.on_full = on_full
        self._limit_records = channel_records
        self._limit_bytes = channel_bytes
        self._wake_bytes = wake_bytes
        self._pending: list[Any] = []
        self._pending_bytes = 0
        self._wake = trio.Event()
        self._space = trio.Event()
        self._dropped = _DropCounter()
        self._records_dropped = 0
        self._records_lost = 0
        self._records_written = 0
        self._frames_written = 0
        self._bytes_written = 0
        self._failed: str | None = None
        self._closed = False
        self._finished = trio.Event()

    # -- producer side (proxy tasks) ----------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._pending) >= self._limit_records or self._pending_bytes >= self._limit_bytes

    def _append(self, record: Item) -> None:
        raise NotImplementedError

    def statistics(self) -> WriterStatistics:
        path, paths = self._files()
        return WriterStatistics(
            queued=len(self._pending),
            records_written=self._records_written,
            frames_written=self._frames_written,
            bytes_written=self._bytes_written,
            records_dropped=self._records_dropped,
            records_lost=self._records_lost,
            failed=self._failed,
            path=path,
            paths=paths,
        )

    def _files(self) -> tuple[Path | None, tuple[Path, ...]]:
        """The segment being written, and every segment so far."""
        raise NotImplementedError

    async def run(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write until :meth:`aclose` (start it with ``nursery.start``: it reports the first file)."""
        raise NotImplementedError

    def _queue(self, item: object, size: int) -> None:
        """Put ``item`` (what ``record`` became) in the buffer, waking the consumer when it has work."""
        pending = self._pending
        pending.append(item)
        self._pending_bytes += size
        if len(pending) == 1 or self._pending_bytes >= self._wake_bytes or self._full():
            self._wake.set()

    def offer(self, record: Item) -> bool:
        """Queue ``record`` at once when there is room (the usual case); False when the caller must
        ``await submit(record)`` instead (the buffer is full, or the writer closed or failed)."""
        if self._closed or self._failed is not None or self._full():
            return False
        self._append(record)
        return True

    def offer_all(self, records: Sequence[Item]) -> int:
        """:meth:`offer` each of ``records`` in order while there is room; returns how many were
        queued (the rest, if any, are for :meth:`submit`)."""
        for i, record in enumerate(records):
            if not self.offer(record):
                return i
        return len(records)

    async def submit(self, record: Item) -> None:
        """Queue ``record``. Under ``block`` waits for room; under ``drop`` never waits."""
        if self._closed or self._failed is not None:
            self._records_lost += 1
            self._forget(record)
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

    def submit_nowait(self, record: Item) -> bool:
        """Queue ``record`` if there is room; count it as dropped otherwise. Returns whether queued."""
        if self._closed or self._failed is not None:
            self._records_lost += 1
            self._forget(record)
            return False
        if self._full():
            self._count_drop(record)
            return False
        self._append(record)
        return True

    @property
    def due(self) -> bool:
        """A batch is ready for the consumer: a producer handing over many records without a pause
        (a big body whose reads never wait) should let it run (the pump frees the shared ring)."""
        return self._pending_bytes >= self._wake_bytes

    def ring_slot(self, size: int) -> tuple[int, memoryview] | None:
        """Room to receive up to ``size`` bytes of a body straight into, for a writer with a
        shared ring (:class:`ProcessCaptureWriter`): the slot's position and a view of it (of
        ``size`` bytes or fewer), or None. Say at once, before any other task runs, how much was
        filled (:meth:`ring_filled`); the chunk's record then holds ``(position, length)`` as its
        data."""
        return None

    def ring_filled(self, start: int, size: int, used: int) -> None:
        """``used`` bytes of the slot of ``size`` bytes that :meth:`ring_slot` gave were filled (0:
        none, the slot is given back)."""

    async def wait_for_ring(self) -> bool:
        """:meth:`ring_slot` found no room: wait for some and return True, or return False when
        there is none to wait for (the caller then receives the usual way)."""
        return False

    def _forget(self, item: Item) -> None:
        """``item`` will never be written (dropped, or lost)."""

    def _count_drop(self, item: Item) -> None:
        self._forget(item)
        self._records_dropped += 1
        self._dropped.records += 1
        if isinstance(item, tuple):  # packed: nothing is unpacked to count it
            self._dropped.bytes += packed_size(item)
            x = packed_exchange(item)
        else:
            self._dropped.bytes += record_size(item)
            x = getattr(item, "x", None)
        if x is not None:
            self._dropped.exchanges.add(x)

    async def aclose(self) -> None:
        """No more records: let the writer drain, index and close its file."""
        self._closed = True
        self._wake.set()
        self._space.set()

    @property
    def failed(self) -> str | None:
        return self._failed

    async def wait_finished(self) -> None:
        """Wait until ``run`` has written the index and closed the file (after :meth:`aclose`)."""
        await self._finished.wait()

    # -- consumer side ------------------------------------------------------------------------------

    def _take(self) -> list[Any]:
        taken = self._pending
        self._pending, self._pending_bytes = [], 0
        self._space.set()
        return taken

    async def _wait_for_work(self, linger: float) -> None:
        """Sleep until the buffer has records, then up to ``linger`` seconds more for it to reach
        ``wake_bytes`` or its bound (returns at once when closed)."""
        if not self._pending and not self._closed:
            self._wake = trio.Event()
            await self._wake.wait()
        if self._pending and not self._closed:
            deadline = trio.current_time() + linger
            while (
                self._pending_bytes < self._wake_bytes
                and not self._full()
                and not self._closed
                and trio.current_time() < deadline
            ):
                self._wake = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wake.wait()

    def _take_gap(self) -> Gap | None:
        """A gap record for the records dropped since the last one, if any."""
        dropped = self._dropped
        if not dropped.records:
            return None
        self._dropped = _DropCounter()
        return Gap(
            wall_ns=time.time_ns(),
            records=dropped.records,
            bytes=dropped.bytes,
            exchanges=tuple(sorted(dropped.exchanges)),
        )

    def _fail(self, reason: str, path: Path | None) -> None:
        if self._failed is not None:
            return
        self._failed = reason
        logger.error(
            "CAPTURE STOPPED: writing %s failed (%s). Traffic continues uncaptured; "
            "records from now on are counted as lost.",
            path,
            reason,
        )


class CaptureWriter(RecordBuffer):
    """The capture pipeline in this process: a bounded buffer in, segment files out.

    Start :meth:`run` in a nursery (``await nursery.start(writer.run)``), :meth:`submit` records from
    any task, and call :meth:`aclose` to finish: the writer drains the buffer, writes the index and
    footer, and :meth:`run` returns.
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
        super().__init__(
            on_full=on_full,
            channel_records=channel_records,
            channel_bytes=channel_bytes,
            wake_bytes=frame_bytes,
        )
        self.sink = sink
        self._encoded: list[bytes] = []
        self._encode = sink.encode
        self._frame_seconds = frame_seconds
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds

    def _append(self, record: Item) -> None:
        record, data = self._encode(_unpacked(record))
        self._encoded.append(data)
        self._queue(index_item(record), len(data))

    def _files(self) -> tuple[Path | None, tuple[Path, ...]]:
        return self.sink.path, tuple(self.sink.paths)

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

    def _take_batch(self) -> _Batch:
        batch = _Batch(self._take(), self._encoded)
        self._encoded = []
        gap = self._take_gap()
        if gap is not None:
            gap_record, data = self._encode(gap)
            batch.records.append(gap_record)
            batch.encoded.append(data)
        return batch

    async def _collector(self, batches: trio.MemorySendChannel[_Batch]) -> None:
        async with batches:
            rotate_deadline = self._next_rotation()
            while True:
                with trio.move_on_at(rotate_deadline):  # idle: a time-based rotation may be due
                    await self._wait_for_work(self._frame_seconds)
                if self._pending or self._dropped.records:
                    batch = self._take_batch()
                    if self._failed is not None:
                        self._records_lost += len(batch.records)
                    else:
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
        if self.sink.rotation_due(self._rotate_bytes, self._rotate_seconds):
            self.sink.rotate()

    async def _in_thread(self, fn: Callable[..., object], *args: object) -> None:
        if self._failed is not None:
            return
        try:
            await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            for arg in args:
                if isinstance(arg, _Batch):
                    self._records_lost += len(arg.records)
            self._fail(f"{type(exc).__name__}: {exc}", self.sink.path)
            self.sink.abandon()


class ProcessCaptureWriter(RecordBuffer):
    """The capture pipeline of ``wirecap proxy``: records packed here, written by a child process.

    Same interface as :class:`CaptureWriter`. The event loop's share of capture is building each
    record packed (:func:`packing.packed_request` and its siblings; record objects are packed here)
    and, once per batch (a few milliseconds or 1 MiB), one ``marshal.dumps``, a copy of each big
    body chunk into the shared ring (ring.py) and one pipe write; everything else runs in
    ``python -m wirecap.capture.child`` with its own GIL. The pipe, the ring and this buffer are all
    bounded, so a slow disk makes the buffer fill and the ``block``/``drop`` policy apply, as in the
    in-process writer.

    The child outlives a killed proxy just long enough to finish the file. If the child itself dies,
    capture stops as it does on a write error: loudly, counting what is lost, traffic untouched.
    """

    def __init__(
        self,
        spec: WriterSpec,
        *,
        on_full: OnFull = "block",
        channel_records: int = DEFAULT_CHANNEL_RECORDS,
        channel_bytes: int = DEFAULT_CHANNEL_BYTES,
        batch_seconds: float = BATCH_SECONDS,
        batch_bytes: int = BATCH_BYTES,
        ring_bytes: int = RING_BYTES,
        python: str = sys.executable,
    ) -> None:
        super().__init__(
            on_full=on_full,
            channel_records=channel_records,
            channel_bytes=channel_bytes,
            # A batch is due before its ring chunks fill the ring: half of it stays for the relay.
            wake_bytes=min(batch_bytes, ring_bytes // 2) if ring_bytes else batch_bytes,
        )
        self.spec = spec
        self._batch_seconds = batch_seconds
        self._ring_bytes = ring_bytes  # 0: big body chunks always take the pipe
        self._command = [python, "-m", "wirecap.capture.child"]
        self._path: Path | None = None
        self._paths: list[Path] = []
        self._ring: BodyRing | None = None  # while run() has one
        #: Positions of the chunks received into the ring whose records have not yet gone out in a
        #: batch, oldest first: the writer process must not be told to release them (ring.py).
        self._received: dict[int, None] = {}
        self._ring_freed = trio.Event()
        self._sent = 0
        self._done = False
        self.pid: int | None = None  # the writer process's, once started

    def _append(self, record: Item) -> None:
        self._queue(*_packed_sized(record))

    def offer_all(self, records: Sequence[Item]) -> int:
        # The proxy's one call per forwarding write: _queue's work done once for the lot (6 records
        # per exchange of workload A).
        if self._closed or self._failed is not None:
            return 0
        pending = self._pending
        was_empty = not pending
        size = self._pending_bytes
        limit_records, limit_bytes = self._limit_records, self._limit_bytes
        taken = 0
        for record in records:
            if len(pending) >= limit_records or size >= limit_bytes:
                break
            packed, nbytes = _packed_sized(record)
            pending.append(packed)
            size += nbytes
            taken += 1
        self._pending_bytes = size
        if taken and (was_empty or size >= self._wake_bytes or self._full()):
            self._wake.set()
        return taken

    def _files(self) -> tuple[Path | None, tuple[Path, ...]]:
        return self._path, tuple(self._paths)

    def _open_ring(self) -> BodyRing | None:
        """The ring, while chunks may go into it: the writer running, its buffer not full."""
        if self._closed or self._failed is not None or self._full():
            return None
        return self._ring

    def ring_slot(self, size: int) -> tuple[int, memoryview] | None:
        ring = self._open_ring()
        if ring is None:
            return None
        slot = ring.reserve(min(size, ring.capacity // 4))  # a slot never waits for the whole ring
        if slot is not None:
            self._received[slot[0]] = None
        return slot

    def ring_filled(self, start: int, size: int, used: int) -> None:
        assert self._ring is not None
        self._ring.shrink(start, size, used)
        if not used:
            del self._received[start]

    async def wait_for_ring(self) -> bool:
        """The ring had no room for a slot: wait until the writer process releases some (or
        :data:`RING_WAIT` seconds, in case its signal was missed) and return True to try again;
        return False at once when waiting would not help (there is no ring, the writer is done
        or failed, the buffer is full) or is not wanted (the ``drop`` policy never waits)."""
        ring = self._open_ring()
        if ring is None or self.on_full == "drop":
            return False
        ring.want()
        with trio.move_on_after(RING_WAIT):
            await self._ring_freed.wait()
        return True

    async def _watch_ring(self, event_fd: int) -> None:
        """Wake the relays waiting for ring space whenever the writer process signals some."""
        while True:
            await trio.lowlevel.wait_readable(event_fd)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(event_fd)
            self._ring_freed.set()
            self._ring_freed = trio.Event()

    def _forget(self, item: Item) -> None:
        if isinstance(item, tuple) and item[0] == BODY and type(item[1][3]) is tuple:
            self._received.pop(item[1][3][0], None)

    async def run(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the writer process and feed it until :meth:`aclose`; returns when the file is
        complete (or, when cancelled, at once: the process then finishes the file alone)."""
        ring = BodyRing.create(self._ring_bytes) if self._ring_bytes else None
        spec = self.spec
        if ring is not None:
            spec = dataclasses.replace(
                spec, ring_fd=ring.fd, ring_bytes=ring.capacity, ring_event_fd=ring.event_fd
            )
        try:
            process = await trio.lowlevel.open_process(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C for the proxy is not one for its writer
                env=_child_environment(),
                pass_fds=tuple(fd for fd in (ring.fd, ring.event_fd) if fd >= 0) if ring else (),
            )
        except OSError as exc:
            if ring is not None:
                ring.close()
            self._fail(f"cannot start the capture process: {exc}", None)
            task_status.started(None)
            await self._drain()
            return
        self.pid = process.pid
        assert isinstance(process.stdin, trio.lowlevel.FdStream)  # a pipe, on POSIX
        assert process.stdout is not None
        _widen_pipe(process.stdin.fileno())
        stdin, statuses = process.stdin, _StatusReader(process.stdout)
        self._ring = ring
        try:
            with contextlib.suppress(trio.BrokenResourceError):
                await _send_messages(stdin, [pickle.dumps(spec)])
            status = await statuses.next()  # the first segment opened, or not
            if status is not None:
                self._apply(status)
            task_status.started(self._path)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_statuses, statuses, process)
                async with trio.open_nursery() as pumping:
                    if ring is not None and ring.event_fd >= 0:
                        pumping.start_soon(self._watch_ring, ring.event_fd)
                    await self._pump(stdin, ring)
                    pumping.cancel_scope.cancel()  # the ring's watcher
                await stdin.aclose()  # end of input: the child writes its index and exits
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(trio.ClosedResourceError):
                await stdin.aclose()  # cancelled: the child finishes the file alone
            self._ring = None
            if ring is not None:
                ring.close()  # the child keeps its own mapping
            self._finished.set()

    async def _drain(self) -> None:
        """Without a writer process: take records as they come and count them as lost."""
        while True:
            await self._wait_for_work(0)
            self._records_lost += len(self._take())
            self._take_gap()
            if self._closed and not self._pending:
                return

    async def _pump(self, stdin: trio.lowlevel.FdStream, ring: BodyRing | None) -> None:
        while True:
            await self._wait_for_work(self._batch_seconds)
            batch = self._take()
            gap = self._take_gap()
            if gap is not None:
                batch.append(pack_record(gap))
            if batch and self._failed is not None:
                self._records_lost += len(batch)
            elif batch:
                try:
                    blobs = split_blobs(batch, ring, self._received)
                    # The ring is free up to the oldest chunk received into it whose record is
                    # still to come (none: up to everything placed so far).
                    release = next(iter(self._received), ring.written) if ring is not None else 0
                    await _send_messages(stdin, [marshal.dumps((release, batch)), *blobs])
                    self._sent += len(batch)
                except trio.BrokenResourceError:
                    self._records_lost += len(batch)
                    self._fail("the capture process ended", self._path)
            if self._closed and not self._pending:
                return

    async def _read_statuses(self, statuses: _StatusReader, process: trio.Process) -> None:
        while (status := await statuses.next()) is not None:
            self._apply(status)
        code = await process.wait()
        if not self._done:
            # Whatever was sent and not reported written died with the process.
            self._records_lost += max(0, self._sent - self._records_written)
            self._fail(f"the capture process exited with status {code}", self._path)

    def _apply(self, status: dict[str, Any]) -> None:
        if "path" in status:
            self._path = Path(status["path"])
            self._paths.append(self._path)
        if "written" in status:  # the child's totals
            self._records_written, self._frames_written, self._bytes_written = status["written"]
        if "failed" in status:
            self._fail(status["failed"], self._path)
        if status.get("done"):
            self._done = True
            self._records_lost += status.get("lost", 0)


def _unpacked(item: Item) -> Record:
    """``item`` as a record object."""
    return unpack_record(item) if isinstance(item, tuple) else item


def _packed_sized(item: Item) -> tuple[PackedRecord, int]:
    """``item`` packed, and about how many bytes it holds (see packing.pack_sized)."""
    if isinstance(item, tuple):
        return item, packed_size(item)
    return pack_sized(item)


async def _send_messages(stream: trio.lowlevel.FdStream, payloads: list[bytes]) -> None:
    """Write ``payloads`` as messages with as few system calls as the pipe allows: one ``writev``
    of every length and payload (a batch and its big body chunks), no copies of our own."""
    fd = stream.fileno()
    pending: list[memoryview] = []
    for payload in payloads:
        pending += (memoryview(message_head(payload)), memoryview(payload))
    while pending:
        try:
            written = os.writev(fd, pending[:_IOV_MAX])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        except OSError as exc:  # the writer process is gone
            raise trio.BrokenResourceError(str(exc)) from exc
        while written and written >= len(pending[0]):
            written -= len(pending.pop(0))
        if written:
            pending[0] = pending[0][written:]
    await trio.lowlevel.checkpoint()


def _widen_pipe(fd: int) -> None:
    """Give the pipe to the writer process 1 MiB instead of Linux's 64 KiB: fewer writes, fewer
    wake-ups on large bodies. Best effort (other systems, or a lower pipe-max-size)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_size, PIPE_BYTES)


def _child_environment() -> dict[str, str]:
    """This environment, with the directory wirecap was imported from first on the child's path (it
    may not be installed: run from a checkout, or from tests)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # glibc keeps freed 1 MiB frame buffers in per-thread arenas; with big bodies that doubled the
    # process's peak RSS: one arena. Frames and chunks (up to ~1 MiB) come from the heap and stay
    # there when freed, up to 16 MiB at its top: giving each back to the system and faulting its
    # pages in again cost a 1 GiB body a fifth of the writer process's CPU (session 14).
    env.setdefault("MALLOC_ARENA_MAX", "1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * 1024 * 1024))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(16 * 1024 * 1024))
    return env


class _StatusReader:
    """The writer process's status lines (JSON objects), one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next(self) -> dict[str, Any] | None:
        """The next status, or None at end of input."""
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        status: dict[str, Any] = json.loads(line)
        return status
