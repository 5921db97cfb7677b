"""The inspector's state: the capture followed, its exchange table, search text and metrics.

:meth:`Inspector.run` polls the capture in a worker thread (:class:`~wirecap.inspect.follow.Follower`:
new frames every :data:`POLL_SECONDS`), analyses each exchange there once it ends (and each poll
while it grows), and puts the rows into the table on the event loop, which wakes the pages that
wait for changes. A capture of any size is read once; a large one is read in steps, its rows
appearing as it goes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Final

import trio

from wirecap.inspect.analysis import Analyzed, analyze_exchange
from wirecap.inspect.detectors import DuplicateTracker, Finding, Thresholds, detect
from wirecap.inspect.follow import POLL_SECONDS, FollowBatch, Follower
from wirecap.ui.commands import har_document, one_exchange_capture
from wirecap.ui.detail import detail
from wirecap.ui.metrics import LLMMetrics
from wirecap.ui.search import SearchText
from wirecap.ui.summary import search_text, summarize
from wirecap.ui.table import Page, Query, Row, Table, select, unpack_locations

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

    from wirecap.capture import Exchange, FileDamage, Header, Record
    from wirecap.llm import EventAllowance

#: An exchange that got no new records for this long is no longer shown as live (its writer may
#: have died); it comes back to life if more records arrive.
LIVE_SECONDS: Final = 60.0
#: Damage reports kept for the page.
DAMAGE_KEPT: Final = 100


@dataclasses.dataclass(slots=True)
class _Ingested:
    batch: FollowBatch
    rows: list[Row]
    ended: list[Row]


class Inspector:
    """A capture being inspected. Only :meth:`run` changes it; the other methods read."""

    def __init__(
        self,
        targets: Iterable[str | os.PathLike[str]],
        *,
        thresholds: Thresholds | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.targets = [str(t) for t in targets]
        self.thresholds = thresholds or Thresholds()
        self.poll_seconds = poll_seconds
        self.follower = Follower(self.targets, start="beginning")
        self.table = Table()
        self.search = SearchText()
        self.metrics = LLMMetrics()
        self.damage: list[FileDamage] = []
        self.bytes_read = 0
        #: The capture was read to its end once and every row of it is in the table.
        self.caught_up = False
        self._duplicates = DuplicateTracker(self.thresholds)
        self._duplicate_messages: dict[str, str] = {}
        self._live: dict[str, float] = {}  # live exchange -> monotonic time of its last records
        self._changed = trio.Event()

    def close(self) -> None:
        self.search.close()

    # -- following the capture (run on the event loop; the work in a worker thread) -------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the capture until cancelled."""
        task_status.started()
        while True:
            ingested = await trio.to_thread.run_sync(self._ingest)
            self._apply(ingested, time.monotonic())
            if ingested.batch.caught_up:
                await trio.sleep(self.poll_seconds)

    def _ingest(self) -> _Ingested:
        """One poll, and the rows it changes (in a worker thread: reading and analysing)."""
        following = self.follower.caught_up  # records read from now on are arriving live
        batch = self.follower.poll()
        ended: list[Row] = []
        for followed in batch.completed:
            a = analyze_exchange(followed.exchange, self.follower.allowance_of(followed.locations))
            row = summarize(a, self._findings(a, new=True), followed.locations)
            self.search.add(row.id, search_text(a))
            ended.append(row)
        growing = []
        for followed in batch.growing:
            a = analyze_exchange(followed.exchange, self.follower.allowance_of(followed.locations))
            row = summarize(a, [], followed.locations, live=following)
            self.search.set_live(row.id, search_text(a))
            growing.append(row)
        return _Ingested(batch, ended + growing, ended)

    def _apply(self, ingested: _Ingested, now: float) -> None:
        """Put an ingested poll's rows into the table (on the event loop)."""
        batch = ingested.batch
        self.bytes_read += batch.bytes_read
        self.damage = (self.damage + batch.damage)[-DAMAGE_KEPT:]
        for row in ingested.rows:
            self.table.put(row)
            if row.live:
                self._live[row.id] = now
        for row in ingested.ended:
            self._live.pop(row.id, None)
        for exchange_id, seen in list(self._live.items()):
            if now - seen > LIVE_SECONDS:
                del self._live[exchange_id]
                stale = self.table.get(exchange_id)
                if stale is not None:
                    self.table.put(dataclasses.replace(stale, live=False))
        self.metrics.count(ingested.ended)
        self.metrics.in_flight.set(self.follower.in_flight)
        self.metrics.indexed.set(len(self.table))
        caught_up = self.caught_up or batch.caught_up
        if ingested.rows or batch.damage or caught_up != self.caught_up:
            self.caught_up = caught_up
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _findings(self, a: Analyzed, *, new: bool = False) -> list[Finding]:
        """The findings of ``a``; ``new`` when it is read for the first time (in capture order),
        for the detector that compares exchanges with the ones before them."""
        findings = detect(a, self.thresholds)
        if new:
            duplicate = self._duplicates.observe(a)
            if duplicate is not None:
                self._duplicate_messages[a.id] = duplicate.message
        message = self._duplicate_messages.get(a.id)
        if message is not None:
            findings.append(Finding("duplicate-request", "warning", a.id, message))
        return findings

    # -- reading (for the API) -------------------------------------------------------------------

    async def wait_changed(self, version: int, timeout: float) -> None:
        """Return once the table's version is past ``version``, or after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while self.table.version <= version:
                await self._changed.wait()

    async def query(self, query: Query) -> Page:
        version, rows = self.table.snapshot()
        words = query.words

        def run() -> Page:
            hits = self.search.search(words) if words else None
            ordered = self.table.ordered(version, rows, query.sort, query.descending)
            return select(ordered, query, hits, ordered=True)

        return await trio.to_thread.run_sync(run)

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.table.version,
            "exchanges": len(self.table),
            "in_flight": self.follower.in_flight,
            "caught_up": self.caught_up,
            "bytes_read": self.bytes_read,
            "segments": len(self.follower.segments),
            "targets": self.targets,
            "damage": [str(d) for d in self.damage[-10:]],
            "facets": self.table.facets(),
            "thresholds": dataclasses.asdict(self.thresholds),
        }

    def _records(self, row: Row) -> tuple[Header | None, list[Record]]:
        return self.follower.fetch_records(row.id, unpack_locations(row.locations))

    def _allowance(self, row: Row) -> EventAllowance:
        return self.follower.allowance_of(unpack_locations(row.locations))

    def _exchange(self, row: Row) -> Exchange | None:
        return self.follower.fetch(row.id, unpack_locations(row.locations))

    async def detail(self, row: Row) -> dict[str, Any] | None:
        def build() -> dict[str, Any] | None:
            exchange = self._exchange(row)
            if exchange is None:
                return None
            a = analyze_exchange(exchange, self._allowance(row))
            header = self.follower.header_of(unpack_locations(row.locations))
            redaction = dict(header.redaction) if header is not None else None
            findings = self._findings(a) if exchange.complete else []
            return detail(a, findings, self.thresholds, live=row.live, redaction=redaction)

        return await trio.to_thread.run_sync(build)

    async def raw(self, row: Row, part: str) -> bytes | None:
        """The exact stored bytes of one side (``request``, ``upstream``, ``response``) or a
        payload (``request-body``, ``response-body``)."""

        def read() -> bytes | None:
            exchange = self._exchange(row)
            if exchange is None:
                return None
            if part == "request":
                return exchange.request_bytes()
            if part == "upstream":
                return exchange.upstream_request_bytes()
            if part == "response":
                return exchange.response_bytes()
            return exchange.request_body if part == "request-body" else exchange.response_body

        return await trio.to_thread.run_sync(read)

    async def har(self, row: Row) -> str | None:
        def build() -> str | None:
            exchange = self._exchange(row)
            if exchange is None:
                return None
            return har_document(analyze_exchange(exchange, self._allowance(row)))

        return await trio.to_thread.run_sync(build)

    async def capture_file(self, row: Row) -> bytes | None:
        """The exchange as a capture file of its own."""

        def build() -> bytes | None:
            header, records = self._records(row)
            if header is None or not records:
                return None
            return one_exchange_capture(header, records)

        return await trio.to_thread.run_sync(build)
