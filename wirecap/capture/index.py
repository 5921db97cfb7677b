"""The timing index: one entry per exchange, built from records as they are framed. Sans-IO.

The writer feeds every record with the file offset of the frame it went into. Entries of finished
exchanges leave its memory in runs of encoded rows (:func:`encode_rows`), and on close the index is
written from those runs as a stream (:func:`write_index`). The reader rebuilds the same entries by
one scan when a file has no index (a crash), so both paths share :class:`IndexBuilder`.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import typing
from typing import IO, TYPE_CHECKING, Any, Final, TypeAlias

import cbor2

from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    ExchangeNote,
    Gap,
    Record,
    RecordError,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
    record_from_map,
    record_to_map,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

INDEX_VERSION: Final = 1


@dataclasses.dataclass(slots=True, kw_only=True)
class IndexEntry:
    """What the index knows about one exchange in one file."""

    x: str
    wall_ns: int | None = None
    method: str | None = None
    target: str | None = None
    route: str | None = None
    upstream_url: str | None = None
    status: int | None = None
    ttfb_ns: int | None = None
    dur_ns: int | None = None
    outcome: str | None = None
    req_bytes: int = 0
    res_bytes: int = 0
    frames: list[int] = dataclasses.field(default_factory=list)

    def to_map(self) -> dict[str, Any]:
        """The entry as a map (the row of the stored columns)."""
        return {
            "x": self.x,
            "wall_ns": self.wall_ns,
            "method": self.method,
            "target": self.target,
            "route": self.route,
            "upstream_url": self.upstream_url,
            "status": self.status,
            "ttfb_ns": self.ttfb_ns,
            "dur_ns": self.dur_ns,
            "outcome": self.outcome,
            "req_bytes": self.req_bytes,
            "res_bytes": self.res_bytes,
            "frames": list(self.frames),
        }

    @classmethod
    def from_map(cls, m: Any, data_end: int | None = None) -> IndexEntry:
        """The entry a stored row describes, checked as a whole (every field's type, and frames
        that are ascending offsets before ``data_end``); raises :class:`RecordError`."""
        if not isinstance(m, dict) or set(COLUMNS) - set(m):
            raise RecordError(f"index entry is not a map of {', '.join(COLUMNS)}")
        columns = {name: [m[name]] for name in COLUMNS}
        for problem in row_problems(columns, data_end).values():
            raise RecordError(problem)
        return cls(**{name: m[name] for name in COLUMNS})


_ENTRY_FIELDS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "wall_ns": int,
    "method": str,
    "target": str,
    "route": str,
    "upstream_url": str,
    "status": int,
    "ttfb_ns": int,
    "dur_ns": int,
    "outcome": str,
    "req_bytes": int,
    "res_bytes": int,
}


#: Columns of the stored index, in order; every column has one value per exchange.
COLUMNS: Final = ("x", *_ENTRY_FIELDS, "frames")


def _kind(hint: Any) -> tuple[type, bool]:
    """(the type, whether null is allowed) of a field typed ``hint``."""
    args = typing.get_args(hint) or (hint,)
    return next(a for a in args if a is not type(None)), type(None) in args


#: What each column but frames may hold, from IndexEntry's field types.
_KINDS: Final[Mapping[str, tuple[type, bool]]] = {
    name: _kind(hint)
    for name, hint in typing.get_type_hints(IndexEntry).items()
    if name != "frames"
}


def row_problems(columns: Mapping[str, list[Any]], data_end: int | None) -> dict[int, str]:
    """The rows of a stored index that cannot be used, with the first reason for each.

    A row is checked as a whole: each field has its declared type (integers are unsigned), its id
    is not repeated by another row, and its frames are ascending, unique offsets before
    ``data_end`` (where the index frame starts). One pass over each column.
    """
    bad: dict[int, str] = {}
    for name, (kind, nullable) in _KINDS.items():
        values = columns[name]
        what = "text" if kind is str else "an unsigned integer"
        for i in _wrong(values, kind, nullable):
            bad.setdefault(i, f"{name!r} is {type(values[i]).__name__}, not {what}")
    ids = columns["x"]
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if type(x) is str:
            first = seen.setdefault(x, i)
            if first != i:
                bad.setdefault(first, f"exchange id {x!r} is on more than one row")
                bad.setdefault(i, f"exchange id {x!r} is on more than one row")
    for i, offsets in enumerate(columns["frames"]):
        problem = _frames_problem(offsets, data_end)
        if problem is not None:
            bad.setdefault(i, problem)
    return bad


def _wrong(values: list[Any], kind: type, nullable: bool) -> list[int]:
    """Positions of ``values`` that are not of ``kind`` (or null, when ``nullable``)."""
    if kind is str:
        return [
            i for i, v in enumerate(values) if type(v) is not str and not (nullable and v is None)
        ]
    return [
        i
        for i, v in enumerate(values)
        if not (type(v) is int and v >= 0) and not (nullable and v is None)
    ]


def _frames_problem(offsets: Any, data_end: int | None) -> str | None:
    if type(offsets) is not list or not offsets:
        return "'frames' is not a non-empty list"
    previous = -1
    for offset in offsets:
        if type(offset) is not int or offset < 0:
            return "'frames' holds something other than offsets"
        if offset <= previous:
            return "'frames' offsets are not ascending and unique"
        previous = offset
    if data_end is not None and previous >= data_end:
        return "'frames' points past the data frames"
    return None


class Index:
    """A decoded index: entries in order of first appearance, plus gaps and known damage.

    The stored index is columnar (one array per field), which decodes to a few large lists instead of
    one map per exchange. An index read from a file keeps those columns, checked as a whole when it
    is read: :attr:`bad_rows` says which rows cannot be used, and :meth:`find` builds one entry.
    """

    __slots__ = ("_columns", "_entries", "_unnamed", "bad_rows", "damage", "gaps")

    def __init__(
        self,
        entries: Sequence[IndexEntry] | None = None,
        *,
        columns: Mapping[str, list[Any]] | None = None,
        gaps: Sequence[Gap] = (),
        damage: Sequence[Mapping[str, Any]] = (),
        bad_rows: Mapping[int, str] | None = None,
    ) -> None:
        self._entries: tuple[IndexEntry, ...] | None = (
            tuple(entries) if entries is not None else None
        )
        self._columns = columns
        self.gaps = tuple(gaps)
        self.damage = tuple(damage)
        #: Rows of the stored index that cannot be used (position: why); their exchanges are
        #: found by scanning.
        self.bad_rows: Mapping[int, str] = dict(bad_rows or {})
        # Whether a bad row has no usable id: then an id missing from the index may still be in
        # the file.
        self._unnamed = columns is not None and any(
            type(columns["x"][i]) is not str for i in self.bad_rows
        )

    def __len__(self) -> int:
        if self._entries is not None:
            return len(self._entries)
        return len(self._columns["x"]) if self._columns else 0

    def _row(self, i: int) -> IndexEntry:
        assert self._columns is not None
        return IndexEntry.from_map({name: column[i] for name, column in self._columns.items()})

    @property
    def entries(self) -> tuple[IndexEntry, ...]:
        """Every entry (raises :class:`RecordError` when a row cannot be used)."""
        if self._entries is None:
            if self.bad_rows:
                i, why = next(iter(self.bad_rows.items()))
                raise RecordError(f"index row {i}: {why}")
            self._entries = tuple(self._row(i) for i in range(len(self)))
            self._columns = None
        return self._entries

    def ids(self) -> list[str]:
        """The exchange ids the index names, a bad row's included when it is text (a listing by id
        that must not fail on one bad row)."""
        if self._entries is not None:
            return [e.x for e in self._entries]
        return [x for x in self._columns["x"] if type(x) is str] if self._columns else []

    def find(self, exchange_id: str) -> IndexEntry | None:
        """The entry of one exchange, or None when it has no records in the file.

        Raises :class:`RecordError` when the index cannot tell: the exchange's row is bad, or it
        has no row while a bad row's id is unusable."""
        if self._entries is not None:
            return next((e for e in self._entries if e.x == exchange_id), None)
        if not self._columns:
            return None
        try:
            i = self._columns["x"].index(exchange_id)
        except ValueError:
            if self._unnamed:
                raise RecordError("rows without a usable exchange id") from None
            return None
        if i in self.bad_rows:
            raise RecordError(self.bad_rows[i])
        return self._row(i)

    def to_map(self) -> dict[str, Any]:
        entries = self.entries
        return {
            "t": "index",
            "version": INDEX_VERSION,
            "columns": {name: [getattr(e, name) for e in entries] for name in COLUMNS},
            "gaps": [record_to_map(g) for g in self.gaps],
            "damage": [dict(d) for d in self.damage],
        }

    @classmethod
    def from_map(cls, m: Any, data_end: int | None = None) -> Index:
        """The index a decoded index map describes, its rows checked (see :func:`row_problems`)
        against ``data_end``. Raises :class:`RecordError` when the map, a column, a gap or a
        damage entry does not have the declared shape (the index cannot be used at all)."""
        if not isinstance(m, dict) or m.get("t") != "index":
            raise RecordError("not an index map")
        if m.get("version") != INDEX_VERSION:
            raise RecordError(f"unsupported index version {m.get('version')!r}")
        columns = m.get("columns")
        gaps = m.get("gaps", [])
        damage = m.get("damage", [])
        if (
            not isinstance(columns, dict)
            or not isinstance(gaps, list)
            or not isinstance(damage, list)
        ):
            raise RecordError("index parts have the wrong type")
        if set(columns) != set(COLUMNS) or not all(isinstance(c, list) for c in columns.values()):
            raise RecordError(f"index columns must be the lists {', '.join(COLUMNS)}")
        if len({len(c) for c in columns.values()}) != 1:
            raise RecordError("index columns have different lengths")
        if not all(_is_damage(d) for d in damage):
            raise RecordError("index damage entries must be maps of offset, end and reason")
        return cls(
            columns=columns,
            gaps=[_gap(g) for g in gaps],
            damage=damage,
            bad_rows=row_problems(columns, data_end),
        )


