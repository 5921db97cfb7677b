"""Small test doubles shared by several test modules."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import trio

from wirecap.capture.records import Header
from wirecap.capture.sink import SegmentSink
from wirecap.capture.writer import CaptureWriter


def segment_header(segment: int) -> Header:
    """The header record of a segment a test writes with a sink of its own."""
    return Header(
        wirecap_version="test",
        created_ns=time.time_ns(),
        host="test",
        pid=os.getpid(),
        segment=segment,
    )


def full_disk_writer() -> CaptureWriter:
    """An in-process capture writer whose disk fills up after 400 bytes."""
    return CaptureWriter(
        SegmentSink(Path("/nonexistent"), segment_header, opener=lambda p: FailingFile(400)),
        max_bytes=2000,
    )


class FailingFile(io.RawIOBase):
    """A file whose disk fills up after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return len(data)


async def frames_written(writer, count: int) -> None:
    """Wait until ``writer`` has written ``count`` frames (a frame closes 250 ms after its first
    record): by looking, not by sleeping for a guessed time."""
    with trio.fail_after(30):
        while writer.statistics().frames_written < count:
            await trio.sleep(0.01)


async def start_recording_serve(*args: str, hang_guard: float = 30) -> tuple[trio.Process, str]:
    """``wirecap serve ARGS --listen 127.0.0.1:0`` in a process of its own, once its first line
    says where it records: the process and what it wrote to stderr so far."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "wirecap", "serve", *args, "--listen", "127.0.0.1:0"]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    err = b""
    with trio.fail_after(hang_guard):
        while b"recorded to" not in err:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, err.decode()
            err += chunk
    return process, err.decode()


async def stop_and_read(process: trio.Process, signum: int) -> tuple[bytes, bytes]:
    """Send ``signum`` to ``process`` and read its stdout and stderr to their end (each may be
    unpiped), then wait for it: what it wrote after the signal, on each."""
    process.send_signal(signum)
    out = err = b""
    if process.stdout is not None:
        while chunk := await process.stdout.receive_some(65536):
            out += chunk
    if process.stderr is not None:
        while chunk := await process.stderr.receive_some(4096):
            err += chunk
    await process.wait()
    return out, err
