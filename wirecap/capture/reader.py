"""Reading capture files: segments, directories of segments, exchanges, and index repair.

The reader trusts no count, offset or size in the file. Frames are measured before they are
decompressed and decompressed as streams within a budget that grows with the file (decoding.py), CBOR
tags are refused, an index row is used only once it checks out, and every damaged region is reported
(as :class:`Damage`) while every intact frame around it is still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from wirecap.capture import frames
from wirecap.capture.bodies import (
    HELD_BODY_BYTES,
    BodyStore,
    Place,
    ReadingPass,
    Timeline,
)
from wirecap.capture.decoding import Budget, OverBudget, decode_index_frame, read_frame_records
from wirecap.capture.frames import Damage, FrameInfo
from wirecap.capture.index import Index, IndexBuilder
from wirecap.capture.payload import iter_request_payload, iter_response_payload
from wirecap.capture.records import (
    PROXY_PATH_HEADER,
    BodyChunk,
    ExchangeEnd,
    ExchangeNote,
    Gap,
    Header,
    Record,
    RecordError,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping


class CaptureError(Exception):
    """A capture that cannot be opened at all (missing, not a capture, empty directory)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileDamage:
    """Damage found in one file of a capture."""

    path: Path
    offset: int
    end: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: bytes {self.offset}..{self.end}: {self.reason}"


def strip_proxy_path(head: bytes) -> bytes:
    """Remove the X-Proxy-Path line that wirecap adds as the last header line of a stored head."""
    end = head.rfind(b"\r\n\r\n")
    if end == -1:
        return head
    line_start = head.rfind(b"\r\n", 0, end) + 2
    name = head[line_start : head.find(b":", line_start, end)]
    if name.lower() != PROXY_PATH_HEADER.lower():
        return head
    return head[:line_start] + head[end + 2 :]


def proxy_path_of(head: bytes) -> str | None:
    """The X-Proxy-Path URL in a stored upstream head, if there is one."""
    end = head.rfind(b"\r\n\r\n")
    if end == -1:
        return None
    line_start = head.rfind(b"\r\n", 0, end) + 2
    name, sep, value = head[line_start:end].partition(b":")
    if not sep or name.lower() != PROXY_PATH_HEADER.lower():
        return None
    return value.strip().decode("ascii", "replace")


def join_chunks(chunks: Iterable[BodyChunk]) -> bytes:
    """The bytes of ``chunks`` in one string, built in place (no list of them held beside it)."""
    out = io.BytesIO()
    for chunk in chunks:
        out.write(chunk.data)
    return out.getvalue()


