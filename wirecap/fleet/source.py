"""The shipper's side of a capture directory: which frames are closed, and how far shipping got.

A proxy appends zstd frames to the open segment and, on rotation, finishes it with its index and
footer before it starts the next one. So a frame is closed once it is whole in the file, and a
segment is finished when its index frame has appeared or a newer segment exists (a crashed proxy
leaves no footer, and its successor writes new segments). :func:`closed_frames` decides this on
bytes handed in; :class:`Position` is where shipping stands, persisted beside the segments with an
atomic rename so that a restarted shipper resumes exactly where the last acknowledged frame ended.
Blocking file I/O, no clock and no network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
from typing import TYPE_CHECKING, Final

from wirecap.capture import CaptureError, CaptureFile
from wirecap.capture import frames as framing

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Frames handed out by one scan at most, and their bytes at most (a frame larger than this still
#: goes alone): a batch of acknowledgements in flight, and the memory a batch holds.
BATCH_FRAMES: Final = 256
BATCH_BYTES: Final = 8 * 1024 * 1024
POSITION_VERSION: Final = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One closed frame of a source segment: its bytes as written and where they sit."""

    segment: str  # the segment's file name
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclasses.dataclass(frozen=True, slots=True)
class Scan:
    """What one look at a segment found after a given offset."""

    frames: list[Frame]
    next_offset: int  # where the next scan starts (after the last frame handed out)
    done: bool  # nothing more will come: the segment is finished and shipped to its end
    damage: list[tuple[int, int, str]]  # regions skipped: (offset, end, reason)


def closed_frames(
    buf: framing.Buffer,
    segment: str,
    start: int,
    finished: bool,
    max_frames: int = BATCH_FRAMES,
    max_bytes: int = BATCH_BYTES,
) -> Scan:
    """The whole frames of ``buf`` (a segment's bytes) from ``start``, at most ``max_frames`` of them
    and ``max_bytes`` (at least one frame).

    Every frame before the index is shipped as written: data frames and any padding. A frame cut
    off at the end is being written and waits for the next scan, unless the segment is ``finished``
    (a crash cut it): then it is reported as damage and the segment is done. Bytes that are not a
    frame in the middle (damage) are skipped to the next frame, and reported.
    """
    found: list[Frame] = []
    damage: list[tuple[int, int, str]] = []
    pos, size, taken = start, len(buf), 0
    resync = framing.Resync(buf, size)
    while pos < size and len(found) < max_frames and (not found or taken < max_bytes):
        try:
            info = framing.parse_frame(buf, pos)
        except framing.TruncatedFrame as exc:
            if not finished:
                return Scan(found, pos, False, damage)
            damage.append((pos, size, f"cut off: {exc}"))
            return Scan(found, size, True, damage)
        except framing.FrameError as exc:
            after = resync.next(pos + 1)
            damage.append((pos, after, str(exc)))
            pos = after
            continue
        if info.kind == "skippable" and info.magic in (framing.INDEX_MAGIC, framing.FOOTER_MAGIC):
            return Scan(found, size, True, damage)  # the index: the segment is finished
        found.append(Frame(segment, pos, bytes(buf[info.offset : info.end])))
        taken += info.length
        pos = info.end
    return Scan(found, pos, finished and pos >= size, damage)


SortKey = tuple[int, int, int, str]


def segment_order(directory: Path, known: dict[str, SortKey] | None = None) -> list[Path]:
    """The segments of ``directory`` oldest first, as the reader orders them (header time, then
    segment number, then name); a file that is not (yet) a readable capture sorts by name last.
    ``known`` keeps the keys of headers already read, so each header is read once."""
    known = {} if known is None else known
    keyed: list[tuple[SortKey, Path]] = []
    for path in directory.iterdir():
        if not (path.is_file() and path.name.endswith(framing.SEGMENT_SUFFIX)):
            continue
        key = known.get(path.name)
        if key is None:
            key = _sort_key(path)
            if key[0] == 0:
                known[path.name] = key
        keyed.append((key, path))
    return [path for _key, path in sorted(keyed)]


def _sort_key(path: Path) -> SortKey:
    try:
        with CaptureFile(path) as capture:
            header = capture.header
    except CaptureError:
        header = None
    if header is None:
        return (1, 0, 0, path.name)
    return (0, header.created_ns, header.segment, path.name)


def scan_segment(path: Path, start: int, finished: bool, **limits: int) -> Scan:
    """:func:`closed_frames` over the file at ``path`` (memory-mapped for the look)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= start:
            return Scan([], start, finished, [])
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return closed_frames(buf, path.name, start, finished, **limits)


@dataclasses.dataclass(slots=True)
class Position:
    """How far shipping from one directory got: per segment, the offset after the last frame the
    stream acknowledged, and whether the segment is done. Saved as ``.wirecap-ship-SOURCE.json``
    beside the segments (readers look only at ``*.cbor.zst``)."""

    path: Path
    offsets: dict[str, int] = dataclasses.field(default_factory=dict)
    done: set[str] = dataclasses.field(default_factory=set)

    @classmethod
    def file_for(cls, directory: Path, source: str) -> Path:
        return directory / f".wirecap-ship-{source}.json"

    @classmethod
    def load(cls, path: Path) -> Position:
        """The position saved at ``path``, or a fresh one when there is none. A file that is not a
        position is an error (:class:`ValueError`), never silently restarted from zero."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        try:
            doc = json.loads(text)
            if doc.get("version") != POSITION_VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            offsets = {str(k): int(v) for k, v in doc["offsets"].items()}
            done = {str(name) for name in doc["done"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a shipping position ({exc})") from None
        return cls(path, offsets, done)

    def offset(self, segment: str) -> int:
        return self.offsets.get(segment, 0)

    def advance(self, segment: str, offset: int, done: bool) -> None:
        self.offsets[segment] = offset
        if done:
            self.done.add(segment)

    def forget_missing(self, present: set[str]) -> None:
        """Drop segments no longer in the directory (deleted by retention), keeping the file small."""
        for name in set(self.offsets) - present:
            del self.offsets[name]
            self.done.discard(name)

    def save(self) -> None:
        """Write the position to a temporary file, flush it to disk, and rename it into place."""
        doc = {"version": POSITION_VERSION, "offsets": self.offsets, "done": sorted(self.done)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # the rename itself, where directories can be synced
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def pending_segments(
    directory: Path, position: Position, known: dict[str, SortKey] | None = None
) -> Iterator[tuple[Path, bool]]:
    """The segments not yet done, oldest first, each with whether it is finished (a newer segment
    exists; its own index is found by the scan). Listed before any is read, so a segment called
    finished here was complete on disk before its bytes are read."""
    ordered = segment_order(directory, known)
    position.forget_missing({p.name for p in ordered})
    for i, path in enumerate(ordered):
        if path.name not in position.done:
            yield path, i + 1 < len(ordered)
