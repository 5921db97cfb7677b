"""The inspector's exchange table: one compact row per exchange, and the queries the page asks.
Sans-IO.

The capture is read once (and followed as it grows); each exchange becomes a :class:`Row` of the
fields the list shows, filters and sorts on. A page of the list is a filter, a sort and a slice of
these rows, so a capture of 100,000 exchanges sends the page the same 100 rows as one of 100.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import operator
import time
from typing import TYPE_CHECKING, Any, Final

from wirecap.inspect.select import status_matcher

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

#: Rows one page holds at most.
MAX_PAGE: Final = 500
#: Changed ids remembered for the page's live updates; a page further behind reloads its list.
CHANGES_KEPT: Final = 10_000
#: Segment numbers and offsets are packed into one int per frame: offsets below 2**40 (1 TiB).
OFFSET_BITS: Final = 40


def pack_locations(locations: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """(segment, offset) pairs as one int each: rows hold them for as long as the table lives."""
    return tuple((segment << OFFSET_BITS) | offset for segment, offset in locations)


def unpack_locations(packed: Sequence[int]) -> list[tuple[int, int]]:
    mask = (1 << OFFSET_BITS) - 1
    return [(p >> OFFSET_BITS, p & mask) for p in packed]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """What the list knows of one exchange. Rows are replaced, never changed, so a query can run
    on a snapshot while the follower puts new rows in."""

    id: str
    wall_ns: int | None
    method: str | None
    route: str | None
    path: str | None
    status: int | None
    outcome: str  # ok, client_abort, upstream_error, timeout, protocol_error, incomplete
    live: bool  # still being written
    model: str | None
    model_requested: str | None
    api: str
    streamed: bool
    ttft_ns: int | None
    duration_ns: int | None  # for a live exchange, the time of its last record so far
    input_tokens: int | None
    output_tokens: int | None
    req_bytes: int
    res_bytes: int
    chunks: int  # response body reads
    findings: tuple[tuple[str, str], ...]  # (code, severity)
    locations: tuple[int, ...]  # packed (segment, frame offset) of its records

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "start": _iso(self.wall_ns),
            "start_ms": None if self.wall_ns is None else self.wall_ns // 1_000_000,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome,
            "live": self.live,
            "model": self.model,
            "api": self.api,
            "streamed": self.streamed,
            "ttft_ms": _ms(self.ttft_ns),
            "duration_ms": _ms(self.duration_ns),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "req_bytes": self.req_bytes,
            "res_bytes": self.res_bytes,
            "chunks": self.chunks,
            "findings": [{"code": c, "severity": s} for c, s in self.findings],
        }


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _iso(wall_ns: int | None) -> str | None:
    if wall_ns is None:
        return None
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}Z"


def _tokens(row: Row) -> int | None:
    if row.input_tokens is None and row.output_tokens is None:
        return None
    return (row.input_tokens or 0) + (row.output_tokens or 0)


#: Sort keys of the list: column name -> the value it sorts by (None sorts last).
SORT_KEYS: Final[dict[str, Callable[[Row], Any]]] = {
    "time": operator.attrgetter("wall_ns"),
    "method": operator.attrgetter("method"),
    "route": operator.attrgetter("route"),
    "path": operator.attrgetter("path"),
    "model": operator.attrgetter("model"),
    "status": operator.attrgetter("status"),
    "ttft": operator.attrgetter("ttft_ns"),
    "duration": operator.attrgetter("duration_ns"),
    "input_tokens": operator.attrgetter("input_tokens"),
    "output_tokens": operator.attrgetter("output_tokens"),
    "tokens": _tokens,
    "bytes": lambda r: r.req_bytes + r.res_bytes,
    "outcome": operator.attrgetter("outcome"),
    "findings": lambda r: len(r.findings),
}
#: Sorted orders kept (each one pointer per row), for the page's next page or filter.
ORDERS_KEPT: Final = 4


def sort_rows(rows: Sequence[Row], sort: str, descending: bool) -> list[Row]:
    """``rows`` by ``sort``; rows without a value last, ties in arrival order."""
    key = SORT_KEYS[sort]
    known = [r for r in rows if key(r) is not None]
    unknown = [r for r in rows if key(r) is None] if len(known) < len(rows) else []
    known.sort(key=key, reverse=descending)
    return known + unknown


class QueryError(ValueError):
    """A filter or sort the page sent that does not parse."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """One page of the list: filters like ``wirecap inspect``'s, a finding code, a text search,
    a sort and a slice."""

    route: str | None = None
    status: str | None = None  # 200, 4xx, >=500, !=200, or a comma list
    model: str | None = None  # a glob or a substring, of the returned or requested model
    since_ns: int | None = None
    until_ns: int | None = None
    finding: str | None = None  # a code, "any", or a severity: "error", "warning", "info"
    text: str | None = None  # words that must all be in the prompt, the answer or the path
    sort: str = "time"
    descending: bool = True
    offset: int = 0
    limit: int = 100

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise QueryError(f"unknown sort {self.sort!r} (one of {', '.join(SORT_KEYS)})")
        if not 1 <= self.limit <= MAX_PAGE or self.offset < 0:
            raise QueryError(f"a page is 1 to {MAX_PAGE} rows from an offset of 0 or more")
        if self.status:
            try:
                status_matcher(self.status)
            except ValueError as exc:
                raise QueryError(str(exc)) from None

    @property
    def words(self) -> list[str]:
        return (self.text or "").lower().split()

    def matcher(self) -> Callable[[Row], bool] | None:
        """The filters other than the text search, as one test (None: no filter)."""
        tests: list[Callable[[Row], bool]] = []
        if self.route:
            route = self.route.rstrip("/")
            tests.append(lambda r: (r.route or "").rstrip("/") == route)
        if self.status:
            status_ok = status_matcher(self.status)
            tests.append(lambda r: status_ok(r.status))
        if self.model:
            tests.append(_model_test(self.model))
        if self.since_ns is not None:
            since = self.since_ns
            tests.append(lambda r: r.wall_ns is not None and r.wall_ns >= since)
        if self.until_ns is not None:
            until = self.until_ns
            tests.append(lambda r: r.wall_ns is not None and r.wall_ns <= until)
        if self.finding:
            tests.append(_finding_test(self.finding))
        if len(tests) <= 1:
            return tests[0] if tests else None
        return lambda r: all(test(r) for test in tests)


def _model_test(spec: str) -> Callable[[Row], bool]:
    pattern = spec.lower()

    def test(row: Row) -> bool:
        names = [m.lower() for m in (row.model, row.model_requested) if m]
        return any(fnmatch.fnmatchcase(m, pattern) or pattern in m for m in names)

    return test


def _finding_test(spec: str) -> Callable[[Row], bool]:
    if spec == "any":
        return lambda r: bool(r.findings)
    if spec == "none":
        return lambda r: not r.findings
    if spec in ("error", "warning", "info"):
        return lambda r: any(severity == spec for _, severity in r.findings)
    return lambda r: any(code == spec for code, _ in r.findings)


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    matched: int  # rows that pass the filters
    total: int  # rows in the table


def select(
    rows: Sequence[Row],
    query: Query,
    text_hits: Collection[str] | None = None,
    *,
    ordered: bool = False,
) -> Page:
    """The page ``query`` asks for out of ``rows`` (already in the query's order when
    ``ordered``); ``text_hits`` are the ids whose text matches the query's words (None: no text
    search)."""
    if not ordered:
        rows = sort_rows(rows, query.sort, query.descending)
    test = query.matcher()
    chosen: Sequence[Row] = rows
    if text_hits is not None:
        chosen = [r for r in chosen if r.id in text_hits]
    if test is not None:
        chosen = [r for r in chosen if test(r)]
    return Page(list(chosen[query.offset : query.offset + query.limit]), len(chosen), len(rows))


class Table:
    """Every row, by arrival, with a version that grows with each change (the page waits on it)."""

    def __init__(self) -> None:
        self._rows: list[Row] = []
        self._where: dict[str, int] = {}
        self.version = 0
        self._changes: collections.deque[tuple[int, str]] = collections.deque(maxlen=CHANGES_KEPT)
        self._facets: tuple[int, dict[str, Any]] | None = None
        self._orders: dict[tuple[str, bool], tuple[int, list[Row]]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, row: Row) -> None:
        """Add ``row``, or replace the row of the same exchange."""
        at = self._where.get(row.id)
        if at is None:
            self._where[row.id] = len(self._rows)
            self._rows.append(row)
        else:
            self._rows[at] = row
        self.version += 1
        self._changes.append((self.version, row.id))

    def get(self, exchange_id: str) -> Row | None:
        at = self._where.get(exchange_id)
        return None if at is None else self._rows[at]

    def resolve(self, prefix: str) -> Row | None:
        """The row whose id is ``prefix``, or the only one that starts with it."""
        row = self.get(prefix)
        if row is not None or len(prefix) < 4:
            return row
        found = [r for r in self._rows if r.id.startswith(prefix)]
        return found[0] if len(found) == 1 else None

    def snapshot(self) -> tuple[int, list[Row]]:
        """The version and the rows as they are now (a copy of the list; rows never change)."""
        return self.version, list(self._rows)

    def ordered(self, version: int, rows: list[Row], sort: str, descending: bool) -> list[Row]:
        """``rows`` (the :meth:`snapshot` of ``version``) sorted, the order kept for the next
        query of the same version. Safe from a worker thread."""
        found = self._orders.get((sort, descending))
        if found is not None and found[0] == version:
            return found[1]
        result = sort_rows(rows, sort, descending)
        if len(self._orders) >= ORDERS_KEPT:
            self._orders.clear()
        self._orders[(sort, descending)] = (version, result)
        return result

    def changed_since(self, version: int) -> list[str] | None:
        """Ids changed after ``version``, oldest first; None when that is too far back to tell."""
        if version >= self.version:
            return []
        if not self._changes or self._changes[0][0] > version + 1:
            return None
        return list(dict.fromkeys(x for v, x in self._changes if v > version))

    def facets(self) -> dict[str, Any]:
        """What the filters can choose from: routes, models and finding codes, with counts."""
        if self._facets is not None and self._facets[0] == self.version:
            return self._facets[1]
        routes: collections.Counter[str] = collections.Counter()
        models: collections.Counter[str] = collections.Counter()
        codes: collections.Counter[str] = collections.Counter()
        live = 0
        for row in self._rows:
            routes[row.route or ""] += 1
            if row.model:
                models[row.model] += 1
            codes.update(code for code, _ in row.findings)
            live += row.live
        facets = {
            "routes": sorted(routes.items()),
            "models": sorted(models.items()),
            "findings": sorted(codes.items()),
            "live": live,
        }
        self._facets = (self.version, facets)
        return facets