@dataclasses.dataclass(slots=True)
class Exchange:
    """Everything recorded about one request and its response.

    An exchange read from a file keeps its body records in a :class:`~wirecap.capture.bodies.
    BodyStore` (held while small, packed, spooled, or read again from the file when asked for:
    :attr:`timeline` has their times and sizes), so a body of any size costs memory only when a
    caller joins it. The ``iter_*`` methods
    stream: :meth:`iter_wire` the body records as stored (the bytes of each read as they crossed
    the wire, transfer coding included), :meth:`iter_payload` the payload (see payload.py),
    :meth:`iter_request_bytes` and friends a side's exact bytes, head first. The properties and
    ``*_bytes()`` methods join the same into one string. An exchange built with :meth:`add` alone
    (no place given) holds its chunks.
    """

    id: str
    request: RequestReceived | None = None
    upstream: UpstreamRequest | None = None
    responses: list[ResponseHead] = dataclasses.field(default_factory=list)
    end: ExchangeEnd | None = None
    #: What the tool that made the exchange says about it: import provenance, injected faults.
    notes: list[ExchangeNote] = dataclasses.field(default_factory=list)
    #: Format 1 files stored payload instead of wire bytes: their chunks are their payload.
    wire: bool = True
    timeline: Timeline = dataclasses.field(default_factory=Timeline, repr=False)
    #: The pass over a capture this exchange is read in (see bodies.py), if any.
    reading: ReadingPass | None = dataclasses.field(default=None, repr=False)
    _bodies: BodyStore = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._bodies = BodyStore(self.id, self.timeline, self.reading)

    def add(self, record: Record, place: Place | None = None) -> None:
        """Take one record of this exchange; body records go to its body store, which may let
        go of those that came with a ``place`` (all of them, or none) and read them from there."""
        if isinstance(record, BodyChunk):
            self.timeline.add(record)
            self._bodies.add(record, place)
        elif isinstance(record, RequestReceived):
            self.request = record
        elif isinstance(record, UpstreamRequest):
            self.upstream = record
        elif isinstance(record, ResponseHead):
            self.responses.append(record)
        elif isinstance(record, ExchangeEnd):
            self.end = record
            self._bodies.ended()
        elif isinstance(record, ExchangeNote):
            self.notes.append(record)

    def notes_of(self, kind: str) -> list[Mapping[str, Any]]:
        """The details of this exchange's notes of ``kind`` ("import", "fault")."""
        return [note.detail for note in self.notes if note.kind == kind]

    @property
    def complete(self) -> bool:
        return self.end is not None

    @property
    def response(self) -> ResponseHead | None:
        """The final (non-1xx) response head the client got: the last one, when the proxy answered
        an upstream head it could not relay."""
        finals = [head for head in self.responses if head.status >= 200]
        return finals[-1] if finals else None

    @property
    def informational(self) -> list[ResponseHead]:
        return [h for h in self.responses if h.status < 200]

    def stored_size(self) -> int | None:
        """The size of the capture files this exchange's bodies were read from (None: none)."""
        return self._bodies.stored_size()

    @property
    def holds_bodies(self) -> bool:
        """Whether the body bytes are in memory as they are (small bodies), rather than packed,
        spooled or read again from the capture file each time they are asked for."""
        return self._bodies.in_memory

    # -- body access, streaming ------------------------------------------------------------------

    def iter_wire(self, direction: str | None = None) -> Iterator[BodyChunk]:
        """The body records of one direction (``"req"``/``"res"``; None: both) in stored order,
        from wherever the body store keeps them."""
        return (c for c in self._bodies.chunks() if direction in (None, c.dir))

    def iter_payload(self, direction: str) -> Iterator[BodyChunk]:
        """The body's payload of one direction, one chunk per read that carried some."""
        chunks = self.iter_wire(direction)
        if not self.wire:
            return chunks
        if direction == "req":
            if self.request is None:
                return chunks
            return iter_request_payload(self.request.head, chunks)
        head = self.response
        if head is None:
            return chunks
        method = (self.method or "GET").encode("ascii", "replace")
        return iter_response_payload(method, head.head, chunks)

    def iter_request_bytes(self) -> Iterator[bytes]:
        """:meth:`request_bytes` piece by piece."""
        yield self.request.head if self.request else b""
        yield from (c.data for c in self.iter_wire("req"))

    def iter_upstream_request_bytes(self) -> Iterator[bytes]:
        """:meth:`upstream_request_bytes` piece by piece."""
        yield self.upstream_wire_head or b""
        yield from (c.data for c in self.iter_wire("req"))

    def iter_response_bytes(self) -> Iterator[bytes]:
        """:meth:`response_bytes` piece by piece."""
        yield from (h.head for h in self.responses)
        yield from (c.data for c in self.iter_wire("res"))

    # -- body access, joined ---------------------------------------------------------------------

    @property
    def chunks(self) -> list[BodyChunk]:
        """Every body record, both directions, as stored (read into memory)."""
        return list(self.iter_wire())

    @property
    def request_chunks(self) -> list[BodyChunk]:
        """The request body's payload, one chunk per read that carried some."""
        return list(self.iter_payload("req"))

    @property
    def response_chunks(self) -> list[BodyChunk]:
        """The response body's payload, one chunk per read that carried some."""
        return list(self.iter_payload("res"))

    @property
    def request_body(self) -> bytes:
        return join_chunks(self.iter_payload("req"))

    @property
    def response_body(self) -> bytes:
        return join_chunks(self.iter_payload("res"))

    @property
    def method(self) -> str | None:
        return self.request.method if self.request else None

    @property
    def target(self) -> str | None:
        return self.request.target if self.request else None

    @property
    def upstream_url(self) -> str | None:
        return self.request.upstream_url if self.request else None

    @property
    def wall_ns(self) -> int | None:
        return self.request.wall_ns if self.request else None

    @property
    def status(self) -> int | None:
        if self.end is not None and self.end.status is not None:
            return self.end.status
        head = self.response
        return head.status if head else None

    @property
    def outcome(self) -> str:
        return self.end.outcome if self.end else "incomplete"

    @property
    def duration_ns(self) -> int | None:
        return self.end.ns if self.end else None

    @property
    def ttfb_ns(self) -> int | None:
        if self.end is not None and self.end.ttfb_ns is not None:
            return self.end.ttfb_ns
        return self.responses[0].ns if self.responses else None

    @property
    def upstream_wire_head(self) -> bytes | None:
        """The request head exactly as it went on the wire upstream (X-Proxy-Path removed if added)."""
        if self.upstream is None:
            return None
        if self.upstream.proxy_path == "forwarded":
            return self.upstream.head
        return strip_proxy_path(self.upstream.head)

    def request_bytes(self) -> bytes:
        """The client's request as received: head then body (redacted where redaction applied)."""
        return b"".join(self.iter_request_bytes())

    def upstream_request_bytes(self) -> bytes:
        """The request as it went upstream: the head as sent, then the body bytes."""
        return b"".join(self.iter_upstream_request_bytes())

    def response_bytes(self) -> bytes:
        """The response as the upstream sent it: every head (1xx first) then the body bytes."""
        return b"".join(self.iter_response_bytes())


