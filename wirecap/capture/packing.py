"""Records as tuples of their fields, and those tuples straight to CBOR. Sans-IO.

The proxy hands its records to the capture writer process packed: a type code and a tuple of the
record's field values, the cheapest form ``marshal`` carries (see child.py for the pipe). The writer
process's usual work on one (no secret in it) is :func:`encode_packed`, which writes the record's CBOR
map from the tuple without building the record object: the same bytes as ``cbor2.dumps(record.to_map())``
(tested) at about a third of the cost of unpacking, mapping and encoding (workload A: ~30 -> ~10 us
per exchange). Values of an unexpected type are left to cbor2, so the output is the same for them too.
"""

from __future__ import annotations

import functools
import operator
import struct
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import cbor2

from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    Gap,
    Record,
    Redaction,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.capture.ring import RingChunk

if TYPE_CHECKING:
    from collections.abc import Callable

#: The fields a packed record carries, in order; the position of a type is its code. ``redactions``
#: is left out: records are packed before redaction, which runs in the writer process.
RECORD_FIELDS: Final[dict[type[Any], tuple[str, ...]]] = {
    RequestReceived: (
        *("x", "wall_ns", "method", "target", "head"),
        *("client", "proxy_url", "route", "upstream_url"),
    ),
    UpstreamRequest: ("x", "ns", "head", "proxy_path"),
    ResponseHead: ("x", "ns", "status", "head", "by"),
    BodyChunk: ("x", "dir", "ns", "data"),
    ExchangeEnd: ("x", "ns", "outcome", "status", "error", "req_bytes", "res_bytes", "ttfb_ns"),
    Gap: ("wall_ns", "records", "bytes", "exchanges", "reason"),
}
#: The type codes, in RECORD_FIELDS' order (tested).
REQUEST, UPSTREAM, RESPONSE, BODY, END, GAP = range(6)

PackedRecord: TypeAlias = tuple[int, tuple[Any, ...]]
#: A packed record redacted (see sink.SegmentSink.encode_batch): packed, with the redactions made,
#: or, when the redactor had to build it, the redacted record.
Redacted: TypeAlias = tuple[PackedRecord, tuple[Redaction, ...]] | Record

#: What a packed record costs beyond its bytes, for the buffer's byte bound (an estimate).
RECORD_OVERHEAD: Final = 64
#: A body chunk's data at least this big goes to the writer process beside its batch, through the
#: shared ring or as a pipe message of its own (child.split_blobs), and joins its frame as a part of
#: its own (:func:`encode_packed_split`): marshal and the record's encoding never copy it.
BIG_BODY_BYTES: Final = 16 * 1024


def _big_field(names: tuple[str, ...]) -> int:
    """The position of the field that holds a record's bytes, or -1."""
    big = [i for i, name in enumerate(names) if name in ("head", "data")]
    return big[0] if big else -1


#: Per record type: its code and the getter of its fields.
_PACKING: Final = {
    kind: (code, operator.attrgetter(*names))
    for code, (kind, names) in enumerate(RECORD_FIELDS.items())
}
#: Per type code: the position of the field that holds the record's bytes (or -1).
_BIG_FIELD: Final = tuple(_big_field(names) for names in RECORD_FIELDS.values())
#: The constructors of unpack_record: explicit keywords are twice as fast as ``kind(**dict(...))``.
#: Their order must follow RECORD_FIELDS (tested).
_BUILDERS: Final[tuple[Callable[[tuple[Any, ...]], Record], ...]] = (
    lambda v: RequestReceived(
        x=v[0],
        wall_ns=v[1],
        method=v[2],
        target=v[3],
        head=v[4],
        client=v[5],
        proxy_url=v[6],
        route=v[7],
        upstream_url=v[8],
    ),
    lambda v: UpstreamRequest(x=v[0], ns=v[1], head=v[2], proxy_path=v[3]),
    lambda v: ResponseHead(x=v[0], ns=v[1], status=v[2], head=v[3], by=v[4]),
    lambda v: BodyChunk(x=v[0], dir=v[1], ns=v[2], data=v[3]),
    lambda v: ExchangeEnd(
        x=v[0],
        ns=v[1],
        outcome=v[2],
        status=v[3],
        error=v[4],
        req_bytes=v[5],
        res_bytes=v[6],
        ttfb_ns=v[7],
    ),
    lambda v: Gap(wall_ns=v[0], records=v[1], bytes=v[2], exchanges=v[3], reason=v[4]),
)


