"""Rows: what the table, stats, filters and ``--detect-issues`` need of each exchange, cached per
closed segment so that the second look at a large capture skips the bodies.

A :class:`Row` is an exchange's JSON row (``inspect --json``), the key that spots the same request
sent again (duplicate detection), and, when asked for, its per-exchange findings. Working them out
means decompressing and parsing every body; reading them back from the cache costs a small fraction
of that.

The cache holds one file per closed segment (one with an index: a live or cut-off segment may
still change, so it is always read) and per question (rows alone, or rows with findings for given
thresholds), keyed by the segment's :meth:`~wirecap.capture.CaptureFile.fingerprint` and a digest
of the code that works rows out (:func:`code_digest`: another wirecap version, or an edited
adapter, never reads rows the old code made). It lives in ``$WIRECAP_CACHE_DIR``, else
``$XDG_CACHE_HOME/wirecap``, else ``~/.cache/wirecap`` (directory 0700, files 0600: rows name
models and paths); ``WIRECAP_CACHE_DIR=off`` turns it off. A cache that cannot be written (a
read-only home) is skipped without a word: it only saves time.

Order: within a segment, the exchanges that began and ended in it come in the order they began; an
exchange that spans segments comes when it ends. A cached segment gives them in the same order:
where a spanning exchange ended, its cache file says so, and its row is worked out there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import cbor2
import zstandard

from wirecap import __version__
from wirecap.capture import ExchangeEnd, Record, RequestReceived
from wirecap.capture.bodies import ReadingPass
from wirecap.capture.reader import Exchange, FileDamage
from wirecap.inspect.analysis import Analyzed, analyze_exchange
from wirecap.inspect.detectors import DuplicateTracker, Finding, Thresholds, detect, request_key
from wirecap.inspect.select import Filters, analyzed_exchanges, last_or_first, with_progress
from wirecap.llm import EventAllowance

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from wirecap.capture import Capture, CaptureFile
    from wirecap.capture.bodies import Place

_OFF: Final = "off"
#: Temporary cache files older than this are what an interrupted look left behind.
STALE_SECONDS: Final = 3600.0


@functools.cache
def code_digest() -> str:
    """A digest of the code a row comes from: the capture reader, the LLM adapters and the
    inspect package (every module in them, with the wirecap version)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(__version__.encode())
    for folder in ("capture", "llm", "inspect"):
        for source in sorted((package / folder).glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One exchange as the table, stats and detect-issues see it."""

    fields: dict[str, Any]  # the JSON row of ``inspect --json``
    request_key: bytes | None  # the same request sent again has the same key (None: no body)
    findings: tuple[Finding, ...] | None = None  # per-exchange findings, when asked for

    @property
    def id(self) -> str:
        return str(self.fields["id"])


def row_of(a: Analyzed, thresholds: Thresholds | None = None) -> Row:
    """The row of an analyzed exchange; with ``thresholds``, its findings too."""
    findings = tuple(detect(a, thresholds)) if thresholds is not None else None
    return Row(a.row(), request_key(a), findings)


def cache_directory() -> Path | None:
    """Where rows are cached, or None when the cache is off."""
    chosen = os.environ.get("WIRECAP_CACHE_DIR")
    if chosen == _OFF:
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wirecap"


class CacheBroken(Exception):
    """A cache file that ended before its trailer or does not decode."""


class RowCache:
    """Cached rows per closed segment, in ``directory``: one zstd stream per segment and question,
    holding a CBOR sequence (the row keys, one item per row and one where each exchange that began
    in an earlier segment ended, then a trailer with the spanning exchanges and the damage the scan
    found), written and read a row at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "rows"

    def path(self, fingerprint: str, thresholds: Thresholds | None) -> Path:
        question = json.dumps(
            [code_digest(), dataclasses.asdict(thresholds) if thresholds else None]
        )
        name = hashlib.sha256(f"{fingerprint} {question}".encode()).hexdigest()[:40]
        return self.directory / f"{name}.cbor.zst"

    def forget(self, fingerprint: str, thresholds: Thresholds | None) -> None:
        """Remove a segment's cache file (a broken one: the next look writes it again)."""
        with contextlib.suppress(OSError):
            self.path(fingerprint, thresholds).unlink()

    def reader(self, fingerprint: str, thresholds: Thresholds | None) -> RowReader | None:
        try:
            return RowReader(self.path(fingerprint, thresholds).open("rb"))
        except OSError:
            return None

    def writer(self, fingerprint: str, thresholds: Thresholds | None) -> RowWriter | None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._sweep()
            return RowWriter(self.directory, self.path(fingerprint, thresholds))
        except OSError:
            return None

    def _sweep(self) -> None:
        """Remove the temporary files of looks that were killed before they finished."""
        before = time.time() - STALE_SECONDS
        for leftover in self.directory.glob(".rows-*.tmp"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < before:
                    leftover.unlink()


class RowWriter:
    """Writes one segment's rows to a temporary 0600 file, renamed into place by :meth:`finish`."""

    def __init__(self, directory: Path, final: Path) -> None:
        fd, self._name = tempfile.mkstemp(dir=directory, prefix=".rows-", suffix=".tmp")
        self._final = final
        compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
        self._out = compressor.stream_writer(os.fdopen(fd, "wb"))
        self._keys: list[str] | None = None
        self.failed = False

    def _item(self, item: Any) -> None:
        if self.failed:
            return
        try:
            self._out.write(cbor2.dumps(item))
        except OSError:
            self.abandon()

    def add(self, row: Row) -> None:
        if self._keys is None:
            self._keys = list(row.fields)
            self._item(["keys", self._keys])
        findings = None if row.findings is None else [list(_finding(f)) for f in row.findings]
        self._item(["row", [row.fields.get(k) for k in self._keys], row.request_key, findings])

    def span(self, x: str) -> None:
        """Here (between the rows), exchange ``x``, which began in an earlier segment, ended."""
        self._item(["span", x])

    def finish(self, spanning: Iterable[str], damage: Iterable[FileDamage]) -> None:
        marks = [[d.offset, d.end, d.reason] for d in damage]
        self._item(["end", sorted(spanning), marks])
        if self.failed:
            return
        try:
            self._out.close()  # type: ignore[no-untyped-call]  # untyped in zstandard's stubs
            os.replace(self._name, self._final)
        except OSError:
            self.abandon()

    def abandon(self) -> None:
        self.failed = True
        with contextlib.suppress(OSError):
            self._out.close()  # type: ignore[no-untyped-call]  # untyped in zstandard's stubs
        with contextlib.suppress(OSError):
            os.unlink(self._name)


class RowReader:
    """Reads one segment's cached rows back, a row at a time, and where an exchange that began
    in an earlier segment ended (its id, in place of a row); after them, :attr:`spanning` and
    :attr:`damage` hold the trailer's lists."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.spanning: list[str] = []
        self.damage: list[tuple[int, int, str]] = []

    def rows(self) -> Iterator[Row | str]:
        """The rows and span ends; raises :class:`CacheBroken` where the file stops making
        sense."""
        try:
            with self._file, zstandard.ZstdDecompressor().stream_reader(self._file) as stream:
                decoder = cbor2.CBORDecoder(stream)
                keys: list[str] = []
                while True:
                    item = decoder.decode()
                    if item[0] == "keys":
                        keys = item[1]
                    elif item[0] == "row":
                        yield _row_from(keys, item[1:])
                    elif item[0] == "span":
                        yield str(item[1])
                    elif item[0] == "end":
                        self.spanning = list(item[1])
                        self.damage = [(int(a), int(b), str(why)) for a, b, why in item[2]]
                        return
                    else:
                        raise CacheBroken(f"unknown item {item[0]!r}")
        except (
            OSError,
            ValueError,
            LookupError,
            TypeError,
            cbor2.CBORError,
            zstandard.ZstdError,
        ) as exc:
            raise CacheBroken(str(exc)) from exc


def _finding(f: Finding) -> tuple[str, str, str, str]:
    return (f.code, f.severity, f.id, f.message)


def _row_from(keys: list[str], values: list[Any]) -> Row:
    fields, key, findings = values
    return Row(
        dict(zip(keys, fields, strict=True)),
        key,
        None if findings is None else tuple(Finding(*f) for f in findings),
    )


def open_cache() -> RowCache | None:
    """The row cache of this user, or None when it is off."""
    directory = cache_directory()
    return RowCache(directory) if directory is not None else None


# -- the rows of a capture ---------------------------------------------------------------------------


class _Segment:
    """The exchanges of one segment being read: the ones that began in it wait, in the order they
    began, until every earlier one has ended (or the segment ends), then go out as rows, and into
    the cache with ``keep``."""

    def __init__(
        self,
        f: CaptureFile,
        thresholds: Thresholds | None,
        keep: RowWriter | None = None,
        allowance: EventAllowance | None = None,
    ) -> None:
        self.thresholds = thresholds
        self.keep = keep
        #: The segment's exchanges share it (with ``allowance``: also other readings of the file).
        self.allowance = allowance or EventAllowance.for_files([f])
        self.waiting: dict[str, Row | None] = {}  # began here; None until it ends
        self.spanning: set[str] = set()  # has records here, but did not both begin and end here

    def saw(self, record: Record) -> None:
        if isinstance(record, RequestReceived):
            self.waiting[record.x] = None
        elif getattr(record, "x", None) not in self.waiting:
            self.spanning.add(record.x)  # type: ignore[union-attr]

    def ended(self, exchange: Exchange) -> Iterator[Row]:
        """The rows ready to go once ``exchange`` has ended."""
        row = row_of(analyze_exchange(exchange, self.allowance), self.thresholds)
        if exchange.id not in self.waiting:
            if self.keep is not None:
                self.keep.span(exchange.id)
            yield row
            return
        self.waiting[exchange.id] = row
        while self.waiting:
            first = next(iter(self.waiting))
            ready = self.waiting[first]
            if ready is None:
                break
            del self.waiting[first]
            yield self._whole(ready)

    def finish(self) -> Iterator[Row]:
        """At the segment's end: what began here and is still open spans into the next one."""
        for x, ready in self.waiting.items():
            if ready is None:
                self.spanning.add(x)
            else:
                yield self._whole(ready)
        self.waiting.clear()

    def _whole(self, row: Row) -> Row:
        if self.keep is not None:
            self.keep.add(row)
        return row


class _OpenExchanges(dict[str, Exchange]):
    """The exchanges that began and have not ended yet in one look, and the reading pass over the
    capture that they share (see capture/bodies.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = ReadingPass()


def capture_rows(
    capture: Capture, thresholds: Thresholds | None = None, cache: RowCache | None = None
) -> Iterator[Row]:
    """Every exchange of ``capture`` as a row (with findings when ``thresholds`` are given),
    read from ``cache`` for each closed segment it holds, worked out (and cached) otherwise."""
    open_exchanges = _OpenExchanges()
    for f in capture.files:
        fingerprint = f.fingerprint() if cache is not None else None
        if cache is None or fingerprint is None:
            yield from _scanned(f, open_exchanges, _Segment(f, thresholds))
            continue
        reader = cache.reader(fingerprint, thresholds)
        if reader is not None:
            try:
                yield from _from_cache(f, reader, open_exchanges, thresholds)
            except CacheBroken:
                cache.forget(fingerprint, thresholds)
            continue
        yield from _scanned_into(
            cache.writer(fingerprint, thresholds), f, open_exchanges, thresholds
        )
    unended = EventAllowance.for_files(capture.files)
    for exchange in open_exchanges.values():  # never ended (a crash): last, as the reader does
        yield row_of(analyze_exchange(exchange, unended), thresholds)


def _scanned(f: CaptureFile, open_exchanges: _OpenExchanges, segment: _Segment) -> Iterator[Row]:
    yield from _rows_of_records(f, f.placed_records(), open_exchanges, segment)
    yield from segment.finish()


def _scanned_into(
    keep: RowWriter | None,
    f: CaptureFile,
    open_exchanges: _OpenExchanges,
    thresholds: Thresholds | None,
) -> Iterator[Row]:
    """A segment read from its file, its rows kept in the cache as they go out; a look that
    stops early (``--limit``, a closed pipe) leaves no cache file behind."""
    segment = _Segment(f, thresholds, keep)
    finished = False
    try:
        yield from _scanned(f, open_exchanges, segment)
        finished = True
    finally:
        if keep is not None and finished:
            keep.finish(segment.spanning, f.damage)
        elif keep is not None:
            keep.abandon()


def _from_cache(
    f: CaptureFile,
    reader: RowReader,
    open_exchanges: _OpenExchanges,
    thresholds: Thresholds | None,
) -> Iterator[Row]:
    """A segment's rows from the cache; an exchange that began earlier and ended here is worked
    out from the file where the cache says it ended; then the exchanges that go on into the next
    segment are followed. A broken cache file ends with the rest of the segment read from the file
    (skipping what was given) and :class:`CacheBroken` (the caller removes the file). The
    exchanges worked out here share one event allowance, as a segment read whole does."""
    allowance = EventAllowance.for_files([f])
    given: set[str] = set()
    try:
        for item in reader.rows():
            if isinstance(item, str):
                placed = f.placed_records_of(item)
                segment = _Segment(f, thresholds, allowance=allowance)
                yield from _rows_of_records(f, placed, open_exchanges, segment)
            else:
                yield item
            given.add(item if isinstance(item, str) else item.id)
    except CacheBroken:
        rest = ((r, p) for r, p in f.placed_records() if getattr(r, "x", None) not in given)
        segment = _Segment(f, thresholds, allowance=allowance)
        yield from _rows_of_records(f, rest, open_exchanges, segment)
        yield from segment.finish()
        raise
    for offset, end, reason in reader.damage:
        f.damage.append(FileDamage(f.path, offset, end, reason))
    going_on = [x for x in reader.spanning if x not in given]
    placed = ((r, p) for x in going_on for r, p in f.placed_records_of(x))
    segment = _Segment(f, thresholds, allowance=allowance)
    yield from _rows_of_records(f, placed, open_exchanges, segment)


def _rows_of_records(
    f: CaptureFile,
    placed: Iterable[tuple[Record, Place]],
    open_exchanges: _OpenExchanges,
    segment: _Segment,
) -> Iterator[Row]:
    wire = f.header is None or f.header.version >= 2
    for record, place in placed:
        x = getattr(record, "x", None)
        if x is None:
            continue
        exchange = open_exchanges.get(x)
        if exchange is None:
            exchange = open_exchanges[x] = Exchange(x, wire=wire, reading=open_exchanges.reading)
        segment.saw(record)
        exchange.add(record, place)
        if isinstance(record, ExchangeEnd):
            del open_exchanges[x]
            yield from segment.ended(exchange)


def matching_rows(rows: Iterable[Row], filters: Filters) -> Iterator[Row]:
    """The rows that pass ``filters``."""
    for row in rows:
        fields = row.fields
        if not filters.cheap_match(fields["start_ns"], fields["route"], fields["status"]):
            continue
        if filters.model_names_match(fields["model"], fields["model_requested"]):
            yield row


def with_findings(
    rows: Iterable[Row], thresholds: Thresholds
) -> Iterator[tuple[Row, list[Finding]]]:
    """Each row with all its findings: those worked out with ``thresholds`` and, when its request
    makes a retry storm with the rows before it, ``duplicate-request``."""
    duplicates = DuplicateTracker(thresholds)
    for row in rows:
        found = list(row.findings or ())
        dup = duplicates.observe_request(row.id, row.fields["start_ns"], row.request_key)
        if dup is not None:
            found.append(dup)
        yield row, found


def row_findings(rows: Iterable[Row], thresholds: Thresholds) -> Iterator[Finding]:
    """The findings of rows worked out with ``thresholds``, and the retry storms among them, in
    row order."""
    for _, found in with_findings(rows, thresholds):
        yield from found


def selected_rows(
    capture: Capture,
    filters: Filters | None = None,
    *,
    thresholds: Thresholds | None = None,
    last: int | None = None,
    limit: int | None = None,
    progress: bool | None = None,
) -> Iterator[Row]:
    """The rows of ``capture`` that pass ``filters``, through the user's row cache.

    ``limit`` stops after that many; ``last`` keeps only the last that many (read through the
    indexes when no model filter needs the bodies, so ``--last 5`` of a large capture reads five
    exchanges). ``progress`` as in :func:`~wirecap.inspect.select.with_progress`."""
    filters = filters or Filters()
    if last is not None and filters.model is None:
        return (row_of(a, thresholds) for a in analyzed_exchanges(capture, filters, last=last))
    every = with_progress(capture_rows(capture, thresholds, open_cache()), progress)
    return last_or_first(matching_rows(every, filters), last=last, limit=limit)
