"""Where an exchange read from a capture keeps its body records until they are asked for.

Small bodies stay in memory as they are (:data:`HELD_BODY_BYTES`), so that a table of many small
exchanges does not decompress each frame once per exchange in it. Past that, the bytes are packed
with zstd in memory while they pack into :data:`PACKED_BODY_BYTES`. A body that does not pack is
read again from the capture when asked for, a frame at a time, so a body of any size costs memory
only when a caller joins it.

Reading a body again from the capture decodes every record of the frames it lies in. When other
large bodies were open at the same time, those frames are mostly theirs, and for K concurrent long
bodies each read would cost the whole stretch of file they share (K times the file for a pass). So
a body that no longer packs while another such body of the same pass is still open goes to a spool
file of its own instead ($TMPDIR, mode 0600, removed when the exchange is let go): a pass then
writes and reads each of those bytes once.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import itertools
import os
import tempfile
import weakref
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

import zstandard

from wirecap.capture.decoding import Budget
from wirecap.capture.records import BodyChunk, Direction, Record, Redaction

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

#: Body bytes an exchange holds as they are (both directions); 256 KiB is one of the proxy's
#: largest reads.
HELD_BODY_BYTES: Final = 256 * 1024
#: Past HELD_BODY_BYTES, the bytes are kept zstd-packed in memory while they pack into this much.
PACKED_BODY_BYTES: Final = 256 * 1024
PACK_LEVEL: Final = 1


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkMark:
    """One body read without its bytes: direction, arrival time and size (for timelines)."""

    dir: Direction
    ns: int
    size: int


class Timeline:
    """The body reads of an exchange, both directions in arrival order, without their bytes.

    Kept compact (17 bytes a read) because a long stream can have millions of small reads."""

    __slots__ = ("_dirs", "_ns", "_sizes")

    def __init__(self) -> None:
        self._dirs = bytearray()  # 0: request, 1: response
        self._ns = array.array("q")
        self._sizes = array.array("q")

    def add(self, chunk: BodyChunk) -> None:
        self._dirs.append(chunk.dir == "res")
        self._ns.append(chunk.ns)
        self._sizes.append(len(chunk.data))

    def __len__(self) -> int:
        return len(self._dirs)

    def __iter__(self) -> Iterator[ChunkMark]:
        for is_res, ns, size in zip(self._dirs, self._ns, self._sizes, strict=True):
            yield ChunkMark("res" if is_res else "req", ns, size)

    def __getitem__(self, i: int) -> ChunkMark:
        return ChunkMark("res" if self._dirs[i] else "req", self._ns[i], self._sizes[i])


class Frames(Protocol):
    """A capture file as a body store reads it again."""

    @property
    def size(self) -> int: ...

    def read_frame(self, offset: int, budget: Budget | None = None) -> list[Record]: ...


#: Where a body record sits: the file, and the offset of the data frame holding it.
Place: TypeAlias = "tuple[Frames, int]"
_Redactions: TypeAlias = "dict[int, tuple[Redaction, ...]]"


class ReadingPass:
    """What the exchanges read in one pass over a capture share: how many of them hold a body
    past what packs and have not ended (their frames hold each other's records)."""

    __slots__ = ("open_large",)

    def __init__(self) -> None:
        self.open_large = 0


class BodyStore:
    """The body records of one exchange: held, packed, spooled, or left in the capture."""

    __slots__ = (
        "__weakref__",
        "_held",
        "_held_bytes",
        "_in_file",
        "_large",
        "_marks",
        "_packed",
        "_packed_bytes",
        "_places",
        "_reading",
        "_spool",
        "_spooled",
        "_spooled_redactions",
        "x",
    )

    def __init__(self, x: str, marks: Timeline, reading: ReadingPass | None = None) -> None:
        self.x = x
        self._marks = marks
        self._reading = reading
        self._held: list[BodyChunk] = []
        self._held_bytes = 0
        #: Batches of packed records: (count, their bytes compressed, their redactions by position
        #: in the batch). They are the first records of the timeline.
        self._packed: list[tuple[int, bytes, _Redactions]] = []
        self._packed_bytes = 0
        self._spool: str | None = None  # the spool file's path
        self._spooled = 0  # records in the spool: the first of the timeline
        self._spooled_redactions: _Redactions = {}
        self._places: dict[tuple[int, int], Place] = {}
        self._in_file = False
        self._large = False  # counted in the pass's open_large

    def stored_size(self) -> int | None:
        """The size of the capture files the records came from (None: none)."""
        files = {id(f): f for f, _ in self._places.values()}
        return sum(f.size for f in files.values()) if files else None

    @property
    def in_memory(self) -> bool:
        """Whether every record is held as it is."""
        return not (self._in_file or self._packed or self._spool)

    def add(self, chunk: BodyChunk, place: Place | None) -> None:
        """Take the next body record; records that come with a ``place`` (all of them, or none)
        may be let go and read again from there."""
        if place is not None:
            self._places.setdefault((id(place[0]), place[1]), place)
        if self._in_file:
            return
        self._held.append(chunk)
        self._held_bytes += len(chunk.data)
        if self._held_bytes <= HELD_BODY_BYTES or not self._places:
            return
        if self._spool is not None:
            try:
                self._spool_held()
            except OSError:  # no more room: the capture still has every record
                self._leave_in_capture()
            return
        self._pack_held()
        if self._packed_bytes > PACKED_BODY_BYTES:
            self._no_longer_packs()

    def ended(self) -> None:
        """The exchange has ended: it no longer shares frames with bodies still to come."""
        if self._large and self._reading is not None:
            self._reading.open_large -= 1
            self._large = False

    def chunks(self) -> Iterator[BodyChunk]:
        """Every body record in stored order."""
        if self._in_file:
            return self._read_again()
        if self._spool is not None:
            return self._unspooled(self._spool)
        return itertools.chain(self._unpacked(), self._held)

    # -- storage ---------------------------------------------------------------------------------

    def _pack_held(self) -> None:
        packed = zstandard.ZstdCompressor(level=PACK_LEVEL).compress(
            b"".join(c.data for c in self._held)
        )
        self._packed.append((len(self._held), packed, _redactions_of(self._held)))
        self._packed_bytes += len(packed)
        self._held.clear()
        self._held_bytes = 0

    def _no_longer_packs(self) -> None:
        """Spool the body while another large body of the pass is open; else leave it in the
        capture (its frames are then mostly its own)."""
        reading = self._reading
        if reading is not None and reading.open_large > 0:
            try:
                fd, self._spool = tempfile.mkstemp(prefix="wirecap-body-")  # mode 0600
                os.close(fd)
                weakref.finalize(self, _remove, self._spool)
                self._append_to_spool(self._unpacked())  # a batch at a time, then the held ones
                self._packed.clear()
                self._spool_held()
            except OSError:  # no room or no temporary directory: read again from the capture
                self._leave_in_capture()
        else:
            self._leave_in_capture()
        if reading is not None:
            reading.open_large += 1
            self._large = True

    def _leave_in_capture(self) -> None:
        """Let go of every record kept here: they are read again from the capture."""
        self._in_file = True
        self._spool = None
        self._packed.clear()
        self._held.clear()

    def _spool_held(self) -> None:
        self._append_to_spool(self._held)
        self._held.clear()
        self._held_bytes = 0

    def _append_to_spool(self, chunks: Iterable[BodyChunk]) -> None:
        assert self._spool is not None
        with open(self._spool, "ab") as f:
            for chunk in chunks:
                f.write(chunk.data)
                if chunk.redactions:
                    self._spooled_redactions[self._spooled] = chunk.redactions
                self._spooled += 1

    # -- reading back ----------------------------------------------------------------------------

    def _record(self, i: int, data: bytes, redactions: tuple[Redaction, ...]) -> BodyChunk:
        mark = self._marks[i]
        return BodyChunk(x=self.x, dir=mark.dir, ns=mark.ns, data=data, redactions=redactions)

    def _unpacked(self) -> Iterator[BodyChunk]:
        first = 0
        for count, packed, redactions in self._packed:
            data = zstandard.ZstdDecompressor().decompress(packed)
            at = 0
            for i in range(count):
                size = self._marks[first + i].size
                yield self._record(first + i, data[at : at + size], redactions.get(i, ()))
                at += size
            first += count

    def _unspooled(self, path: str) -> Iterator[BodyChunk]:
        """The spooled records, then the held ones; the file is opened once iteration starts."""
        try:
            spool = open(path, "rb")  # noqa: SIM115  (closed below)
        except OSError:  # removed from under us: the capture still has every record
            yield from self._read_again()
            return
        with spool:
            for i in range(self._spooled):
                data = spool.read(self._marks[i].size)
                yield self._record(i, data, self._spooled_redactions.get(i, ()))
        yield from self._held

    def _read_again(self) -> Iterator[BodyChunk]:
        budgets: dict[int, Budget] = {}  # one pass over each file's frames
        for capture_file, offset in list(self._places.values()):
            budget = budgets.setdefault(id(capture_file), Budget.for_file(capture_file.size))
            for record in capture_file.read_frame(offset, budget):
                if isinstance(record, BodyChunk) and record.x == self.x:
                    yield record


def _redactions_of(chunks: Sequence[BodyChunk]) -> _Redactions:
    return {i: c.redactions for i, c in enumerate(chunks) if c.redactions}


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
