"""Framing of a capture file: zstd data frames, skippable frames, the footer. Sans-IO.

A capture file is a plain concatenation of zstd frames (RFC 8878). Data frames hold a CBOR sequence
(RFC 8742) of records; skippable frames hold the index and the footer. Everything here works on
byte buffers handed in by the caller, so the same code serves the writer, the reader, and tests that
cut files at arbitrary offsets. Decoding what the frames hold is decoding.py's part.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import cbor2
import zstandard

from wirecap.capture.records import Record, record_to_map

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

ZSTD_MAGIC: Final = 0xFD2FB528
SKIPPABLE_MAGIC_MIN: Final = 0x184D2A50
SKIPPABLE_MAGIC_MAX: Final = 0x184D2A5F
#: Skippable frame that padded files written with O_DIRECT to a block boundary; readers skip it.
PAD_MAGIC: Final = 0x184D2A50
#: Skippable frame holding the timing index (payload: b"WCIX" + a zstd frame of one CBOR map).
INDEX_MAGIC: Final = 0x184D2A5E
#: Skippable frame holding the footer (payload: b"WCFT", version, index offset and length).
FOOTER_MAGIC: Final = 0x184D2A5F
INDEX_TAG: Final = b"WCIX"
FOOTER_TAG: Final = b"WCFT"
_FOOTER_PAYLOAD: Final = struct.Struct(
    "<4sHHQQ"
)  # tag, version, reserved, index offset, index length
FOOTER_SIZE: Final = 8 + _FOOTER_PAYLOAD.size  # 32 bytes: always the last bytes of an indexed file
#: File name ending of capture segments (a directory reads as the capture made of these files).
SEGMENT_SUFFIX: Final = ".cbor.zst"

#: Largest decompressed data frame a reader accepts. The writer closes frames at 1 MiB plus one record,
#: and a record is at most one head (64 KiB) or one read (256 KiB); 64 MiB leaves room for other
#: writers. Readers decompress as a stream and stop there, whatever a frame header declares.
MAX_FRAME_CONTENT: Final = 64 * 1024 * 1024
#: Largest block of a zstd frame (RFC 8878, Block_Maximum_Size).
MAX_BLOCK_SIZE: Final = 128 * 1024
#: Largest decompressed index a reader accepts (about 100 bytes an exchange: millions of exchanges).
MAX_INDEX_CONTENT: Final = 512 * 1024 * 1024
#: Nesting a record may have; records are at most three levels deep.
MAX_CBOR_DEPTH: Final = 16


#: What the framing functions read from: an in-memory file or a memory map of one.
Buffer: TypeAlias = bytes | bytearray | mmap.mmap


class FrameError(ValueError):
    """Bytes at an offset that are not a well-formed frame."""


class TruncatedFrame(FrameError):
    """A frame that starts well but runs past the end of the buffer (a cut-off file)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FrameInfo:
    """Where one frame sits in a file."""

    kind: Literal["data", "skippable"]
    offset: int
    length: int
    magic: int
    content_size: int | None = None  # data frames that declare it

    @property
    def end(self) -> int:
        return self.offset + self.length