def _is_damage(item: Any) -> bool:
    """Whether ``item`` is a stored damage entry: unsigned offset and end, text reason."""
    return (
        isinstance(item, dict)
        and all(type(item.get(key)) is int and item[key] >= 0 for key in ("offset", "end"))
        and type(item.get("reason")) is str
    )


def _gap(item: Any) -> Gap:
    record = record_from_map(item)
    if not isinstance(record, Gap):
        raise RecordError("index gaps must be gap records")
    return record


#: What a capture writer keeps of an encoded record for the index (see :meth:`IndexBuilder.observe`).
IndexItem: TypeAlias = "Record | str"


def index_item(record: Record) -> Record | str:
    """What :meth:`IndexBuilder.observe` needs of ``record`` once it is encoded: a body chunk or an
    upstream head only says that its exchange has bytes in the frame, so its exchange id stands for
    it (the writer keeps that instead of the record's bytes until the frame is written)."""
    return record.x if isinstance(record, BodyChunk | UpstreamRequest | ExchangeNote) else record


class IndexBuilder:
    """Accumulates index entries from records and the offsets of the frames that hold them.

    An entry is *open* until its exchange's ``end`` record and *finished* from then on (the ``end``
    is an exchange's last record, so nothing changes a finished entry). A writer takes the finished
    entries away as it goes (:meth:`take_finished`) and keeps them on disk until the index is
    written (:class:`~wirecap.capture.sink.IndexSpill`), so the entries it holds are the exchanges
    in flight, however many the segment has. The index lists entries in the order they finished,
    then the open ones in the order they began; a reader rebuilding the index by one scan feeds the
    same records in the same order and gets the same index.
    """

    def __init__(self) -> None:
        self._open: dict[str, IndexEntry] = {}
        self._finished: list[IndexEntry] = []
        self._gaps: list[Gap] = []

    def __len__(self) -> int:
        """Entries held (not yet taken by :meth:`take_finished`)."""
        return len(self._finished) + len(self._open)

    @property
    def finished(self) -> int:
        """Finished entries held, waiting for :meth:`take_finished`."""
        return len(self._finished)

    def observe(self, record: IndexItem, frame_offset: int) -> None:
        """Account for ``record``, stored in the frame that starts at ``frame_offset``.

        A bare exchange id stands for a record that only tells the exchange has bytes in this frame
        (a body chunk, an upstream head; see :func:`index_item`).
        """
        if isinstance(record, str):
            self._entry_in_frame(record, frame_offset)
        elif isinstance(record, BodyChunk | UpstreamRequest | ExchangeNote):
            self._entry_in_frame(record.x, frame_offset)
        elif isinstance(record, RequestReceived):
            entry = self._entry_in_frame(record.x, frame_offset)
            entry.wall_ns, entry.method, entry.target = record.wall_ns, record.method, record.target
            entry.route, entry.upstream_url = record.route, record.upstream_url
        elif isinstance(record, ResponseHead):
            entry = self._entry_in_frame(record.x, frame_offset)
            if record.status >= 200 and entry.status is None:
                entry.status = record.status
            if entry.ttfb_ns is None:
                entry.ttfb_ns = record.ns
        elif isinstance(record, ExchangeEnd):
            entry = self._entry_in_frame(record.x, frame_offset)
            entry.dur_ns, entry.outcome = record.ns, record.outcome
            entry.req_bytes, entry.res_bytes = record.req_bytes, record.res_bytes
            if record.status is not None:
                entry.status = record.status
            if record.ttfb_ns is not None:
                entry.ttfb_ns = record.ttfb_ns
            self._finished.append(self._open.pop(record.x))
        elif isinstance(record, Gap):
            self._gaps.append(record)

    def _entry_in_frame(self, x: str, frame_offset: int) -> IndexEntry:
        """The open entry of exchange ``x``, noted as having records in the frame at
        ``frame_offset``."""
        entry = self._open.get(x)
        if entry is None:
            entry = self._open[x] = IndexEntry(x=x)
        if not entry.frames or entry.frames[-1] != frame_offset:
            entry.frames.append(frame_offset)
        return entry

    def observe_all(self, records: Iterable[IndexItem], frame_offset: int) -> None:
        seen: set[str] = set()  # exchanges already marked present in this frame
        for record in records:
            if type(record) is str:
                if record in seen:
                    continue
                seen.add(record)
            self.observe(record, frame_offset)

    def take_finished(self) -> tuple[list[IndexEntry], list[Gap]]:
        """Hand over the finished entries and the gaps (they leave the builder)."""
        taken = self._finished, self._gaps
        self._finished, self._gaps = [], []
        return taken

    def take_all(self) -> tuple[list[IndexEntry], list[Gap]]:
        """Hand over every entry, the open ones last, and the gaps: the end of the index."""
        entries, gaps = self.take_finished()
        entries += self._open.values()
        self._open = {}
        return entries, gaps

    def build(self, damage: Iterable[Mapping[str, Any]] = ()) -> Index:
        """The index of the entries and gaps held (all of them unless some were taken)."""
        entries = (*self._finished, *self._open.values())
        return Index(entries, gaps=self._gaps, damage=tuple(damage))


