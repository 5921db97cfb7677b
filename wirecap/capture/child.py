"""The capture writer process: packed records in through a pipe, segment files out.

``wirecap proxy`` writes its capture here (the parent side is :class:`writer.ProcessCaptureWriter`)
so that redacting, CBOR-encoding, compressing and indexing (40 to 80 us of CPU for a typical
exchange, mostly holding the GIL) run beside the event loop on another core instead of inside it.
Records stay packed here unless a body pattern matches (see :mod:`wirecap.capture.packing`). The
event loop only packs each record into a tuple and, every few milliseconds, writes a batch to the
pipe. It also makes files safer: when the proxy dies, even by SIGKILL, this process sees its
input end and still writes the last frame, the index and the footer.

The pipe protocol is private to this module and writer.py, with the same interpreter at both ends:

- to the child (its stdin): a message holding the pickled :class:`WriterSpec`, then one message per
  batch. A message is a 4-byte little-endian length and that many bytes; a batch's is the
  ``marshal`` (the cheapest serialisation Python has) of ``(release, records)``: a list of packed
  records (:func:`packing.pack_record`) and the ring position before which the ring's space is free
  once the batch's chunks are in frames (see ring.py). The data of each body chunk of 16 KiB or
  more is in the shared ring (ring.py; the record holds its position and length instead) or, when
  the ring has no room or there is none, follows its batch as a message of its own (the record
  holds its length): written from the proxy's own bytes, read into a buffer of its size.
- from the child (its stdout), one JSON object per line: ``{"path": P}`` each time a segment opens,
  ``{"written": [records, frames, bytes]}`` (totals) after a frame, at most every
  :data:`REPORT_SECONDS` (and once more before the end), ``{"failed": TEXT}`` once if
  writing fails (the child then reads and counts what it can no longer write, so the proxy never
  blocks on it), and ``{"done": true, "lost": N}`` last.

This module imports no trio, so the process starts quickly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import marshal
import math
import os
import pickle
import queue
import select
import signal
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from wirecap.capture import frames
from wirecap.capture.packing import BIG_BODY_BYTES, BODY, PackedRecord
from wirecap.capture.ring import RING_SLOT_BYTES, BodyRing, RingChunk
from wirecap.capture.sink import (
    FRAME_MAX_BYTES,
    FRAME_MAX_SECONDS,
    HURRIED_LEVEL,
    SMALL_FRAME_BYTES,
    Pace,
    Prepare,
    SegmentHeader,
    SegmentSink,
    sync_and_close,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import BinaryIO

    from wirecap.capture.index import IndexItem

_LENGTH: Final = struct.Struct("<I")
#: How far past ``frame_bytes`` a frame may reach: with the record that ends it, a ring slot at most
#: and its record's head (a bigger record, such as a 64 KiB head, grows the frame's buffer once).
FRAME_ROOM: Final = RING_SLOT_BYTES + 4096
#: A frame of big bodies whose sample compresses to this share of its bytes or less at the hurried
#: level is worth compressing at the configured level (JSON: ~0.42 for a 32 KiB sample, ~0.2 for
#: its frame at level 1); base64 (1.0 for a sample, 0.75 for its frame at level 1) and compressed
#: media (1.0) are not, and are stored (see FrameWriter.write_frame).
BULK_WORTH: Final = 0.6
#: The writer process says how much it has written at most this often: after every frame, a 1 GiB
#: body made ~900 reports, each a JSON line, a pipe write and a wake-up of the proxy's event loop
#: (~3% of C's rate, docs/PERFORMANCE.md, session 16). Should the writer process die, the proxy
#: counts as lost what it sent and was not told written: at most this long's worth too many.
REPORT_SECONDS: Final = 0.1
#: The sample of a frame of big bodies that says whether it compresses: from its middle, where a
#: body's bytes are; ~20 us for base64 (and a stored frame then saves ~70 us a MiB), ~60 us for JSON
#: (a frame of which takes ~2 ms at level 1).
SAMPLE_BYTES: Final = 32 * 1024


def split_blobs(
    batch: list[PackedRecord],
    ring: BodyRing | None = None,
    received: dict[int, None] | None = None,
) -> list[bytes]:
    """Take the data of big body chunks out of ``batch`` (in place; marshal would copy it twice
    more on its way): into ``ring`` where it has room (the slot then holds the data's position and
    length), else into the returned list, in order, sent as one message each after the batch's (the
    slot holds its length). A chunk the relay received into the ring already holds its position:
    it is taken out of ``received`` (the positions of those not yet in a batch)."""
    blobs: list[bytes] = []
    for i, (code, values) in enumerate(batch):
        if code != BODY:
            continue
        data = values[3]
        if type(data) is tuple:
            if received is not None:
                received.pop(data[0], None)
        elif len(data) >= BIG_BODY_BYTES:
            start = ring.put(data) if ring is not None else None
            if start is None:
                blobs.append(data)
                batch[i] = (code, (*values[:3], len(data)))
            else:
                batch[i] = (code, (*values[:3], (start, len(data))))
    return blobs


def join_blobs(
    batch: list[PackedRecord],
    read: Callable[[], bytearray | None],
    ring: BodyRing | None = None,
    release: int = 0,
) -> bool:
    """Put back into ``batch`` the data :func:`split_blobs` took out: a big chunk in ``ring`` as a
    :class:`~wirecap.capture.ring.RingChunk` where it lies (its frame copies it from there), a
    small one copied out, the others read with ``read``. False if the input ended first (those
    records are left out).

    The ring's space is given back as the big chunks are copied into their frames, in the batch's
    order (:meth:`RingChunk.copied`), up to ``release`` (the batch's word on what may be freed)
    and never past a chunk of the batch still to be copied: chunks the relay received into the ring
    lie in the order their slots were claimed, not the batch's. What none of them holds is given
    back at once."""
    held: list[RingChunk] = []
    for i, (code, values) in enumerate(batch):
        if code != BODY:
            continue
        where = values[3]
        data: bytes | bytearray | RingChunk | None
        if type(where) is tuple:
            assert ring is not None, "a chunk in a ring that is not there"
            start, size = where
            # A read into the ring may bring less than a big chunk: small ones go the usual way.
            if size >= BIG_BODY_BYTES:
                data = ring.chunk(start, size)
                held.append(data)
            else:
                data = ring.take(start, size)
        elif type(where) is int:
            data = read()
            if data is None:
                del batch[i:]
                return False
        else:
            continue
        batch[i] = (code, (*values[:3], data))
    if ring is not None:
        low = release
        for chunk in reversed(held):
            chunk.release_to = low
            low = min(low, chunk.position)
        ring.release(low)
    return True


def message_head(payload: bytes) -> bytes:
    """What goes before ``payload`` on the pipe: its length."""
    return _LENGTH.pack(len(payload))


class MessageReader:
    """Reads the messages of a pipe, each straight into a buffer of its size (no copy but the
    kernel's: a 1 GiB body crosses the pipe once)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.cut = False  # the input ended inside a message

    def read(self) -> bytearray | None:
        """The next message (blocks until it is whole), or None at the end of the input."""
        head = self._read_exactly(_LENGTH.size)
        if head is None:
            return None
        (size,) = _LENGTH.unpack(head)
        return self._read_exactly(size) if size else bytearray()

    def _read_exactly(self, size: int) -> bytearray | None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = os.readv(self.fd, [view[got:]])
            if n == 0:
                self.cut = got > 0 or size != _LENGTH.size
                return None
            got += n
        return buffer


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WriterSpec:
    """Everything the writer process needs to build its :class:`SegmentSink` (pickled to it)."""

    directory: Path
    header: SegmentHeader
    prepare: Prepare | None = None  # the redactor; it must pickle
    level: int = 3
    #: Compress large frames faster while the compressing thread is behind (see write_frame).
    adapt: bool = False
    prefix: str = "capture"
    frame_bytes: int = FRAME_MAX_BYTES
    frame_seconds: float = FRAME_MAX_SECONDS
    rotate_bytes: int | None = None
    rotate_seconds: float | None = None
    #: The shared ring of big body chunks (ring.py): its inherited descriptor and size, if any, and
    #: the eventfd by which it says when it released space the proxy waits for.
    ring_fd: int = -1
    ring_bytes: int = 0
    ring_event_fd: int = -1

    def sink(self) -> SegmentSink:
        return SegmentSink(
            self.directory,
            self.header,
            prepare=self.prepare,
            level=self.level,
            prefix=self.prefix,
            pid=self.header.pid,
        )


class FrameWriter:
    """The writer process's work, without the process: records in, frames on disk, status out.

    Frames close 250 ms (``frame_seconds``) after their first record or at ``frame_bytes``, like the
    in-process writer's; segments rotate by size and age. The calling thread reads, redacts and
    encodes; a worker thread compresses, writes and indexes (zstd and the write release the GIL, so
    the two overlap: a 1 GiB body is read and compressed at the same time). At most
    ``QUEUED_FRAMES`` frames wait for the worker, which bounds memory and pushes back on the pipe.
    """

    QUEUED_FRAMES: Final = 2

    def __init__(self, spec: WriterSpec, report: Callable[[dict[str, Any]], None]) -> None:
        self.spec = spec
        self.sink = spec.sink()
        self.report = report
        self.failed: str | None = None  # set by the worker thread, read by both
        self._lost_reading = 0  # records not even encoded because writing had failed
        self._lost_writing = 0  # records the worker could not write
        self._records: list[IndexItem] = []  # what the index needs of each encoded record
        # The open frame's encoded records are copied into a buffer as they come (big body chunks
        # straight from the ring), which the worker compresses as it is: no join. Buffers are
        # reused (one filling, QUEUED_FRAMES waiting, one compressing): fresh memory is what costs.
        self._spare: list[bytearray] = []
        # Room for a full frame and the record that ends it: a buffer allocated once at its size
        # does not grow, so it is not copied again and does not fragment the heap.
        self._capacity = spec.frame_bytes + FRAME_ROOM
        self._frame = bytearray()  # allocated with the first frame: an idle writer holds none
        self._size = 0
        self._bulk = 0  # of which big body chunks
        # Compresses the sample of a frame of big bodies (see write_frame); the worker's alone.
        self._sampler = frames.new_compressor(HURRIED_LEVEL)
        self.deadline = math.inf  # when the open frame must be written
        self._written = [0, 0, 0]  # records, frames, bytes
        self._reported_at = -math.inf  # when the worker last reported _written
        self._unreported = False  # _written has changed since
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(self.QUEUED_FRAMES)
        self._worker = threading.Thread(target=self._work, name="wirecap-frames", daemon=True)
        self._syncers: list[threading.Thread] = []

    @property
    def lost(self) -> int:
        return self._lost_reading + self._lost_writing

    def open(self) -> None:
        """Create the first segment, then start the worker thread."""
        self._guard(lambda: self.report({"path": str(self.sink.open())}))
        self._worker.start()

    def add_batch(self, packed: list[PackedRecord]) -> None:
        """Redact, encode and queue a batch of records; hand a frame over when one is full."""
        if self.failed is not None:
            self._lost_reading += len(packed)
            return
        for index_item, data, more in self.sink.encode_batch(packed):
            if not self._records:  # a frame starts
                self.deadline = time.monotonic() + self.spec.frame_seconds
                if not self._frame:
                    self._frame = self._spare.pop() if self._spare else bytearray(self._capacity)
            self._records.append(index_item)
            at = self._size
            end = at + len(data)
            self._frame[at:end] = data  # grows the buffer when it reaches past its end
            if more:  # a big body's data, copied once: from the ring where it lies there
                at, end = end, end + len(more)
                if isinstance(more, RingChunk):
                    with more.view() as view:
                        self._frame[at:end] = view
                    more.copied()
                else:
                    self._frame[at:end] = more
                self._bulk += len(more)
            self._size = end
            if end >= self.spec.frame_bytes:
                self.write_frame()

    def write_frame(self) -> None:
        """Hand the open frame (if any) to the worker, which then rotates the segment if due.

        With ``spec.adapt``, a frame that finds another still waiting for the worker (the worker
        compresses slower than the traffic arrives: a big body of base64, ~700 MiB/s a core at
        level 1) is written in a hurry (:data:`~wirecap.capture.sink.HURRIED_LEVEL`, ~3.5 GB/s),
        like zstd's ``--adapt``: the file grows (base64 is stored at 100% instead of 75%) instead
        of the traffic slowing down to the compressor's pace. Waiting for a full queue before
        hurrying cost a 1 GiB body ~9% of its speed on two cores (docs/PERFORMANCE.md, session
        12): the frames compressed hard meanwhile take the CPU the traffic needs.

        A large frame made mostly (over half its bytes) of big body chunks is stored
        (:data:`~wirecap.capture.sink.STORED_LEVEL`) with ``spec.adapt`` unless a sample of it
        compresses to :data:`BULK_WORTH` or less: big bodies (downloads, uploads, media) are base64
        or compressed already as a rule, where level 1 saves a quarter of the bytes at four times
        the CPU (1.0 against 0.23 ms a MiB of base64 on this project's machines), and on two cores
        that CPU is the traffic's; a big JSON body is worth its level (20% of its bytes at level 1
        against 33% hurried, for 2.19 against 1.77 ms a MiB). docs/PERFORMANCE.md, sessions 14 and
        16. JSON and SSE traffic keeps its levels.
        """
        records, frame, size = self._records, self._frame, self._size
        bulk = self.spec.adapt and self._bulk * 2 > size
        self._records, self._size, self._bulk = [], 0, 0
        self.deadline = math.inf
        if records:
            self._frame = bytearray()
            behind = self.spec.adapt and not self._jobs.empty()
            self._jobs.put(lambda: self._write(records, frame, size, behind, bulk))

    def rotate_if_due(self) -> None:
        self._jobs.put(self._rotate_if_due)

    def close(self) -> None:
        """Write what is left, then the index and footer; wait for the worker to finish."""
        self.write_frame()
        self._jobs.put(self._close)
        self._jobs.put(None)
        self._worker.join()
        for syncer in self._syncers:
            syncer.join()
        self.report({"done": True, "lost": self.lost})

    # -- the worker thread --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=REPORT_SECONDS if self._unreported else None)
            except queue.Empty:  # quiet since a frame went unreported
                self._report_written(due=True)
                continue
            if job is None:
                if self._unreported:
                    self._report_written(due=True)
                return
            job()

    def _report_written(self, due: bool = False) -> None:
        """Report the totals written: now when ``due``, else if the last report is old enough
        (else the worker reports them once it has been quiet that long, or at the end)."""
        now = time.monotonic()
        self._unreported = not due and now - self._reported_at < REPORT_SECONDS
        if not self._unreported:
            self._reported_at = now
            self.report({"written": self._written})

    def _write(
        self, records: list[IndexItem], frame: bytearray, size: int, behind: bool, bulk: bool
    ) -> None:
        if self.failed is not None:
            self._lost_writing += len(records)
            self._spare.append(frame)
            return

        def write() -> None:
            try:
                with memoryview(frame) as whole, whole[:size] as payload:
                    pace: Pace = "hurried" if behind else "level"
                    if bulk and size >= SMALL_FRAME_BYTES and not self._compresses(payload):
                        pace = "stored"
                    written = self.sink.write_encoded(records, payload, pace=pace)
            finally:
                self._spare.append(frame)  # list.append is atomic: the reading thread pops
            self._written[0] += len(records)
            self._written[1] += 1
            self._written[2] += written
            self._report_written()

        if self._guard(write, lost=len(records)):
            self._rotate_if_due()

    def _compresses(self, payload: memoryview) -> bool:
        """Whether a sample of ``payload`` compresses to :data:`BULK_WORTH` or less."""
        start = max(0, (len(payload) - SAMPLE_BYTES) // 2)
        with payload[start : start + SAMPLE_BYTES] as sample:
            return len(self._sampler.compress(sample)) <= BULK_WORTH * len(sample)

    def _close(self) -> None:
        if self.failed is None:
            self._guard(self.sink.close)

    def _rotate_if_due(self) -> None:
        if self.failed is None and self.sink.rotation_due(
            self.spec.rotate_bytes, self.spec.rotate_seconds
        ):
            self._guard(lambda: self.report({"path": str(self.sink.rotate(self._sync_later))}))

    def _sync_later(self, file: BinaryIO) -> None:
        """Sync and close a finished segment in another thread: the next one is being written."""
        syncer = threading.Thread(target=sync_and_close, args=(file,), name="wirecap-sync")
        syncer.start()
        self._syncers = [*(t for t in self._syncers if t.is_alive()), syncer]

    def _guard(self, work: Callable[[], object], lost: int = 0) -> bool:
        """Run ``work``; on a write error stop writing for good and say so. Returns success."""
        try:
            work()
        except OSError as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self._lost_writing += lost
            self.sink.abandon()
            self.report({"failed": self.failed})
            return False
        return True

    def serve(self, reader: MessageReader, ring: BodyRing | None = None) -> None:
        """Read batches until the end of the input, writing frames as they fill or age."""
        fd = reader.fd
        every = self.spec.rotate_seconds
        rotation = self.sink.opened_at + every if every is not None else math.inf
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self.write_frame()
            if every is not None and now >= rotation:
                self.write_frame()
                self.rotate_if_due()
                # The worker rotates in a moment: look again soon, then a period after the new
                # segment opened.
                rotation = max(self.sink.opened_at + every, now + 0.01)
            wait = min(self.deadline, rotation) - time.monotonic()
            timeout = None if wait == math.inf else max(wait, 0.0)
            if not select.select([fd], [], [], timeout)[0]:
                continue
            message = reader.read()
            if message is None:
                break
            release, batch = marshal.loads(message)
            complete = join_blobs(batch, reader.read, ring, release)
            self.add_batch(batch)
            del batch  # its ring chunks are in frames now
            if ring is not None:
                ring.release(release)  # chunks redaction copied out, or not written
            if not complete:
                break
        self.close()


def main() -> None:
    """Entry point of ``python -m wirecap.capture.child`` (started by ProcessCaptureWriter)."""
    # The proxy decides when capture ends, by closing our input: a Ctrl-C in the terminal or a
    # SIGTERM to the process group must not cut the file short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = sys.stdout

    def report(status: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the proxy is gone: finish the file all the same
            out.write(json.dumps(status) + "\n")
            out.flush()

    reader = MessageReader(sys.stdin.fileno())
    message = reader.read()  # the spec comes first
    if message is None:
        return
    spec: WriterSpec = pickle.loads(message)
    ring = (
        BodyRing(spec.ring_fd, spec.ring_bytes, spec.ring_event_fd) if spec.ring_fd >= 0 else None
    )
    writer = FrameWriter(spec, report)
    writer.open()
    writer.serve(reader, ring)


if __name__ == "__main__":
    main()