class CaptureFile:
    """One capture segment, memory-mapped read-only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                size = stat.st_size
                self._buf: frames.Buffer = (
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
                )
        except OSError as exc:
            raise CaptureError(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        self.size = len(self._buf)
        self._identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, size)
        self.damage: list[FileDamage] = []
        self._index: Index | None = None
        self._index_offset: int | None = None
        self._index_length = 0
        self.index_from_file = False
        #: Why the index stored in the file cannot be used, in whole or in part (None if it can).
        self.index_problem: str | None = None
        self._scanned = False
        self.header: Header | None = None
        self._read_footer()
        self._read_header()

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- structure -------------------------------------------------------------------------------

    @property
    def indexed(self) -> bool:
        """Whether the file ends with a valid footer and index (false after a crash)."""
        return self._index_offset is not None

    @property
    def data_end(self) -> int:
        """Where data frames end: the index frame's offset, or the end of the file."""
        return self._index_offset if self._index_offset is not None else self.size

    def fingerprint(self) -> str | None:
        """A digest that changes whenever this closed segment could read differently: its device,
        inode, modification time and size, and its index and footer bytes (which list every exchange
        and the frames that hold it). None while the file has no index (live or cut off), since
        then it may still grow. What a cache of results derived from the file is keyed by."""
        if self._index_offset is None:
            return None
        digest = hashlib.sha256(repr(self._identity).encode())
        digest.update(self._buf[self._index_offset : self.size])
        return digest.hexdigest()

    def _read_footer(self) -> None:
        """Find the index frame through the footer; the index itself is decoded on first use."""
        if self.size < frames.FOOTER_SIZE:
            return
        pointer = frames.decode_footer(self._buf[self.size - frames.FOOTER_SIZE :])
        if pointer is None:
            return
        offset, length = pointer
        if offset + length != self.size - frames.FOOTER_SIZE:
            self._note(offset, self.size, "footer points outside the file; index ignored")
            return
        self._index_offset, self._index_length = offset, length

    def _read_index(self) -> Index | None:
        """The index stored in the file, or None (damage noted) when it cannot be used at all."""
        if self._index_offset is None:
            return None
        offset, length = self._index_offset, self._index_length
        try:
            index = Index.from_map(
                decode_index_frame(bytes(self._buf[offset : offset + length])), offset
            )
        except (frames.FrameError, RecordError) as exc:
            self.index_problem = f"index unreadable ({exc})"
            self._note(offset, self.size, f"{self.index_problem}; rebuilt by scanning")
            return None
        for d in index.damage:
            self._note(d["offset"], d["end"], d["reason"])
        if index.bad_rows:
            row, why = next(iter(index.bad_rows.items()))
            self.index_problem = f"index rows unusable: {len(index.bad_rows)} (row {row}: {why})"
            self._note(
                offset, self.size, f"{self.index_problem}; their exchanges found by scanning"
            )
        return index

    def _read_header(self) -> None:
        for item in frames.iter_frames(self._buf):
            if isinstance(item, Damage):
                break
            if item.kind != "data":
                continue
            try:
                records, _problem = self._decode(item, Budget.for_file(self.size))
            except OverBudget:
                break
            if records and isinstance(records[0], Header):
                self.header = records[0]
            break
        if self.header is None and self.size:
            raise CaptureError(f"{self.path} is not a wirecap capture (no header record)")

    def _note(self, offset: int, end: int, reason: str) -> None:
        self.damage.append(FileDamage(self.path, offset, end, reason))

    def _decode(self, info: FrameInfo, budget: Budget) -> tuple[list[Record], str | None]:
        """The records of the data frame ``info`` (see :func:`read_frame_records`)."""
        return read_frame_records(bytes(self._buf[info.offset : info.end]), info, budget)

    # -- records -----------------------------------------------------------------------------------

    def iter_frame_records(self) -> Iterator[tuple[int, list[Record]]]:
        """Every intact data frame in file order, as (offset, records). Notes damage on the way.

        One pass: it decompresses at most the file's budget (:meth:`Budget.for_file`)."""
        record_damage = not self._scanned
        budget = Budget.for_file(self.size)
        for item in frames.iter_frames(self._buf, 0, self.data_end):
            if isinstance(item, Damage):
                if record_damage:
                    self._note(item.offset, item.end, item.reason)
                continue
            if item.kind != "data":
                continue
            try:
                records, problem = self._decode(item, budget)
            except OverBudget as exc:
                if record_damage:
                    self._note(item.offset, self.data_end, str(exc))
                break
            if problem is not None and record_damage:
                self._note(item.offset, item.end, problem)
            yield item.offset, records
        self._scanned = True

    def records(self) -> Iterator[Record]:
        for _offset, records in self.iter_frame_records():
            yield from records

    # -- index -----------------------------------------------------------------------------------

    def index(self) -> Index:
        """The file's index: read from the file, or rebuilt by one scan when it has none."""
        if self._index is None:
            self._index = self._read_index()
            self.index_from_file = self._index is not None
        if self._index is None:
            builder = IndexBuilder()
            for offset, records in self.iter_frame_records():
                builder.observe_all(records, offset)
            self._index = builder.build()
        return self._index

    def records_of(self, exchange_id: str) -> list[Record]:
        """The records of one exchange: read from the frames its index row lists when the row
        checks out, else found by scanning the file (and the bad row noted as damage)."""
        return [record for record, _place in self.placed_records_of(exchange_id)]

    def placed_records_of(self, exchange_id: str) -> Iterable[tuple[Record, Place]]:
        """:meth:`records_of`, each record with the place of its frame (see :class:`Exchange`)."""
        try:
            entry = self.index().find(exchange_id)
        except RecordError as exc:
            self._note(
                self.data_end,
                self.size,
                f"index row of {exchange_id} unusable ({exc}); found by scanning",
            )
            return self._scan_for(exchange_id)
        if entry is None:
            return []
        found = self._read_listed(exchange_id, entry.frames)
        if found is None:
            self._note(
                self.data_end,
                self.size,
                f"index row of {exchange_id} lists frames that are damaged or without its "
                "records; found by scanning",
            )
            return self._scan_for(exchange_id)
        return found

    def _read_listed(
        self, exchange_id: str, offsets: list[int]
    ) -> Iterable[tuple[Record, Place]] | None:
        """The records of ``exchange_id`` in the data frames at ``offsets``; None unless each of
        them is an intact data frame holding some of its records (else the row is wrong, or its
        frames are damaged and a scan may find the records elsewhere). They are read in one pass
        and kept while their bodies are small (:data:`HELD_BODY_BYTES`); the frames of a larger
        exchange are only checked in that pass, and read again as its records are used."""
        budget = Budget.for_file(self.size)
        kept: list[tuple[Record, Place]] | None = []
        body_bytes = 0
        for offset in offsets:
            try:
                info = frames.parse_frame(self._buf, offset, self.data_end)
                records, problem = self._decode(info, budget) if info.kind == "data" else ([], "")
            except frames.FrameError:  # not a frame there, or over the budget
                return None
            self.release(info.offset, info.end)
            mine = [r for r in records if getattr(r, "x", None) == exchange_id]
            if problem is not None or not mine:
                return None
            if kept is not None:
                kept.extend((r, (self, offset)) for r in mine)
                body_bytes += sum(len(r.data) for r in mine if isinstance(r, BodyChunk))
                kept = kept if body_bytes <= HELD_BODY_BYTES else None
        return kept if kept is not None else self._reread_listed(exchange_id, offsets)

    def _reread_listed(
        self, exchange_id: str, offsets: list[int]
    ) -> Iterator[tuple[Record, Place]]:
        budget = Budget.for_file(self.size)
        for offset in offsets:
            for record in self.read_frame(offset, budget):
                if getattr(record, "x", None) == exchange_id:
                    yield record, (self, offset)

    def _scan_for(self, exchange_id: str) -> Iterator[tuple[Record, Place]]:
        return (p for p in self.placed_records() if getattr(p[0], "x", None) == exchange_id)

    # -- lazy body access ------------------------------------------------------------------------

    def read_frame(self, offset: int, budget: Budget | None = None) -> list[Record]:
        """The records of the data frame at ``offset`` (none if it cannot be read, or ``budget``
        is spent), its pages of the memory map given back afterwards: a body read again frame by
        frame stays out of memory. After :meth:`close`, the file is opened again for the read."""
        budget = budget or Budget.for_file(self.size)
        if isinstance(self._buf, mmap.mmap) and self._buf.closed:
            return self._read_frame_after_close(offset, budget)
        try:
            info = frames.parse_frame(self._buf, offset, self.data_end)
            records, _problem = self._decode(info, budget) if info.kind == "data" else ([], "")
        except frames.FrameError:  # not a frame there, or over the budget
            return []
        self.release(info.offset, info.end)
        return records

    def _read_frame_after_close(self, offset: int, budget: Budget) -> list[Record]:
        try:
            with (
                open(self.path, "rb") as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf,
            ):
                info = frames.parse_frame(buf, offset, self.data_end)
                if info.kind != "data":
                    return []
                return read_frame_records(bytes(buf[info.offset : info.end]), info, budget)[0]
        except (OSError, ValueError, frames.FrameError):
            return []

    def release(self, start: int, end: int) -> None:
        """Give back the memory map's pages that lie wholly inside ``start..end``: the bytes stay in
        the file (and the page cache), but no longer count in this process's resident memory.
        A no-op where the platform has no madvise."""
        if not isinstance(self._buf, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        last = min(end, self.size) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._buf.madvise(mmap.MADV_DONTNEED, first, last - first)

    def placed_records(self) -> Iterator[tuple[Record, Place]]:
        """Every record in file order with the place of its frame; pages of frames already read
        are given back as the scan goes on, so reading a file costs no more than one frame."""
        released = 0
        for offset, records in self.iter_frame_records():
            self.release(released, offset)
            released = offset
            for record in records:
                yield record, (self, offset)
        self.release(released, self.data_end)

    def damage_regions(self) -> list[FileDamage]:
        """Every damaged region, scanning the whole file once if it has not been scanned yet."""
        if not self._scanned:
            for _ in self.iter_frame_records():
                pass
        return list(self.damage)


def segment_paths(target: str | os.PathLike[str]) -> list[Path]:
    """The segment files a path names: the file itself, or a directory's segments in time order."""
    path = Path(target)
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir() if p.is_file() and p.name.endswith(frames.SEGMENT_SUFFIX)
        )
        if not found:
            raise CaptureError(f"no capture files ({frames.SEGMENT_SUFFIX}) in {path}")
        return found
    if not path.exists():
        raise CaptureError(f"no such capture: {path}")
    return [path]