# -- packed records made directly ------------------------------------------------------------------
# The proxy's hot path builds its records packed (no record object, no attribute getter): about a
# fifth of the cost of a record dataclass followed by pack_sized. Each equals pack_record of the
# record with the same fields (tested).


def packed_request(
    x: str,
    wall_ns: int,
    method: str,
    target: str,
    head: bytes,
    client: str,
    proxy_url: str,
    route: str | None,
    upstream_url: str | None,
) -> PackedRecord:
    """A :class:`RequestReceived`, packed."""
    return REQUEST, (x, wall_ns, method, target, head, client, proxy_url, route, upstream_url)


def packed_upstream(x: str, ns: int, head: bytes, proxy_path: str) -> PackedRecord:
    """An :class:`UpstreamRequest`, packed."""
    return UPSTREAM, (x, ns, head, proxy_path)


def packed_response(x: str, ns: int, status: int, head: bytes, by: str) -> PackedRecord:
    """A :class:`ResponseHead`, packed."""
    return RESPONSE, (x, ns, status, head, by)


def packed_body(
    x: str,
    dir: str,  # noqa: A002 (the field's name)
    ns: int,
    data: bytes | bytearray | tuple[int, int],
) -> PackedRecord:
    """A :class:`BodyChunk`, packed; its data may be a ``(position, length)`` pair in the capture's
    shared ring (see writer.ProcessCaptureWriter.ring_slot)."""
    return BODY, (x, dir, ns, data)


def packed_end(
    x: str,
    ns: int,
    outcome: str,
    status: int | None,
    error: str | None,
    req_bytes: int,
    res_bytes: int,
    ttfb_ns: int | None,
) -> PackedRecord:
    """An :class:`ExchangeEnd`, packed."""
    return END, (x, ns, outcome, status, error, req_bytes, res_bytes, ttfb_ns)


def packed_size(packed: PackedRecord) -> int:
    """About how many bytes ``packed`` holds (what :func:`pack_sized` says of its record); a body
    chunk in the capture's shared ring (its data a ``(position, length)`` pair) counts its length."""
    code, values = packed
    big = _BIG_FIELD[code]
    if big < 0:
        return RECORD_OVERHEAD
    data = values[big]
    return RECORD_OVERHEAD + (data[1] if type(data) is tuple else len(data))


def packed_exchange(packed: PackedRecord) -> str | None:
    """The id of the exchange ``packed`` belongs to (None for a gap, which belongs to none)."""
    code, values = packed
    return None if code == GAP else values[0]


def pack_record(record: Record) -> PackedRecord:
    """``record`` as a tuple of plain values that ``marshal`` can carry (well under a microsecond)."""
    code, getter = _PACKING[type(record)]
    return code, getter(record)


def pack_sized(record: Record) -> tuple[PackedRecord, int]:
    """``record`` packed, and about how many bytes it holds."""
    packed = pack_record(record)
    return packed, packed_size(packed)


def unpack_record(packed: PackedRecord) -> Record:
    """The record :func:`pack_record` packed (its redactions, if any, are not in it)."""
    code, values = packed
    return _BUILDERS[code](values)


# -- CBOR ----------------------------------------------------------------------------------------------
# RFC 8949 with cbor2's choices: definite lengths, the shortest head for every length and integer.

_SMALL_HEADS: Final = tuple(
    tuple(bytes((major << 5 | n,)) for n in range(24)) for major in range(8)
)
_HEAD8: Final = struct.Struct(">BB").pack
_HEAD16: Final = struct.Struct(">BH").pack
_HEAD32: Final = struct.Struct(">BI").pack
_HEAD64: Final = struct.Struct(">BQ").pack
_NULL: Final = b"\xf6"
_UINT, _BYTES, _TEXT = 0, 2, 3


def _head(major: int, n: int) -> bytes:
    """The head of an item of ``major`` type with argument ``n`` (a length or an unsigned value)."""
    if n < 24:
        return _SMALL_HEADS[major][n]
    first = major << 5
    if n < 0x100:
        return _HEAD8(first | 24, n)
    if n < 0x10000:
        return _HEAD16(first | 25, n)
    if n < 0x100000000:
        return _HEAD32(first | 26, n)
    return _HEAD64(first | 27, n)


