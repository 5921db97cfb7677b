"""Following a capture that is still being written: new frames as they land, exchanges as they end.

A proxy appends zstd frames to the open segment of its capture directory (each closed at most 250 ms
after its first record) and starts a new segment on rotation; a segment ends with its index and
footer. :class:`Follower` polls: each :meth:`Follower.poll` lists the directories for new segments,
reads every segment from the offset it reached last time, keeps only complete frames (a frame cut
off at the end of a file is being written, and is read again next time), and assembles the records
into exchanges. A segment whose index frame has appeared is closed and never read again.

Blocking file I/O and no clock: the caller decides when to poll (``wirecap inspect --follow`` sleeps
between polls; the web inspector polls from a worker thread). Memory holds the exchanges still in
flight and a bounded window of file bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from wirecap.capture import CaptureError, CaptureFile, Exchange, FileDamage, Header
from wirecap.capture import frames as framing
from wirecap.capture.decoding import Budget, OverBudget, read_frame_records
from wirecap.capture.records import ExchangeEnd, Gap
from wirecap.inspect.analysis import Analyzed, analyze_exchange
from wirecap.inspect.paint import Paint, plain
from wirecap.inspect.select import Filters
from wirecap.inspect.views import table_lines
from wirecap.llm import EventAllowance

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from wirecap.capture import Record
    from wirecap.inspect.detectors import Finding

#: File bytes read at a time. A frame larger than this (the writer closes frames at 1 MiB of
#: records, so a compressed frame rarely is) gets a window of its own size, up to MAX_FRAME_BYTES.
WINDOW_BYTES: Final = 4 * 1024 * 1024
#: Largest compressed frame read: the reader's content limit is 64 MiB, and a frame's compressed
#: form is never much larger than its content.
MAX_FRAME_BYTES: Final = framing.MAX_FRAME_CONTENT + 1024 * 1024
#: Compressed bytes one poll reads at most: a large capture is caught up over several polls, so
#: the caller sees progress (and its exchanges) as it goes, and holds only one poll's exchanges
#: at a time (about 3,000 small ones: a few tens of MiB while they are analysed).
POLL_BUDGET: Final = 1024 * 1024
#: Smallest read: a poll with little budget left still reads whole frames at once.
MIN_WINDOW: Final = 256 * 1024
#: Seconds between two polls once caught up: frames close within 250 ms of their first record, so
#: an exchange shows about half a second after it ends at most.
POLL_SECONDS: Final = 0.2

#: Where an exchange's records are: (segment number, frame offset) pairs, in the order they came.
Locations = tuple[tuple[int, int], ...]


@dataclasses.dataclass(slots=True)
class Followed:
    """An exchange seen by the follower, and the frames that hold its records."""

    exchange: Exchange
    locations: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return self.exchange.id


@dataclasses.dataclass(slots=True)
class FollowBatch:
    """What one :meth:`Follower.poll` found."""

    #: Exchanges that ended, in the order their ``end`` records were read.
    completed: list[Followed] = dataclasses.field(default_factory=list)
    #: Exchanges still in flight that got records in this poll.
    growing: list[Followed] = dataclasses.field(default_factory=list)
    gaps: list[Gap] = dataclasses.field(default_factory=list)
    damage: list[FileDamage] = dataclasses.field(default_factory=list)
    #: Every segment was read to its current end (false while a large capture is caught up).
    caught_up: bool = True
    bytes_read: int = 0


class SegmentTail:
    """One segment file read incrementally from the offset reached so far."""

    def __init__(self, path: Path, number: int) -> None:
        self.path = path
        self.number = number
        self.offset = 0
        self.closed = False  # its index frame was read: no more data frames will come
        self.header: Header | None = None
        self.size = 0  # file size at the last read

    @property
    def wire(self) -> bool:
        """Whether its bodies are wire bytes (format 2) rather than payload (format 1)."""
        return self.header is None or self.header.version >= 2

    def read(self, budget: int) -> tuple[list[tuple[int, list[Record]]], list[FileDamage], int]:
        """The complete data frames from the current offset (as (offset, records)), the damage
        met, and the bytes consumed; stops at a frame still being written or after ``budget``."""
        found: list[tuple[int, list[Record]]] = []
        damage: list[FileDamage] = []
        start = self.offset
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.closed = True
            return [], [FileDamage(self.path, 0, 0, f"cannot read: {exc.strerror or exc}")], 0
        try:
            self.size = os.fstat(fd).st_size
            if self.size < self.offset:  # cut shorter (`wirecap index` moved a damaged tail)
                self.closed = True
                return [], [], 0
            while not self.closed and self.offset < self.size and self.offset - start < budget:
                if not self._read_window(fd, budget - (self.offset - start), found, damage):
                    break
        finally:
            os.close(fd)
        return found, damage, self.offset - start

    def _read_window(
        self,
        fd: int,
        limit: int,
        found: list[tuple[int, list[Record]]],
        damage: list[FileDamage],
    ) -> bool:
        """Read the frames of one window, stopping after ``limit`` bytes; False when the next
        frame is not complete yet."""
        want = min(WINDOW_BYTES, max(limit, MIN_WINDOW), self.size - self.offset)
        while True:
            buf = os.pread(fd, want, self.offset)
            consumed, cut = self._frames_in(buf, limit, found, damage)
            self.offset += consumed
            if consumed or not cut:
                return consumed > 0
            if want >= self.size - self.offset or want >= MAX_FRAME_BYTES:
                return False  # the last frame is still being written
            want = min(want * 4, self.size - self.offset, MAX_FRAME_BYTES)

    def _frames_in(
        self,
        buf: bytes,
        limit: int,
        found: list[tuple[int, list[Record]]],
        damage: list[FileDamage],
    ) -> tuple[int, bool]:
        """Take the whole frames at the start of ``buf`` until ``limit`` bytes are taken: (bytes
        taken, whether a frame cut off by the end of ``buf`` stopped it)."""
        pos = 0
        while pos < len(buf) and pos < limit and not self.closed:
            try:
                info = framing.parse_frame(buf, pos)
            except framing.TruncatedFrame:
                return pos, True
            except framing.FrameError as exc:
                resume = framing.Resync(buf, len(buf)).next(pos + 1)
                at = self.offset + pos
                damage.append(FileDamage(self.path, at, self.offset + resume, str(exc)))
                pos = resume
                continue
            self._take(buf, info, found, damage)
            pos = info.end
        return pos, False

    def _take(
        self,
        buf: bytes,
        info: framing.FrameInfo,
        found: list[tuple[int, list[Record]]],
        damage: list[FileDamage],
    ) -> None:
        """Account for one complete frame of ``buf``."""
        at = self.offset + info.offset
        if info.kind == "skippable":
            if info.magic in (framing.INDEX_MAGIC, framing.FOOTER_MAGIC):
                self.closed = True  # data frames end where the index begins
            return
        frame = buf[info.offset : info.end]
        try:
            records, problem = read_frame_records(frame, info, Budget.for_file(info.length))
        except OverBudget as exc:
            records, problem = [], str(exc)
        if problem is not None:
            damage.append(FileDamage(self.path, at, at + info.length, problem))
        if self.header is None:
            if not records or not isinstance(records[0], Header):
                damage.append(FileDamage(self.path, 0, self.size, "not a wirecap capture"))
                self.closed = True
                return
            self.header = records[0]
        found.append((at, records))


def _segment_key(path: Path) -> tuple[str, str]:
    return (str(path.parent), path.name)


class Follower:
    """Follows capture files and directories of segments as they grow.

    ``start="beginning"`` reports every exchange, those already in the files first;
    ``start="end"`` reports only the exchanges that end after the first poll (like ``tail -f``),
    while still knowing the ones in flight when it started.
    """

    def __init__(
        self, targets: Iterable[str | os.PathLike[str]], *, start: Literal["beginning", "end"]
    ) -> None:
        self.targets = [Path(t) for t in targets]
        for target in self.targets:
            if not target.exists():
                raise CaptureError(f"no such capture: {target}")
        self.segments: list[SegmentTail] = []
        self._known: set[Path] = set()
        self._pending: dict[str, Followed] = {}
        self._reporting = start == "beginning"
        self._skip_closed = start == "end"
        self.caught_up = False  # the files were read to their end once

    # -- discovery ------------------------------------------------------------------------------

    def _discover(self) -> list[SegmentTail]:
        """Segments that appeared since the last poll, in name order per target."""
        new: list[Path] = []
        for target in self.targets:
            if target.is_dir():
                try:
                    names = [
                        target / e.name
                        for e in os.scandir(target)
                        if e.name.endswith(framing.SEGMENT_SUFFIX) and e.is_file()
                    ]
                except OSError:
                    continue
                new.extend(sorted((p for p in names if p not in self._known), key=_segment_key))
            elif target not in self._known:
                new.append(target)
        added = []
        for path in new:
            self._known.add(path)
            tail = SegmentTail(path, len(self.segments))
            self.segments.append(tail)
            added.append(tail)
        return added

    @property
    def in_flight(self) -> int:
        """Exchanges whose end has not been read yet."""
        return len(self._pending)

    # -- polling --------------------------------------------------------------------------------

    def poll(self, budget: int = POLL_BUDGET) -> FollowBatch:
        """Read what was written since the last poll (at most about ``budget`` compressed bytes)."""
        batch = FollowBatch()
        for tail in self._discover():
            if self._skip_closed:
                self._seed_from_index(tail, batch)
        touched: dict[str, Followed] = {}
        for tail in self.segments:
            if tail.closed:
                continue
            remaining = budget - batch.bytes_read
            if remaining <= 0:
                batch.caught_up = False
                break
            found, damage, consumed = tail.read(remaining)
            batch.bytes_read += consumed
            batch.damage.extend(damage)
            for offset, records in found:
                self._assemble(tail, offset, records, batch, touched)
            if consumed >= remaining and not tail.closed and tail.offset < tail.size:
                batch.caught_up = False  # stopped by the budget, not by the end of the file
        batch.growing = [f for f in touched.values() if f.id in self._pending]
        if not self._reporting:
            batch.completed.clear()
            batch.growing.clear()
            if batch.caught_up:
                self._reporting = True
        self.caught_up = self.caught_up or batch.caught_up
        self._skip_closed = False
        return batch

    def _assemble(
        self,
        tail: SegmentTail,
        offset: int,
        records: list[Record],
        batch: FollowBatch,
        touched: dict[str, Followed],
    ) -> None:
        for record in records:
            if isinstance(record, Gap):
                batch.gaps.append(record)
                continue
            x = getattr(record, "x", None)
            if not isinstance(x, str):
                continue
            followed = self._pending.get(x)
            if followed is None:
                followed = self._pending[x] = Followed(Exchange(x, wire=tail.wire))
            followed.exchange.add(record)
            where = (tail.number, offset)
            if not followed.locations or followed.locations[-1] != where:
                followed.locations.append(where)
            touched[x] = followed
            if isinstance(record, ExchangeEnd):
                batch.completed.append(self._pending.pop(x))

    def _seed_from_index(self, tail: SegmentTail, batch: FollowBatch) -> None:
        """A segment closed before following began: skip its frames, but keep the exchanges it
        holds without their end (they were in flight at rotation and end in a later segment)."""
        try:
            with CaptureFile(tail.path) as capture_file:
                if not capture_file.indexed:
                    return
                tail.header = capture_file.header
                for entry in capture_file.index().entries:
                    if entry.outcome is not None:
                        continue
                    followed = self._pending.setdefault(
                        entry.x, Followed(Exchange(entry.x, wire=tail.wire))
                    )
                    for record in capture_file.records_of(entry.x):
                        followed.exchange.add(record)
                    followed.locations.extend((tail.number, f) for f in entry.frames)
                tail.offset = tail.size = capture_file.data_end
                tail.closed = True
                batch.damage.extend(capture_file.damage)
        except (CaptureError, framing.FrameError, ValueError) as exc:
            batch.damage.append(FileDamage(tail.path, 0, 0, str(exc)))

    # -- reading one exchange back --------------------------------------------------------------

    def fetch_records(
        self, exchange_id: str, locations: Iterable[tuple[int, int]]
    ) -> tuple[Header | None, list[Record]]:
        """The records of ``exchange_id`` read again from the frames at ``locations`` (as reported
        in a :class:`Followed`), and the header of the first segment that holds them. Safe to
        call from another thread than :meth:`poll`'s."""
        by_segment: dict[int, list[int]] = {}
        for number, offset in locations:
            by_segment.setdefault(number, []).append(offset)
        header: Header | None = None
        records: list[Record] = []
        for number, offsets in sorted(by_segment.items()):
            tail = self.segments[number]
            header = header or tail.header
            records.extend(read_records_at(tail.path, offsets, exchange_id))
        return header, records

    def fetch(self, exchange_id: str, locations: Iterable[tuple[int, int]]) -> Exchange | None:
        """The exchange ``exchange_id`` read again from the frames at ``locations``."""
        header, records = self.fetch_records(exchange_id, locations)
        if not records:
            return None
        exchange = Exchange(exchange_id, wire=header is None or header.version >= 2)
        for record in records:
            exchange.add(record)
        return exchange

    def allowance_of(self, locations: Iterable[tuple[int, int]]) -> EventAllowance:
        """The events the analysis of an exchange at ``locations`` may parse: the allowance of the
        segments that hold it. A followed exchange holds its bodies, but a few KB of segment can
        decompress into millions of tiny events."""
        numbers = {number for number, _ in locations}
        return EventAllowance.for_files(self.segments[n] for n in numbers)

    def header_of(self, locations: Iterable[tuple[int, int]]) -> Header | None:
        """The header of the first segment among ``locations``."""
        numbers = sorted({number for number, _ in locations})
        return self.segments[numbers[0]].header if numbers else None