# -- the index written as it is spilled: runs of rows, then one stream -----------------------------

#: Head of a run of index rows (:func:`encode_rows`): u32 counts of rows and gaps, then the byte
#: length of each part (one per column of :data:`COLUMNS`, then the gaps), little-endian.
RUN_HEAD: Final = struct.Struct(f"<{len(COLUMNS) + 3}I")


def encode_rows(entries: Sequence[IndexEntry], gaps: Sequence[Gap]) -> bytes:
    """A run of rows, as a writer keeps them until the index is written: :data:`RUN_HEAD`, then for
    each column and then the gaps, the CBOR items of its values one after another (the content of
    a CBOR array without its head). Writing the index then only concatenates the parts of each
    column (:func:`write_index`)."""
    parts = [_items([getattr(e, name) for e in entries]) for name in COLUMNS]
    parts.append(_items([record_to_map(g) for g in gaps]))
    return RUN_HEAD.pack(len(entries), len(gaps), *map(len, parts)) + b"".join(parts)


def run_layout(head: bytes) -> tuple[int, int, list[int]]:
    """The rows, gaps and part lengths that a run's :data:`RUN_HEAD` gives."""
    rows, gaps, *lengths = RUN_HEAD.unpack(head)
    return rows, gaps, lengths


def _items(values: list[Any]) -> bytes:
    return cbor2.dumps(values)[len(_array_head(len(values))) :]