class Capture:
    """One or more capture files (or directories of segments) read as one capture."""

    def __init__(self, *targets: str | os.PathLike[str]) -> None:
        paths: list[Path] = []
        for target in targets:
            paths.extend(segment_paths(target))
        if not paths:
            raise CaptureError("no capture given")
        self.files: list[CaptureFile] = []
        try:
            for p in paths:
                self.files.append(CaptureFile(p))
        except CaptureError:
            self.close()
            raise
        self.files.sort(
            key=lambda f: (
                f.header.created_ns if f.header else 0,
                f.header.segment if f.header else 0,
                str(f.path),
            )
        )

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def damage(self) -> list[FileDamage]:
        """Damage found so far by whatever was read (a lookup through the index reads little)."""
        return [d for f in self.files for d in f.damage]

    def scan_damage(self) -> list[FileDamage]:
        """Every damaged region of every file, scanning files not yet read in full."""
        return [d for f in self.files for d in f.damage_regions()]

    def records(self) -> Iterator[Record]:
        for f in self.files:
            yield from f.records()

    def gaps(self) -> Iterator[Gap]:
        for f in self.files:
            yield from f.index().gaps

    def exchanges(self) -> Iterator[Exchange]:
        """Every exchange in the order they started; incomplete ones (a crash) come last.

        Their bodies stay in the files (see :class:`Exchange`)."""
        return _assemble(record for f in self.files for record in f.placed_records())

    def get(self, exchange_id: str) -> Exchange | None:
        """One exchange by id, read through the index (frames of other exchanges are not decoded);
        its body stays in the file until asked for."""
        exchange: Exchange | None = None
        for f in self.files:
            for record, place in f.placed_records_of(exchange_id):
                if exchange is None:
                    exchange = Exchange(exchange_id, wire=f.header is None or f.header.version >= 2)
                exchange.add(record, place)
        return exchange


