"""Decoding what a capture file holds without trusting any count, size or length in it. Sans-IO.

A reader pays for every byte it decompresses out of a :class:`Budget` that grows with the file's
size, so that no structure in a file of N bytes costs more than a constant times N plus
:data:`READ_SLACK` of work and memory. Frames are decompressed as streams, a window at a time, and
their records decoded as the bytes arrive: a frame whose records go bad is abandoned there, whatever
its header declared. A record longer than the window is measured (:class:`ItemMeasure`) before
cbor2 decodes it, so a few bytes that declare a huge array or string allocate nothing, and a record
made of millions of tiny items is refused before it becomes millions of Python objects.
"""

from __future__ import annotations

import collections.abc
import io
from typing import TYPE_CHECKING, Any, Final

import cbor2
import zstandard

from wirecap.capture.frames import (
    INDEX_MAGIC,
    INDEX_TAG,
    MAX_CBOR_DEPTH,
    MAX_FRAME_CONTENT,
    MAX_INDEX_CONTENT,
    FrameError,
    FrameInfo,
    parse_frame,
)
from wirecap.capture.records import Record, RecordError, record_from_map

if TYPE_CHECKING:
    from collections.abc import Iterator

#: A reading pass over a file (a scan, a lookup) may decompress READ_RATIO times the file's size
#: plus READ_SLACK. Captures of LLM traffic decompress to 5-10 times their size; the slack lets a
#: small file hold a large, very repetitive body. Decoding a record holds it twice for a moment, so
#: a small file costs at most about 64 MiB.
READ_RATIO: Final = 64
READ_SLACK: Final = 32 * 1024 * 1024
#: What each decoded record costs beyond its bytes: the Python objects it becomes. Charging it keeps
#: a frame of millions of tiny records from costing more memory and time than its bytes promise.
RECORD_COST: Final = 256
#: Decompressed bytes decoded at a time. cbor2 decodes within a window, so junk costs at most a
#: window's worth of objects (about 72 bytes for each byte of empty arrays or maps).
WINDOW: Final = 256 * 1024
#: CBOR items (heads, numbers, strings) a record longer than WINDOW may hold. A wirecap record has
#: a dozen fields plus four items per redaction.
MAX_RECORD_ITEMS: Final = 4096
#: Largest zstd window a frame may ask the decoder to allocate. wirecap's frames use at most 2 MiB;
#: zstd's levels up to 19 use at most 8 MiB.
MAX_FRAME_WINDOW: Final = 8 * 1024 * 1024
#: An index decompresses to at most INDEX_RATIO times its frame plus INDEX_SLACK (a wirecap index
#: decompresses to about 4 times its frame). A larger one is not decoded: the file is scanned.
INDEX_RATIO: Final = 16
INDEX_SLACK: Final = 256 * 1024


class OverBudget(FrameError):
    """A reading pass reached the decompression budget of its file."""