def read_records_at(path: Path, offsets: Iterable[int], exchange_id: str) -> list[Record]:
    """The records of ``exchange_id`` in the frames of ``path`` that start at ``offsets``."""
    found: list[Record] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for offset in offsets:
            frame = _frame_at(f.fileno(), offset, size)
            if frame is None:
                continue
            buf, info = frame
            try:
                records, _problem = read_frame_records(buf, info, Budget.for_file(info.length))
            except OverBudget:
                continue
            found.extend(r for r in records if getattr(r, "x", None) == exchange_id)
    return found


def _frame_at(fd: int, offset: int, size: int) -> tuple[bytes, framing.FrameInfo] | None:
    """The complete data frame at ``offset``, or None."""
    want = min(256 * 1024, size - offset)
    while want > 0:
        buf = os.pread(fd, want, offset)
        try:
            info = framing.parse_frame(buf, 0)
        except framing.TruncatedFrame:
            if want >= size - offset or want >= MAX_FRAME_BYTES:
                return None
            want = min(want * 4, size - offset, MAX_FRAME_BYTES)
            continue
        except framing.FrameError:
            return None
        return (buf[: info.length], info) if info.kind == "data" else None
    return None


def analyzed_as_they_end(
    targets: Iterable[str | os.PathLike[str]],
    filters: Filters | None = None,
    *,
    last: int | None = None,
    interval: float = POLL_SECONDS,
    sleep: Callable[[float], object] = time.sleep,
    on_damage: Callable[[FileDamage], object] | None = None,
) -> Iterator[Analyzed]:
    """Each exchange of ``targets`` that passes ``filters``, analyzed, as soon as it ends; never
    returns (``wirecap inspect --follow``: the caller stops it). Only the exchanges that end after
    the start, unless ``last``: then first the last that many already in the capture."""
    filters = filters or Filters()
    follower = Follower(targets, start="beginning" if last else "end")
    backlog: collections.deque[Analyzed] | None = collections.deque(maxlen=last) if last else None
    while True:
        batch = follower.poll()
        for damage in batch.damage:
            if on_damage is not None:
                on_damage(damage)
        for followed in batch.completed:
            allowance = follower.allowance_of(followed.locations)
            a = _matching(followed.exchange, filters, allowance)
            if a is None:
                continue
            if backlog is not None:
                backlog.append(a)
            else:
                yield a
        if backlog is not None and batch.caught_up:
            yield from backlog
            backlog = None
        if batch.caught_up:
            sleep(interval)


def _matching(exchange: Exchange, filters: Filters, allowance: EventAllowance) -> Analyzed | None:
    route = exchange.request.route if exchange.request else None
    if not filters.cheap_match(exchange.wall_ns, route, exchange.status):
        return None
    a = analyze_exchange(exchange, allowance)
    return a if filters.model_match(a) else None


def follow_lines(
    a: Analyzed,
    findings: list[Finding],
    *,
    as_json: bool,
    with_findings: bool,
    paint: Paint = plain,
) -> list[str]:
    """What ``inspect --follow`` prints for one exchange: its table line (the header is printed
    once, at the start) and, with ``with_findings``, one indented line per finding; or one JSON
    line, the row of ``inspect --json`` plus ``findings``."""
    if as_json:
        row = a.row()
        if with_findings:
            row["findings"] = [f.to_json() for f in findings]
        return [json.dumps(row, separators=(",", ":"))]
    lines = list(table_lines([a.row()], paint))[1:]
    for f in findings:
        lines.append(f"    {paint(f'{f.severity:<7}', f.severity)} {f.code:<24} {f.message}")
    return lines
