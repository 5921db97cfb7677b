"""Small test doubles shared by several test modules."""

from __future__ import annotations

import io


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
