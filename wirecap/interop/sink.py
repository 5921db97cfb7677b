"""A capture segment that imported exchanges are written into (blocking, one thread).

On :class:`~wirecap.capture.sink.SegmentSink`: the file is made with mode 0600, never over
another, and gets its index and footer on close. Records are collected into frames of about
:data:`~wirecap.capture.sink.FRAME_MAX_BYTES`, as the proxy's writer makes them. :meth:`abandon`
removes what was written, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from wirecap.capture.sink import FRAME_MAX_BYTES, SegmentHeader, SegmentSink
from wirecap.interop.build import exchange_records

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.capture.records import Record
    from wirecap.capture.redact import Redactor
    from wirecap.interop.build import Imported

#: What the header says of a capture written without redaction.
NO_REDACTION: dict[str, Any] = {"enabled": False, "headers": [], "body_patterns": []}


class ImportSink:
    """Writes imported exchanges as one new capture segment in ``directory`` (which must exist);
    the segment is made by the first exchange."""

    def __init__(self, directory: Path, redactor: Redactor | None = None) -> None:
        redaction = (
            {"enabled": True, **redactor.rules.describe()} if redactor is not None else NO_REDACTION
        )
        # a random part in the name: two imports into one directory within a second never meet
        prefix = f"import-{os.urandom(3).hex()}"
        self._sink = SegmentSink(directory, SegmentHeader(redaction), prefix=prefix)
        self._redactor = redactor
        self._batch: list[Record] = []
        self._size = 0
        self.exchanges = 0

    @property
    def paths(self) -> list[Path]:
        return list(self._sink.paths)

    def add(self, imported: Imported) -> str:
        """Write ``imported`` as a new exchange; returns its id. Raises
        :class:`~wirecap.interop.build.EntryError` (nothing written) for one that cannot be."""
        x = os.urandom(6).hex()
        records = exchange_records(imported, x, self._redactor)
        if self._sink.path is None:
            self._sink.open()
        for record in records:
            self._batch.append(record)
            self._size += len(getattr(record, "data", b"")) + len(getattr(record, "head", b""))
            if self._size >= FRAME_MAX_BYTES:
                self._flush()
        self.exchanges += 1
        return x

    def _flush(self) -> None:
        if self._batch:
            self._sink.write_records(self._batch)
        self._batch, self._size = [], 0

    def close(self) -> None:
        """Write what is left, the index and the footer."""
        if self._sink.path is not None:
            self._flush()
            self._sink.close()

    def abandon(self) -> None:
        """Close and remove the segment written so far."""
        self._sink.abandon()
        for path in self._sink.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
