"""Small test doubles shared by several test modules."""

from __future__ import annotations

import io

import trio


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