def _uint(n: Any) -> bytes:
    # _head(_UINT, n) inlined: three to five of these per record.
    if type(n) is int and n >= 0:
        if n < 24:
            return _SMALL_HEADS[_UINT][n]
        if n < 0x100:
            return _HEAD8(24, n)
        if n < 0x10000:
            return _HEAD16(25, n)
        if n < 0x100000000:
            return _HEAD32(26, n)
        if n < 0x10000000000000000:
            return _HEAD64(27, n)
    return cbor2.dumps(n)  # negative, huge or not an int: cbor2 decides, as it would in to_map


def _opt_uint(n: Any) -> bytes:
    return _NULL if n is None else _uint(n)


#: Encoded text strings, by string: an exchange's id comes back in each of its records, and a
#: method, target, route or outcome with most exchanges. Emptied when full (unique ids fill it).
#: Threads may share it: an entry never changes, and one lost to a race is encoded again.
_TEXTS: Final[dict[str, bytes]] = {}
_TEXTS_MAX: Final = 512
_TEXT_CACHED_LENGTH: Final = 256  # longer strings are encoded every time


def _text(s: Any) -> bytes:
    if type(s) is str:
        encoded = _TEXTS.get(s)
        if encoded is not None:
            return encoded
        try:
            data = s.encode()
        except UnicodeEncodeError:  # a lone surrogate: cbor2 raises its own error for it
            return cbor2.dumps(s)
        encoded = _head(_TEXT, len(data)) + data
        if len(s) <= _TEXT_CACHED_LENGTH:
            if len(_TEXTS) >= _TEXTS_MAX:
                _TEXTS.clear()
            _TEXTS[s] = encoded
        return encoded
    return cbor2.dumps(s)


def _opt_text(s: Any) -> bytes:
    return _NULL if s is None else _text(s)


def _bytes_head(data: Any) -> bytes:
    """The head of a byte string (its bytes follow as a part of their own: no copy here)."""
    if type(data) is bytes or type(data) is bytearray or type(data) is RingChunk:
        return _head(_BYTES, len(data))
    raise TypeError(f"expected bytes, got {type(data).__name__}")


def _key(name: str) -> bytes:
    return cbor2.dumps(name)


def _start(kind: type[Any], keys: int) -> bytes:
    """A record map's head and its ``"t"`` entry."""
    return _head(5, keys) + _key("t") + _key(kind.TYPE)


_NO_REDACTIONS: Final = _key("redactions") + b"\x80"
_K_X, _K_NS, _K_HEAD = _key("x"), _key("ns"), _key("head")


def _redactions(redactions: tuple[Redaction, ...]) -> bytes:
    if not redactions:
        return _NO_REDACTIONS
    return _encoded_redactions(redactions)


@functools.lru_cache(maxsize=256)
def _encoded_redactions(redactions: tuple[Redaction, ...]) -> bytes:
    """The ``redactions`` entry of a record (cached: one API key is redacted in every request)."""
    return _key("redactions") + cbor2.dumps([r.to_map() for r in redactions])


_REQUEST: Final = _start(RequestReceived, 11)
_K_WALL, _K_METHOD, _K_TARGET = _key("wall_ns"), _key("method"), _key("target")
_K_CLIENT, _K_PROXY_URL = _key("client"), _key("proxy_url")
_K_ROUTE, _K_UPSTREAM_URL = _key("route"), _key("upstream_url")