class Budget:
    """Decompressed bytes a reading pass may still produce (records count :data:`RECORD_COST`)."""

    __slots__ = ("left", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    @classmethod
    def for_file(cls, size: int) -> Budget:
        """The budget of one pass over a file of ``size`` bytes."""
        return cls(READ_RATIO * size + READ_SLACK)

    @property
    def spent(self) -> int:
        return self.total - self.left

    def spend(self, amount: int) -> None:
        """Take ``amount`` from the budget; raises :class:`OverBudget` when there is not enough."""
        self.left -= amount
        if self.left < 0:
            raise OverBudget(
                f"the file decompresses to more than {self.total} bytes "
                f"({READ_RATIO} times its size plus {READ_SLACK >> 20} MiB); the rest is not read"
            )


# -- strict CBOR ---------------------------------------------------------------------------------


class _RejectAllTags(collections.abc.Mapping[int, Any]):
    """A semantic-decoder table that claims every tag, so no CBOR tag becomes a Python object."""

    def __getitem__(self, tag: int) -> Any:
        return _reject_tag

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _reject_tag(decoder: Any) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed in wirecap records")


def _reject_tag_hook(decoder: Any, tag: Any) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed in wirecap records")


_NO_TAGS: Final = _RejectAllTags()


def strict_cbor_decoder(data: bytes) -> cbor2.CBORDecoder:
    """A CBOR decoder for untrusted input: no tags, no indefinite lengths, bounded depth.

    Over ``bytes`` (shared, not copied); cbor2 reads a declared length in steps, so a length
    longer than the input fails at its end instead of allocating it."""
    return cbor2.CBORDecoder(
        io.BytesIO(data),
        semantic_decoders=_NO_TAGS,
        tag_hook=_reject_tag_hook,
        max_depth=MAX_CBOR_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


def strict_cbor_loads(data: bytes) -> Any:
    """Decode exactly one CBOR item from untrusted ``data`` (see :func:`strict_cbor_decoder`)."""
    decoder = strict_cbor_decoder(data)
    try:
        item = decoder.decode()
    except RecursionError as exc:
        raise cbor2.CBORDecodeError("CBOR nested too deeply") from exc
    if decoder.fp.tell() != len(data):
        raise cbor2.CBORDecodeError("trailing bytes after the CBOR item")
    return item


class ItemMeasure:
    """Finds where one CBOR item ends by walking its heads, without decoding it.

    Resumable: :meth:`advance` walks on through more bytes each time it is called, and says how far
    the input must reach when it runs out. It refuses what the strict decoder refuses (tags,
    indefinite lengths, nesting past :data:`MAX_CBOR_DEPTH`) and items of more than ``max_items``
    heads, so the decoder that follows allocates only what the input holds.
    """

    __slots__ = ("_pending", "items", "max_items", "needed", "pos")

    def __init__(self, max_items: int = MAX_RECORD_ITEMS) -> None:
        self.pos = 0  # the next head (or, past the input, where a string ends)
        self.items = 0
        self.max_items = max_items
        self.needed = 1  # how many bytes the input must hold for the walk to go on
        self._pending = [1]  # items still to walk at each open level, innermost last

    def advance(self, buf: bytes) -> int | None:
        """Walk on through ``buf`` (the item starts at byte 0). Returns the item's end once it is
        complete; None when ``buf`` must reach :attr:`needed` bytes first. Raises
        :class:`cbor2.CBORDecodeError` for an item the strict decoder would refuse or one too big."""
        pending, size, pos = self._pending, len(buf), self.pos
        while True:
            while pending and pending[-1] == 0:
                pending.pop()
            if pos > size or (pending and _head_end(buf, pos) > size):
                self.pos = pos
                self.needed = pos if pos > size else _head_end(buf, pos)
                return None
            if not pending:
                self.pos = pos
                return pos
            initial = buf[pos]
            major, info = initial >> 5, initial & 31
            pos += 1
            if info < 24:
                argument = info
            elif info < 28:
                width = 1 << (info - 24)
                argument = int.from_bytes(buf[pos : pos + width], "big")
                pos += width
            else:
                raise cbor2.CBORDecodeError("indefinite length or reserved CBOR head")
            pending[-1] -= 1
            self.items += 1
            if self.items > self.max_items:
                raise cbor2.CBORDecodeError(f"more than {self.max_items} CBOR items")
            if major in (2, 3):
                pos += argument
            elif major in (4, 5):
                if len(pending) > MAX_CBOR_DEPTH:
                    raise cbor2.CBORDecodeError("CBOR nested too deeply")
                pending.append(argument if major == 4 else 2 * argument)
            elif major == 6:
                raise cbor2.CBORDecodeError("CBOR tags are not allowed in wirecap records")


def _head_end(buf: bytes, pos: int) -> int:
    """Where the CBOR head at ``pos`` (initial byte and argument) ends; past ``buf`` if cut."""
    if pos >= len(buf):
        return pos + 1
    info = buf[pos] & 31
    return pos + 1 + (1 << (info - 24) if 24 <= info < 28 else 0)


# -- records -------------------------------------------------------------------------------------


class RecordReader:
    """Records out of a CBOR sequence that arrives in pieces (a frame as it is decompressed).

    It decodes each complete record as soon as it has it, keeps only the start of an incomplete
    one, and stops at the first record that is not valid (:attr:`problem`). cbor2 decodes within
    a window of WINDOW bytes; a record longer than that is measured first (:class:`ItemMeasure`).
    """

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._parts: list[bytes] = []  # bytes fed and not decoded yet
        self._size = 0
        self._measure: ItemMeasure | None = None  # a record longer than WINDOW, being measured
        self._walk_at = 0  # held bytes at which to walk it on (doubling: few joins of a long one)
        self._done = 0  # bytes of the sequence decoded so far
        self.records: list[Record] = []
        self.problem: str | None = None

    def feed(self, data: bytes) -> None:
        if self.problem is not None or not data:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._walk_at:
            self._run()

    def finish(self) -> None:
        """The sequence ended: a record still incomplete was cut off."""
        if self.problem is None and self._size:
            self._run()
        if self.problem is None and self._size:
            self._fail("cut off by the end of the frame")

    def _run(self) -> None:
        buf = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []  # held once, not twice, while decoding
        rest = self._decode(buf)
        self._parts = [rest] if rest else []
        self._size = len(rest)

    def _fail(self, why: object) -> None:
        self.problem = f"bad record at byte {self._done} of the frame: {why}"

    def _decode(self, buf: bytes) -> bytes:
        """Decode every complete record of ``buf``; returns the bytes left for later."""
        pos = 0
        while pos < len(buf) and self.problem is None:
            if self._measure is None:
                start = pos
                pos = self._decode_window(buf, pos)
                if pos > start or self.problem is not None:
                    continue
                if len(buf) - pos < WINDOW:  # the next record may end in the bytes to come
                    break
                self._measure = ItemMeasure()
                buf, pos = buf[pos:], 0  # a measured record starts its buffer
            try:
                end = self._measure.advance(buf)
            except cbor2.CBORDecodeError as exc:
                self._fail(exc)
                break
            if end is None:
                self._walk_at = max(self._measure.needed, 2 * len(buf))
                break
            self._measure, self._walk_at = None, 0
            pos = self._take(strict_cbor_decoder(buf), end)
        return buf[pos:]

    def _decode_window(self, buf: bytes, pos: int) -> int:
        """Decode the records that lie whole within WINDOW bytes from ``pos``; returns where the
        first one that does not (or the end of ``buf``) starts."""
        window = buf[pos : pos + WINDOW] if pos or len(buf) > WINDOW else buf
        decoder = strict_cbor_decoder(window)
        at = 0
        while at < len(window) and self.problem is None:
            try:
                at = self._take(decoder, None)
            except cbor2.CBORDecodeEOF:
                break
        return pos + at

    def _take(self, decoder: cbor2.CBORDecoder, end: int | None) -> int:
        """Decode one record at the decoder's position and keep it; returns where it ends (where it
        starts if it is not valid). A record cut by the end of an unmeasured input raises
        :class:`cbor2.CBORDecodeEOF`."""
        at = decoder.fp.tell()
        try:
            item = decoder.decode()
            if end is not None and decoder.fp.tell() != end:
                raise cbor2.CBORDecodeError("record does not end where its heads say")
            record = record_from_map(item)
        except cbor2.CBORDecodeEOF:
            if end is None:
                raise
            self._fail("cut off")
            return at
        except (cbor2.CBORDecodeError, RecordError, RecursionError) as exc:
            self._fail(exc)
            return at
        done = decoder.fp.tell()
        self._done += done - at
        self._budget.spend(RECORD_COST)
        if record is not None:
            self.records.append(record)
        return done


def _decompressor() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=MAX_FRAME_WINDOW)


def read_frame_records(
    frame: bytes, info: FrameInfo, budget: Budget
) -> tuple[list[Record], str | None]:
    """The records of one data frame, and what went wrong (None when nothing did).

    The frame is decompressed as a stream, never past :data:`MAX_FRAME_CONTENT` nor the budget,
    whatever its header declares, and decoded as it comes: a record that is not valid ends the
    frame there (the records before it are kept, the rest is not decompressed). A frame that does
    not decompress or fails its checksum gives no records. Raises :class:`OverBudget`.
    """
    where = f"frame at offset {info.offset}"
    if info.content_size is not None and info.content_size > MAX_FRAME_CONTENT:
        return [], f"{where} declares {info.content_size} bytes (limit {MAX_FRAME_CONTENT})"
    reader = RecordReader(budget)
    produced = 0
    try:
        with _decompressor().stream_reader(frame, read_across_frames=False) as stream:
            while reader.problem is None:
                room = min(MAX_FRAME_CONTENT - produced, budget.left) + 1
                data = stream.read(min(WINDOW, room))
                if not data:
                    reader.finish()
                    break
                produced += len(data)
                if produced > MAX_FRAME_CONTENT:
                    return reader.records, f"{where} decompresses past {MAX_FRAME_CONTENT} bytes"
                budget.spend(len(data))
                reader.feed(data)
    except zstandard.ZstdError as exc:
        return [], f"{where} is corrupt: {exc}"
    return reader.records, reader.problem


def decode_records(data: bytes) -> tuple[list[Record], str | None]:
    """Decode a CBOR sequence of records (a decompressed frame, for tools and tests).

    Returns the records decoded before the first problem, and a description of that problem (None
    when the whole sequence is good). Records of unknown types are skipped.
    """
    reader = RecordReader(Budget(READ_RATIO * len(data) + READ_SLACK))
    view = memoryview(data)
    for start in range(0, len(data), WINDOW):
        reader.feed(bytes(view[start : start + WINDOW]))
    reader.finish()
    return reader.records, reader.problem


# -- the index -----------------------------------------------------------------------------------


def decompress_bounded(frame: bytes, info: FrameInfo, limit: int) -> bytes:
    """Decompress one zstd frame as a stream into at most ``limit`` bytes, checking its checksum.

    Raises :class:`FrameError` for a frame that is corrupt or decompresses past ``limit``."""
    if info.content_size is not None and info.content_size > limit:
        raise FrameError(f"frame declares {info.content_size} bytes (limit {limit})")
    try:
        with _decompressor().stream_reader(frame, read_across_frames=False) as stream:
            data = stream.read(limit + 1)
            if len(data) <= limit:
                stream.read(1)  # the end of the frame: zstd checks the checksum there
    except zstandard.ZstdError as exc:
        raise FrameError(f"frame is corrupt: {exc}") from exc
    if len(data) > limit:
        raise FrameError(f"frame decompresses past {limit} bytes")
    return bytes(data)


def index_content_limit(frame_length: int) -> int:
    """How large the decompressed content of an index frame of ``frame_length`` bytes may be."""
    return min(MAX_INDEX_CONTENT, INDEX_RATIO * frame_length + INDEX_SLACK)


def decode_index_frame(frame: bytes) -> Any:
    """The CBOR item inside an index frame (the whole skippable frame). Raises
    :class:`FrameError` when it is not one, or decompresses past :func:`index_content_limit`."""
    try:
        info = parse_frame(frame, 0)
    except FrameError as exc:
        raise FrameError(f"index frame: {exc}") from exc
    if info.magic != INDEX_MAGIC or info.length != len(frame):
        raise FrameError("index frame has the wrong magic or length")
    if frame[8:12] != INDEX_TAG:
        raise FrameError("index frame does not start with WCIX")
    inner = frame[12:]
    try:
        inner_info = parse_frame(inner, 0)
    except FrameError as exc:
        raise FrameError(f"index payload: {exc}") from exc
    if inner_info.kind != "data" or inner_info.length != len(inner):
        raise FrameError("index payload is not one zstd frame")
    data = decompress_bounded(inner, inner_info, index_content_limit(len(frame)))
    try:
        return strict_cbor_loads(data)
    except cbor2.CBORDecodeError as exc:
        raise FrameError(f"index is not valid CBOR: {exc}") from exc
