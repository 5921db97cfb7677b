"""Framing of a capture file: zstd data frames, skippable frames, the footer. Sans-IO.

A capture file is a plain concatenation of zstd frames (RFC 8878). Data frames hold a CBOR sequence
(RFC 8742) of records; skippable frames hold the index and the footer. Everything here works on
byte buffers handed in by the caller, so the same code serves the writer, the reader, and tests that
cut files at arbitrary offsets.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import io
import mmap
import struct
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import cbor2
import zstandard

from wirecap.capture.records import Record, RecordError, record_from_map, record_to_map

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
#: and a record is at most one head (64 KiB) or one read (64 KiB); 64 MiB leaves room for other writers
#: while keeping a hostile frame header from making the reader allocate gigabytes.
MAX_FRAME_CONTENT: Final = 64 * 1024 * 1024
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


def parse_frame(buf: Buffer | memoryview, offset: int, stop: int | None = None) -> FrameInfo:
    """Measure the frame starting at ``offset`` in ``buf`` without decompressing it.

    Walks the zstd frame header and block headers. Raises :class:`TruncatedFrame` when the frame
    would end past ``stop`` (default ``len(buf)``) and :class:`FrameError` for bytes that are not a
    frame.
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
    while True:
        if pos + 3 > size:
            raise TruncatedFrame("block header cut off")
        block_header = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        pos += 3
        last = block_header & 1
        block_type = (block_header >> 1) & 3
        block_size = block_header >> 3
        if block_type == 3:
            raise FrameError(f"reserved block type in frame at offset {offset}")
        pos += 1 if block_type == 1 else block_size
        if pos > size:
            raise TruncatedFrame("block cut off")
        if last:
            break
    if has_checksum:
        pos += 4
        if pos > size:
            raise TruncatedFrame("checksum cut off")
    return FrameInfo("data", offset, pos - offset, magic, content_size)


def find_next_magic(buf: Buffer, start: int, stop: int | None = None) -> int:
    """Offset of the next byte sequence in ``[start, stop)`` that could begin a frame, else ``stop``.

    Used to resynchronise after damage in the middle of a file.
    """
    end = len(buf) if stop is None else stop
    best = end
    zstd_at = buf.find(b"\x28\xb5\x2f\xfd", start, end)
    if zstd_at != -1:
        best = zstd_at
    skip_at = buf.find(b"\x2a\x4d\x18", start + 1, end)
    while skip_at != -1 and skip_at - 1 < best:
        candidate = skip_at - 1
        if 0x50 <= buf[candidate] <= 0x5F:
            best = candidate
            break
        skip_at = buf.find(b"\x2a\x4d\x18", skip_at + 1, end)
    return best


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


def decompress_frame(
    frame: bytes | bytearray | memoryview, info: FrameInfo, limit: int = MAX_FRAME_CONTENT
) -> bytes:
    """Decompress one data frame, checking its checksum, never producing more than ``limit`` bytes.

    Raises :class:`FrameError` for a frame that is corrupt, fails its checksum, or is too large.
    """
    if info.content_size is not None and info.content_size > limit:
        raise FrameError(
            f"frame at offset {info.offset} declares {info.content_size} bytes (limit {limit})"
        )
    dctx = zstandard.ZstdDecompressor()
    try:
        if info.content_size is not None:
            return bytes(dctx.decompress(bytes(frame)))
        with dctx.stream_reader(io.BytesIO(bytes(frame)), read_across_frames=False) as reader:
            data = bytes(reader.read(limit + 1))
    except zstandard.ZstdError as exc:
        raise FrameError(f"frame at offset {info.offset} is corrupt: {exc}") from exc
    if len(data) > limit:
        raise FrameError(f"frame at offset {info.offset} decompresses past {limit} bytes")
    return data


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
    """A CBOR decoder for untrusted input: no tags, no indefinite lengths, bounded depth."""
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
    item = decoder.decode()
    if decoder.fp.tell() != len(data):
        raise cbor2.CBORDecodeError("trailing bytes after the CBOR item")
    return item


def decode_records(data: bytes) -> tuple[list[Record], str | None]:
    """Decode a CBOR sequence of records.

    Returns the records decoded before the first problem, and a description of that problem (None when
    the whole sequence is good). Records of unknown types are skipped.
    """
    decoder = strict_cbor_decoder(data)
    fp = decoder.fp
    records: list[Record] = []
    end = len(data)
    while fp.tell() < end:
        at = fp.tell()
        try:
            record = record_from_map(decoder.decode())
        except (cbor2.CBORDecodeError, RecordError, RecursionError) as exc:
            return records, f"bad record at byte {at} of the frame: {exc}"
        if record is not None:
            records.append(record)
    return records, None


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


def decode_index_frame(frame: bytes | bytearray | memoryview) -> Any:
    """The CBOR item inside an index frame. Raises :class:`FrameError` when it is not one."""
    try:
        info = parse_frame(frame, 0)
    except FrameError as exc:
        raise FrameError(f"index frame: {exc}") from exc
    if info.magic != INDEX_MAGIC or info.length != len(frame):
        raise FrameError("index frame has the wrong magic or length")
    payload = bytes(frame[8:])
    if payload[:4] != INDEX_TAG:
        raise FrameError("index frame does not start with WCIX")
    inner = memoryview(payload)[4:]
    inner_info = parse_frame(inner, 0)
    if inner_info.kind != "data" or inner_info.length != len(inner):
        raise FrameError("index payload is not one zstd frame")
    data = decompress_frame(inner, inner_info, MAX_INDEX_CONTENT)
    try:
        return strict_cbor_loads(data)
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise FrameError(f"index is not valid CBOR: {exc}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Damage:
    """A region of a file that holds no readable frame, and why."""

    offset: int
    end: int
    reason: str


def iter_frames(
    buf: Buffer, start: int = 0, stop: int | None = None
) -> Iterator[FrameInfo | Damage]:
    """Walk every frame from ``start`` to the end of ``buf``.

    Yields a :class:`FrameInfo` for each frame and a :class:`Damage` for each unreadable region. After
    damage it resynchronises at the next byte sequence that could start a frame, so a cut or corrupted
    region loses only itself: every intact frame before and after it is found.
    """
    pos = start
    size = len(buf) if stop is None else stop
    while pos < size:
        try:
            info = parse_frame(buf, pos, size)
        except FrameError as exc:
            nxt = find_next_magic(buf, pos + 1, size)
            yield Damage(pos, nxt, str(exc))
            pos = nxt
            continue
        yield info
        pos = info.end