def parse_frame(
    buf: Buffer | memoryview, offset: int, stop: int | None = None, walked: set[int] | None = None
) -> FrameInfo:
    """Measure the frame starting at ``offset`` in ``buf`` without decompressing it.

    Walks the zstd frame header and block headers. Raises :class:`TruncatedFrame` when the frame
    would end past ``stop`` (default ``len(buf)``) and :class:`FrameError` for bytes that are not a
    frame. ``walked`` (see :func:`iter_frames`) collects the block headers of frames that turn out
    bad; a frame that reaches one of them is bad too, so that no block is walked twice in vain.
    """
    size = len(buf) if stop is None else stop
    if offset + 4 > size:
        raise TruncatedFrame("frame magic cut off")
    (magic,) = struct.unpack_from("<I", buf, offset)
    if SKIPPABLE_MAGIC_MIN <= magic <= SKIPPABLE_MAGIC_MAX:
        if offset + 8 > size:
            raise TruncatedFrame("skippable frame header cut off")
        (payload_len,) = struct.unpack_from("<I", buf, offset + 4)
        end = offset + 8 + payload_len
        if end > size:
            raise TruncatedFrame("skippable frame payload cut off")
        return FrameInfo("skippable", offset, 8 + payload_len, magic)
    if magic != ZSTD_MAGIC:
        raise FrameError(f"no frame magic at offset {offset} (found 0x{magic:08x})")
    pos = offset + 4
    if pos >= size:
        raise TruncatedFrame("frame header cut off")
    descriptor = buf[pos]
    pos += 1
    fcs_flag = descriptor >> 6
    single_segment = (descriptor >> 5) & 1
    if (descriptor >> 3) & 1:
        raise FrameError(f"reserved bit set in frame header at offset {offset}")
    has_checksum = (descriptor >> 2) & 1
    dict_id_size = (0, 1, 2, 4)[descriptor & 3]
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    header_rest = (0 if single_segment else 1) + dict_id_size + fcs_size
    if pos + header_rest > size:
        raise TruncatedFrame("frame header cut off")
    pos += (0 if single_segment else 1) + dict_id_size
    content_size: int | None = None
    if fcs_size:
        content_size = int.from_bytes(buf[pos : pos + fcs_size], "little")
        if fcs_size == 2:
            content_size += 256
    pos += fcs_size
    end = _walk_blocks(buf, pos, size, has_checksum, walked)
    return FrameInfo("data", offset, end - offset, magic, content_size)


def _walk_blocks(
    buf: Buffer | memoryview, pos: int, size: int, checksum: int, walked: set[int] | None
) -> int:
    """Where the blocks starting at ``pos`` (and the checksum after them) end."""
    seen: list[int] = []
    try:
        while True:
            if walked is not None:
                key = 2 * pos + checksum  # where the walk goes on from here depends on both
                if key in walked:
                    raise FrameError("frame runs into blocks already found bad")
                seen.append(key)
            if pos + 3 > size:
                raise TruncatedFrame("block header cut off")
            block_header = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            pos += 3
            block_type = (block_header >> 1) & 3
            block_size = block_header >> 3
            if block_type == 3:
                raise FrameError("reserved block type")
            if block_size > MAX_BLOCK_SIZE:
                raise FrameError(f"block of {block_size} bytes (largest: {MAX_BLOCK_SIZE})")
            pos += 1 if block_type == 1 else block_size
            if pos > size:
                raise TruncatedFrame("block cut off")
            if block_header & 1:  # the last block
                break
        if checksum:
            pos += 4
            if pos > size:
                raise TruncatedFrame("checksum cut off")
    except FrameError:
        if walked is not None:
            walked.update(seen)
        raise
    return pos


class _Resync:
    """Finds the next offset that could start a frame, after damage.

    Remembers the next match of each magic, so resynchronising through a long damaged region
    searches each of its bytes a bounded number of times."""

    def __init__(self, buf: Buffer, stop: int) -> None:
        self._buf, self._stop = buf, stop
        self._zstd = self._skippable = -1  # the next match at or after the last search, or stop

    def next(self, start: int) -> int:
        """The first offset in ``[start, stop)`` where a zstd or skippable magic occurs, else stop."""
        buf, stop = self._buf, self._stop
        if self._zstd < start:
            found = buf.find(b"\x28\xb5\x2f\xfd", start, stop)
            self._zstd = stop if found == -1 else found
        if self._skippable < start:
            self._skippable = stop
            found = buf.find(b"\x2a\x4d\x18", start + 1, stop)
            while found != -1:
                if 0x50 <= buf[found - 1] <= 0x5F:
                    self._skippable = found - 1
                    break
                found = buf.find(b"\x2a\x4d\x18", found + 1, stop)
        return min(self._zstd, self._skippable)