def _encode_request(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> bytes:
    x, wall_ns, method, target, head, client, proxy_url, route, upstream_url = v
    return b"".join(
        [
            _REQUEST,
            _K_X,
            _text(x),
            _K_WALL,
            _uint(wall_ns),
            _K_METHOD,
            _text(method),
            _K_TARGET,
            _text(target),
            _K_HEAD,
            _bytes_head(head),
            head,
            _K_CLIENT,
            _text(client),
            _K_PROXY_URL,
            _text(proxy_url),
            _K_ROUTE,
            _opt_text(route),
            _K_UPSTREAM_URL,
            _opt_text(upstream_url),
            _redactions(redactions),
        ]
    )


_UPSTREAM: Final = _start(UpstreamRequest, 6)
_K_PROXY_PATH: Final = _key("proxy_path")


def _encode_upstream(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> bytes:
    x, ns, head, proxy_path = v
    return b"".join(
        [
            _UPSTREAM,
            _K_X,
            _text(x),
            _K_NS,
            _uint(ns),
            _K_HEAD,
            _bytes_head(head),
            head,
            _K_PROXY_PATH,
            _text(proxy_path),
            _redactions(redactions),
        ]
    )


_RESPONSE: Final = _start(ResponseHead, 7)
_K_STATUS, _K_BY = _key("status"), _key("by")


def _encode_response(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> bytes:
    x, ns, status, head, by = v
    return b"".join(
        [
            _RESPONSE,
            _K_X,
            _text(x),
            _K_NS,
            _uint(ns),
            _K_STATUS,
            _uint(status),
            _K_HEAD,
            _bytes_head(head),
            head,
            _K_BY,
            _text(by),
            _redactions(redactions),
        ]
    )


_BODY_START: Final = (_start(BodyChunk, 5), _start(BodyChunk, 6))
#: The ``dir`` entry and the ``ns`` key after it, for both directions.
_DIRECTIONS: Final = {d: _key("dir") + _key(d) + _K_NS for d in ("req", "res")}
_K_DATA: Final = _key("data")


def _encode_body(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> bytes:
    return b"".join(_body_parts(v, redactions))


def _body_parts(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> list[Any]:
    x, direction, ns, data = v
    middle = _DIRECTIONS.get(direction)
    if middle is None:
        middle = _key("dir") + _text(direction) + _K_NS
    parts = [_BODY_START[bool(redactions)], _K_X, _text(x), middle, _uint(ns)]
    parts += (_K_DATA, _bytes_head(data), data)
    if redactions:
        parts.append(_redactions(redactions))
    return parts


_END: Final = _start(ExchangeEnd, 9)
_K_OUTCOME, _K_ERROR = _key("outcome"), _key("error")
_K_REQ_BYTES, _K_RES_BYTES, _K_TTFB = _key("req_bytes"), _key("res_bytes"), _key("ttfb_ns")


def _encode_end(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> bytes:
    x, ns, outcome, status, error, req_bytes, res_bytes, ttfb_ns = v
    return b"".join(
        [
            _END,
            _K_X,
            _text(x),
            _K_NS,
            _uint(ns),
            _K_OUTCOME,
            _text(outcome),
            _K_STATUS,
            _opt_uint(status),
            _K_ERROR,
            _opt_text(error),
            _K_REQ_BYTES,
            _uint(req_bytes),
            _K_RES_BYTES,
            _uint(res_bytes),
            _K_TTFB,
            _opt_uint(ttfb_ns),
        ]
    )


def _encode_gap(v: tuple[Any, ...], redactions: tuple[Redaction, ...]) -> bytes:
    return cbor2.dumps(_BUILDERS[GAP](v).to_map())  # one per batch at most: no hurry


_ENCODERS: Final = (
    _encode_request,
    _encode_upstream,
    _encode_response,
    _encode_body,
    _encode_end,
    _encode_gap,
)


def encode_packed(packed: PackedRecord, redactions: tuple[Redaction, ...] = ()) -> bytes:
    """The CBOR encoding of the record ``packed`` holds, with ``redactions`` as its own: the bytes
    ``cbor2.dumps(record.to_map())`` makes (an exchange end has no redactions, and takes none)."""
    code, values = packed
    return _ENCODERS[code](values, redactions)


def encode_packed_split(
    packed: PackedRecord, redactions: tuple[Redaction, ...] = ()
) -> tuple[bytes, bytes | bytearray | RingChunk]:
    """:func:`encode_packed` in two parts whose concatenation is the encoding: a big body chunk's
    data is the second part, as it is (bytes, or where it lies in the capture's shared ring), so
    that it is copied once, into its frame, rather than once more into its record (~0.2 s per GiB
    here); the second part is empty for everything else."""
    code, values = packed
    if code == BODY and not redactions and len(values[3]) >= BIG_BODY_BYTES:
        return b"".join(_body_parts(values, ())[:-1]), values[3]
    return _ENCODERS[code](values, redactions), b""