def assemble(records: Iterable[Record]) -> Iterator[Exchange]:
    """Group exchange records into exchanges, yielded in start order as soon as each is complete.

    Memory holds only the exchanges that started before the oldest unfinished one; these exchanges
    hold their body chunks.
    """
    return _assemble((record, None) for record in records)


def _assemble(placed: Iterable[tuple[Record, Place | None]]) -> Iterator[Exchange]:
    pending: dict[str, Exchange] = {}
    reading = ReadingPass()
    wire = True
    for record, place in placed:
        if isinstance(record, Header):
            wire = record.version >= 2
            continue
        x = getattr(record, "x", None)
        if x is None:
            continue
        exchange = pending.get(x)
        if exchange is None:
            exchange = pending[x] = Exchange(x, wire=wire, reading=reading)
        exchange.add(record, place)
        if isinstance(record, ExchangeEnd):
            while pending:
                first = next(iter(pending.values()))
                if not first.complete:
                    break
                del pending[first.id]
                yield first
    yield from pending.values()


def open_capture(*targets: str | os.PathLike[str]) -> Capture:
    """Open files and/or directories of segments as one capture."""
    return Capture(*targets)


@dataclasses.dataclass(frozen=True, slots=True)
class IndexRepair:
    """What :func:`repair_index` did."""

    path: Path
    already_indexed: bool
    exchanges: int
    truncated_at: int | None = None
    tail_saved_to: Path | None = None
    #: Why the index the file had was replaced (None when it had none).
    replaced: str | None = None