# -- data frames -------------------------------------------------------------------------------------


def new_compressor(level: int = 3) -> zstandard.ZstdCompressor:
    """A compressor that writes content sizes and checksums, as the format requires."""
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def encode_record(record: Record) -> bytes:
    """The CBOR encoding of one record."""
    return cbor2.dumps(record_to_map(record))


def encode_records(records: Iterable[Record]) -> bytes:
    """The CBOR sequence of ``records``."""
    dumps = cbor2.dumps
    return b"".join([dumps(record_to_map(r)) for r in records])


def encode_data_frame(records: Iterable[Record], compressor: zstandard.ZstdCompressor) -> bytes:
    """One complete zstd frame holding ``records``."""
    return bytes(compressor.compress(encode_records(records)))


# -- skippable frames: index and footer -------------------------------------------------------------


def skippable_frame(magic: int, payload: bytes) -> bytes:
    """A zstd skippable frame (standard tools skip it) carrying ``payload``."""
    if not SKIPPABLE_MAGIC_MIN <= magic <= SKIPPABLE_MAGIC_MAX:
        raise ValueError("not a skippable frame magic")
    return struct.pack("<II", magic, len(payload)) + payload


def encode_footer(index_offset: int, index_length: int, version: int = 1) -> bytes:
    """The fixed-size footer that points at the index frame."""
    return skippable_frame(
        FOOTER_MAGIC, _FOOTER_PAYLOAD.pack(FOOTER_TAG, version, 0, index_offset, index_length)
    )


def decode_footer(tail: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """Read the footer from the last :data:`FOOTER_SIZE` bytes of a file.

    Returns (index offset, index frame length), or None when the tail is not a wirecap footer.
    """
    if len(tail) != FOOTER_SIZE:
        return None
    magic, size = struct.unpack_from("<II", tail, 0)
    if magic != FOOTER_MAGIC or size != _FOOTER_PAYLOAD.size:
        return None
    tag, _version, _reserved, offset, length = _FOOTER_PAYLOAD.unpack_from(tail, 8)
    if tag != FOOTER_TAG:
        return None
    return offset, length


def encode_index_frame(index_map: dict[str, Any], level: int = 3) -> bytes:
    """The skippable frame holding ``index_map`` (CBOR, then zstd-compressed)."""
    payload = INDEX_TAG + bytes(new_compressor(level).compress(cbor2.dumps(index_map)))
    return skippable_frame(INDEX_MAGIC, payload)


@dataclasses.dataclass(frozen=True, slots=True)
class Damage:
    """A region of a file that holds no readable frame, and why."""

    offset: int
    end: int
    reason: str


def iter_frames(
    buf: Buffer, start: int = 0, stop: int | None = None
) -> Iterator[FrameInfo | Damage]:
    """Walk every frame from ``start`` to ``stop`` (default: the end of ``buf``).

    Yields a :class:`FrameInfo` for each frame and one :class:`Damage` for each unreadable region.
    After damage it resynchronises at the next byte sequence that could start a frame, so a cut or
    corrupted region loses only itself: every intact frame before and after it is found. The walk
    costs time linear in the bytes walked, whatever the damage.
    """
    pos = start
    size = len(buf) if stop is None else stop
    resync = _Resync(buf, size)
    walked: set[int] = set()
    bad_from: int | None = None
    reason = ""
    while pos < size:
        try:
            info = parse_frame(buf, pos, size, walked)
        except FrameError as exc:
            if bad_from is None:
                bad_from, reason = pos, str(exc)
            pos = resync.next(pos + 1)
            continue
        if bad_from is not None:
            yield Damage(bad_from, pos, reason)
            bad_from = None
        yield info
        pos = info.end
    if bad_from is not None:
        yield Damage(bad_from, size, reason)