def _array_head(length: int) -> bytes:
    out = io.BytesIO()
    cbor2.CBOREncoder(out).encode_length(4, length)
    return out.getvalue()


def write_index(
    out: IO[bytes],
    rows: int,
    gaps: int,
    parts: Callable[[int], Iterable[bytes]],
    damage: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write the index map (section 4 of docs/FORMAT.md) to ``out`` from runs of rows, a piece at a
    time: ``parts(i)`` yields part ``i`` (a column of :data:`COLUMNS`, or the gaps at
    ``len(COLUMNS)``) of every run, in order; ``rows`` and ``gaps`` are their totals. The bytes are
    those of ``cbor2.dumps(index.to_map())`` for the same entries."""
    encoder = cbor2.CBOREncoder(out)
    encoder.encode_length(5, 5)
    for key, value in (("t", "index"), ("version", INDEX_VERSION)):
        encoder.encode(key)
        encoder.encode(value)
    encoder.encode("columns")
    encoder.encode_length(5, len(COLUMNS))
    for i, name in enumerate(COLUMNS):
        encoder.encode(name)
        encoder.encode_length(4, rows)
        for part in parts(i):
            out.write(part)
    encoder.encode("gaps")
    encoder.encode_length(4, gaps)
    for part in parts(len(COLUMNS)):
        out.write(part)
    encoder.encode("damage")
    encoder.encode([dict(d) for d in damage])