def repair_index(path: str | os.PathLike[str]) -> IndexRepair:
    """Give a file without a usable index (after a crash) its index and footer.

    A damaged tail (a frame cut off mid-write) is first moved to ``<file>.tail`` so that the repaired
    file is again a clean sequence of frames that stock zstd tools read; nothing is thrown away. An
    index that cannot be used (unreadable, or with rows that do not check out) is replaced. A file
    without a header record is not a capture: :class:`CaptureError`, and nothing is written.
    """
    path = Path(path)
    with CaptureFile(path) as cf:
        if cf.header is None:
            raise CaptureError("not a wirecap capture (no header record); not changed")
        replaced: str | None = None
        if cf.indexed:
            stored = cf._read_index()
            if stored is not None and not stored.bad_rows:
                return IndexRepair(path, True, len(stored))
            replaced = cf.index_problem
        builder, damage, last_end, padded_to = _scan_for_index(cf)
        stop = cf.data_end  # an index being replaced, and its footer, are not kept
        tail_from = max(last_end, padded_to)
        tail = bytes(cf._buf[tail_from:stop]) if tail_from < stop else b""
    tail_path: Path | None = None
    if tail:
        tail_path = path.with_name(path.name + ".tail")
        fd = os.open(tail_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(tail)
    index = builder.build(damage)
    index_frame = frames.encode_index_frame(index.to_map())
    with open(path, "r+b") as f:
        f.truncate(last_end)
        f.seek(last_end)
        f.write(index_frame + frames.encode_footer(last_end, len(index_frame)))
        f.flush()
        os.fsync(f.fileno())
    return IndexRepair(
        path, False, len(index.entries), last_end if tail else None, tail_path, replaced
    )


def _scan_for_index(
    cf: CaptureFile,
) -> tuple[IndexBuilder, list[dict[str, Any]], int, int]:
    """One pass over the data frames of ``cf``: the index they make, the damage found before the
    last intact frame, where that frame ends, and where padding after it ends."""
    builder = IndexBuilder()
    found: list[tuple[int, int, str]] = []
    last_end = padded_to = 0
    budget = Budget.for_file(cf.size)
    over = False  # once over the budget, frames are kept but not read
    for item in frames.iter_frames(cf._buf, 0, cf.data_end):
        if isinstance(item, Damage):
            found.append((item.offset, item.end, item.reason))
            continue
        if item.kind == "skippable" and item.magic == frames.PAD_MAGIC:
            if item.offset == last_end:  # a file being written ends so: not part of its tail
                padded_to = item.end
            continue
        last_end = item.end
        if item.kind == "data" and not over:
            try:
                records, problem = cf._decode(item, budget)
            except OverBudget as exc:
                records, problem, over = [], str(exc), True
            if problem is not None:
                found.append((item.offset, item.end, problem))
            builder.observe_all(records, item.offset)
    damage = [{"offset": o, "end": e, "reason": r} for o, e, r in found if e <= last_end]
    return builder, damage, last_end, padded_to


def append_capture(target: str | os.PathLike[str], source: str | os.PathLike[str]) -> int:
    """Append the exchanges of capture file ``source`` to capture file ``target``, in place.

    Data frames are independent, so this is a byte copy: ``target``'s data frames, then ``source``'s
    (without its header), then a fresh index and footer. Returns the number of exchanges in the result.
    """
    target, source = Path(target), Path(source)
    with CaptureFile(target) as old, CaptureFile(source) as new:
        old_data = bytes(old._buf[: old.data_end])
        frames_new = [
            f for f in frames.iter_frames(new._buf, 0, new.data_end) if isinstance(f, FrameInfo)
        ]
        after_header = frames_new[0].end if frames_new else new.data_end
        new_data = bytes(new._buf[after_header : new.data_end])
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(old_data + new_data)
    os.replace(tmp, target)
    return repair_index(target).exchanges
