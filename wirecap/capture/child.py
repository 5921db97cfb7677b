"""The capture writer process: ``python -m wirecap.capture.child``, started by
:class:`~wirecap.capture.process.ProcessWriter`. It imports no trio (a smaller process).

Input (stdin): length-prefixed messages (a little-endian u32, then the bytes): first a
:class:`ProcessSpec` as JSON, then batches of records, each a ``marshal``-ed list of
:func:`~wirecap.capture.records.record_to_tuple` tuples. The end of the input (the proxy closed the
pipe, or died) finishes the file: the last frame, the index and the footer.
Output (stdout): the statistics as JSON lines, whenever frames are written or writing fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import marshal
import math
import os
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Final

from wirecap.capture.allocator import reuse_large_buffers
from wirecap.capture.frames import encode_record
from wirecap.capture.records import Record, record_from_tuple
from wirecap.capture.redact import Redactor
from wirecap.capture.sessions import SessionEnds
from wirecap.capture.sink import (
    FRAME_MAX_BYTES,
    FRAME_MAX_SECONDS,
    OpenFrame,
    SegmentHeader,
    SegmentSink,
)

LENGTH: Final = struct.Struct("<I")


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What the writer process needs to know, sent as the first line of its input (JSON)."""

    directory: str
    redaction: dict[str, Any]  # the segment header's description of the redaction
    redactor: dict[str, Any] | None  # Redactor.describe(), or None: store everything
    listen: str | None
    host: str
    pid: int
    level: int
    rotate_bytes: int | None
    rotate_seconds: float | None


class _Frames:
    """The writer process's frame collector: records in, frames out to a SegmentSink. Each record
    is judged (a WebSocket session's end, see sessions.py), then prepared (redacted), then framed."""

    def __init__(self, sink: SegmentSink, prepare: Redactor | None, spec: ProcessSpec) -> None:
        self.sink = sink
        self.prepare = prepare
        self.sessions = SessionEnds()
        self.spec = spec
        self.frame = OpenFrame()
        self.rotate_at = _next(spec.rotate_seconds)
        self.failed: str | None = None
        self.written = self.frames = self.bytes = self.lost = 0
        self._reported: tuple[Any, ...] = ()

    def add(self, record: Record) -> None:
        if self.failed is not None:
            self.lost += 1
            return
        record = self.sessions.judge(record)
        if self.prepare is not None:
            record = self.prepare(record)
        self.frame.add(record, encode_record(record), time.monotonic())
        if self.frame.size >= FRAME_MAX_BYTES:
            self.flush()

    def timeout(self) -> float | None:
        """Seconds until the open frame is due or the segment must rotate (None: no limit)."""
        due = self.frame.opened + FRAME_MAX_SECONDS if self.frame.parts else math.inf
        wait = min(due, self.rotate_at) - time.monotonic()
        return None if wait == math.inf else max(0.0, wait)

    def tick(self) -> None:
        """Close the open frame if it is due; rotate if the segment is old enough."""
        now = time.monotonic()
        if self.frame.parts and now >= self.frame.opened + FRAME_MAX_SECONDS:
            self.flush()
        if now >= self.rotate_at:
            self.rotate_at = _next(self.spec.rotate_seconds)
            self._guard(self.sink.rotate)

    def flush(self) -> None:
        if not self.frame.parts:
            return
        frame, self.frame = self.frame, OpenFrame()
        items, payload = frame.items, frame.payload()
        if self.failed is not None:
            self.lost += len(items)
            return
        written = self._guard(self.sink.write_frame, items, payload)
        if written is None:
            self.lost += len(items)
            return
        self.written += len(items)
        self.frames += 1
        self.bytes += written
        rotate_bytes = self.spec.rotate_bytes
        if rotate_bytes is not None and self.sink.offset >= rotate_bytes:
            self._guard(self.sink.rotate)

    def _guard(self, fn: Any, *args: Any) -> Any:
        if self.failed is not None:
            return None
        try:
            return fn(*args)
        except OSError as exc:
            self.failed = f"{type(exc).__name__}: {exc}"  # the proxy logs it
            self.sink.abandon()
            return None

    def report(self, out: BinaryIO, *, changed_only: bool = False) -> None:
        """Write the statistics as a JSON line (with ``changed_only``, only when they changed)."""
        state = (self.frames, self.failed, len(self.sink.paths))
        if changed_only and state == self._reported:
            return
        self._reported = state
        stats = {
            "records_written": self.written,
            "frames_written": self.frames,
            "bytes_written": self.bytes,
            "records_lost": self.lost,
            "failed": self.failed,
            "paths": [str(p) for p in self.sink.paths],
        }
        with contextlib.suppress(OSError):
            out.write(json.dumps(stats).encode() + b"\n")
            out.flush()


def _next(seconds: float | None) -> float:
    return math.inf if seconds is None else time.monotonic() + seconds


def _read_message(fd: int) -> bytes | None:
    """One length-prefixed message from ``fd``; None at the end of input."""
    head = _read_exact(fd, LENGTH.size)
    return None if head is None else _read_exact(fd, LENGTH.unpack(head)[0])


def _read_exact(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    while size:
        data = os.read(fd, min(size, 1 << 20))
        if not data:
            return None
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def main() -> None:
    """The writer process: a spec, then batches of records, until the end of its input."""
    # A Ctrl-C or a service manager's SIGTERM reaches the whole process group: the proxy finishes
    # its exchanges and then closes the pipe, which is what ends this process and its file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reuse_large_buffers()
    fd, stdout = sys.stdin.fileno(), sys.stdout.buffer
    first = _read_message(fd)
    if first is None:
        return
    spec = ProcessSpec(**json.loads(first))
    header = SegmentHeader(spec.redaction, listen=spec.listen, host=spec.host, pid=spec.pid)
    sink = SegmentSink(Path(spec.directory), header, level=spec.level, pid=spec.pid)
    prepare = Redactor.from_description(spec.redactor) if spec.redactor is not None else None
    frames = _Frames(sink, prepare, spec)
    frames._guard(sink.open)
    frames.report(stdout)
    while True:
        readable, _, _ = select.select([fd], [], [], frames.timeout())
        if readable:
            payload = _read_message(fd)
            if payload is None:
                break  # the proxy closed the pipe (or died): finish the file
            for values in marshal.loads(payload):
                frames.add(record_from_tuple(values))
        frames.tick()
        frames.report(stdout, changed_only=True)
    frames.flush()
    if frames.failed is None:
        frames._guard(sink.close)
    frames.report(stdout)


if __name__ == "__main__":
    main()
