"""The timing index: one entry per exchange, built from records as they are framed. Sans-IO.

The writer feeds every record with the file offset of the frame it went into; on close it encodes the
entries into the index frame. The reader rebuilds the same entries by one scan when a file has no index
(a crash), so both paths share :class:`IndexBuilder`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
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
    from collections.abc import Iterable, Mapping, Sequence

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
    return record.x if isinstance(record, BodyChunk | UpstreamRequest) else record


class IndexBuilder:
    """Accumulates index entries from records and the offsets of the frames that hold them."""

    def __init__(self) -> None:
        self._entries: dict[str, IndexEntry] = {}
        self._gaps: list[Gap] = []

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, record: IndexItem, frame_offset: int) -> None:
        """Account for ``record``, stored in the frame that starts at ``frame_offset``.

        A bare exchange id stands for a record that only tells the exchange has bytes in this frame
        (a body chunk, an upstream head; see :func:`index_item`).
        """
        if isinstance(record, str):
            self._entry_in_frame(record, frame_offset)
        elif isinstance(record, BodyChunk | UpstreamRequest):
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
        elif isinstance(record, Gap):
            self._gaps.append(record)

    def _entry_in_frame(self, x: str, frame_offset: int) -> IndexEntry:
        """The entry of exchange ``x``, noted as having records in the frame at ``frame_offset``."""
        entry = self._entries.get(x)
        if entry is None:
            entry = self._entries[x] = IndexEntry(x=x)
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

    def build(self, damage: Iterable[Mapping[str, Any]] = ()) -> Index:
        return Index(tuple(self._entries.values()), gaps=self._gaps, damage=tuple(damage))
