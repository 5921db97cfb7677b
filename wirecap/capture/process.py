"""The capture writer in a process of its own, for ``wirecap proxy``.

Redacting, CBOR-encoding and compressing records is Python work that holds the GIL; in the proxy's
process it took the event loop's time (about a third of its CPU per exchange). Here the proxy only
hands records over: :class:`ProcessWriter` keeps them as tuples of their field values
(:func:`~wirecap.capture.records.record_to_tuple`), and every few milliseconds sends a batch
(``marshal``, length-prefixed) down a pipe to ``python -m wirecap.capture.child``. That process
(child.py) turns the tuples back into records and does what :class:`CaptureWriter` does in
process: redact, encode, close frames at 250 ms or 1 MiB, compress, write, index, rotate. It reports
its statistics as JSON lines on its stdout.

The pipe is the bound: a batch waits for the pipe, and records wait in the proxy up to
``max_bytes``; past it, ``block`` makes the relay wait for room and ``drop`` refuses records (the
proxy sends a ``gap`` record for them). If the writer process dies, capture stops (logged once)
and traffic goes on. If the proxy dies, the writer process sees the pipe close and still writes the
last frame, the index and the footer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import marshal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import trio

from wirecap.capture.child import LENGTH, ProcessSpec
from wirecap.capture.records import Gap, Record, record_to_tuple
from wirecap.capture.writer import BoundedProducer, OnFull, WriterStatistics

logger = logging.getLogger("wirecap.capture")

#: Records waiting in the proxy, at most: as much again as the pipe holds (PIPE_BYTES).
HELD_BYTES: Final = 1024 * 1024
#: A batch goes down the pipe this long after its first record, or at this size: one pipe write
#: per several exchanges under load, and no record waits in the proxy longer than this.
BATCH_SECONDS: Final = 0.005
BATCH_BYTES: Final = 256 * 1024
#: Seconds a write to the pipe may take after the proxy was told to stop at once.
SEND_GRACE: Final = 10.0


class ProcessWriter(BoundedProducer):
    """The proxy's side: the same producer methods as :class:`CaptureWriter`."""

    def __init__(
        self, spec: ProcessSpec, *, on_full: OnFull = "block", max_bytes: int = HELD_BYTES
    ) -> None:
        super().__init__(on_full=on_full, max_bytes=max_bytes)
        self.spec = spec
        self._batch: list[tuple[Any, ...]] = []
        self._batch_bytes = 0
        self._batch_due = trio.Event()
        self._drops = Gap(wall_ns=0, records=0, bytes=0)
        self._drop_ids: set[str] = set()
        self._child: dict[str, Any] = {"paths": []}
        self._records_dropped = self._records_lost = 0
        self.pid: int | None = None
        self._sending: int | None = None  # the records of a write to the pipe in progress

    # -- producers ------------------------------------------------------------------------------------

    def submit_nowait(self, record: Record) -> bool:
        """Take ``record`` for the writer process; never waits (see CaptureWriter.submit_nowait)."""
        if self._closed or self._failed is not None:
            self._records_lost += 1
            return False
        size = _size(record)
        if self.on_full == "drop" and self._held >= self._max_bytes:
            self._records_dropped += 1
            self._drops = dataclasses.replace(
                self._drops, records=self._drops.records + 1, bytes=self._drops.bytes + size
            )
            self._drop_ids.add(getattr(record, "x", ""))
            return False
        if not self._batch:
            self._batch_due.set()
        self._batch.append(record_to_tuple(record))
        self._batch_bytes += size
        self._held += size
        if self._batch_bytes >= BATCH_BYTES:
            self._batch_due.set()
        return True

    # -- state ----------------------------------------------------------------------------------------

    def statistics(self) -> WriterStatistics:
        child = self._child
        paths = tuple(Path(p) for p in child["paths"])
        return WriterStatistics(
            queued_bytes=self._held,
            records_written=child.get("records_written", 0),
            frames_written=child.get("frames_written", 0),
            bytes_written=child.get("bytes_written", 0),
            records_dropped=self._records_dropped,
            records_lost=self._records_lost + child.get("records_lost", 0),
            failed=self._failed or child.get("failed"),
            path=paths[-1] if paths else None,
            paths=paths,
        )

    async def aclose(self) -> None:
        """No more records: send what is left, let the writer process finish its file."""
        self._closed = True
        self._batch_due.set()
        self._room.set()
        await trio.lowlevel.checkpoint()

    # -- the pipe -------------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the writer process, pump batches to it until :meth:`aclose`, then wait for it."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "wirecap.capture.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = process.pid
        assert process.stdin is not None
        assert process.stdout is not None
        if isinstance(process.stdin, trio.lowlevel.FdStream):
            _widen_pipe(process.stdin.fileno())
        try:
            async with trio.open_nursery() as nursery:
                first = trio.Event()
                nursery.start_soon(self._read_statistics, process.stdout, first)
                spec = json.dumps(dataclasses.asdict(self.spec)).encode()
                await self._send(process.stdin, LENGTH.pack(len(spec)) + spec)
                await first.wait()
                task_status.started(self.statistics().path)
                await self._pump(process.stdin)
                with contextlib.suppress(*_BROKEN):
                    await process.stdin.aclose()
                await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:  # cancelled: the process finishes on its own
                    with trio.move_on_after(10):
                        await self._send_rest(process.stdin)
                    with contextlib.suppress(*_BROKEN):
                        await process.stdin.aclose()
                    with trio.move_on_after(10):
                        await process.wait()
            self._finished.set()

    async def _pump(self, stdin: trio.abc.SendStream) -> None:
        while True:
            if not self._batch and not self._drops.records:
                if self._closed:
                    return
                self._batch_due = trio.Event()
                await self._batch_due.wait()
            with trio.move_on_after(BATCH_SECONDS):
                while self._batch_bytes < BATCH_BYTES and not self._closed:
                    self._batch_due = trio.Event()
                    await self._batch_due.wait()
            await self._send_batch(stdin)

    async def _send_rest(self, stdin: trio.abc.SendStream) -> None:
        """After a cancellation (a second Ctrl-C): the batch not yet sent goes down the pipe,
        unless a write was cut (its records and these are lost)."""
        if self._sending is not None:
            self._records_lost += self._sending + len(self._batch)
            return
        if self._batch or self._drops.records:
            await self._send_batch(stdin)

    async def _send_batch(self, stdin: trio.abc.SendStream) -> None:
        """The records waiting (and a gap record for those dropped) as one message."""
        batch, sent = self._take_batch()
        payload = marshal.dumps(batch)
        await self._send(stdin, LENGTH.pack(len(payload)) + payload, records=len(batch))
        self._freed(sent)

    def _take_batch(self) -> tuple[list[tuple[Any, ...]], int]:
        batch, self._batch = self._batch, []
        sent, self._batch_bytes = self._batch_bytes, 0
        if self._drops.records:
            gap = dataclasses.replace(
                self._drops, wall_ns=time.time_ns(), exchanges=tuple(sorted(self._drop_ids))
            )
            batch.append(record_to_tuple(gap))
            self._drops, self._drop_ids = Gap(wall_ns=0, records=0, bytes=0), set()
        return batch, sent

    async def _send(self, stdin: trio.abc.SendStream, data: bytes, records: int = 0) -> None:
        if self._failed is not None:
            self._records_lost += records
            await trio.lowlevel.checkpoint()
            return
        self._sending = records
        # A cancellation (a second Ctrl-C) does not cut a message in half, which would garble
        # the pipe; a writer process that reads nothing for SEND_GRACE seconds does.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SEND_GRACE):
            try:
                await stdin.send_all(data)
            except _BROKEN:
                self._records_lost += records
                self._fail("the capture writer process exited")
            self._sending = None

    async def _read_statistics(self, stdout: trio.abc.ReceiveStream, first: trio.Event) -> None:
        buffer = b""
        async for data in stdout:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._child = json.loads(line)
                first.set()
                if self._child.get("failed"):
                    self._fail(f"writing the capture failed ({self._child['failed']})")
        first.set()
        if not self._closed:
            self._fail("the capture writer process exited")

    def _fail(self, reason: str) -> None:
        if self._failed is not None:
            return
        self._failed = reason
        self._room.set()
        logger.error(
            "CAPTURE STOPPED: %s. Traffic continues uncaptured; records from now on are counted "
            "as lost.",
            reason,
        )


_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


#: The pipe holds this much (Linux's default is 64 KiB, a quarter of a batch): fewer wake-ups of
#: both processes per batch.
PIPE_BYTES: Final = 1024 * 1024


def _widen_pipe(fd: int) -> None:
    """Ask for a pipe of :data:`PIPE_BYTES` (Linux's F_SETPIPE_SZ; elsewhere, or when refused, the
    pipe keeps its size)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _size(record: Record) -> int:
    """About how many bytes ``record`` holds (its data or head, plus its other fields)."""
    data = getattr(record, "data", None) or getattr(record, "head", None) or b""
    return len(data) + 64
