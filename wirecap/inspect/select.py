"""Choosing exchanges: filters by route, status, model and time, and the stream of analyzed exchanges."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import itertools
import operator
import re
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar

from wirecap.inspect.analysis import Analyzed, analyze_exchange
from wirecap.llm import EventAllowance

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from wirecap.capture import Capture

T = TypeVar("T")
_STATUS: re.Pattern[str] = re.compile(r"^\s*(>=|<=|>|<|=|!=)?\s*(\d{3}|[1-5]xx)\s*$", re.IGNORECASE)
_RELATIVE: re.Pattern[str] = re.compile(r"^-?(\d+(?:\.\d+)?)\s*([smhd])$")


class FilterError(ValueError):
    """A filter the user wrote that does not parse."""


_OPS: dict[str, Callable[[int, int], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def status_matcher(spec: str) -> Callable[[int | None], bool]:
    """``200``, ``4xx``, ``>=500``, ``!=200``; several separated by commas match any of them."""
    tests: list[tuple[str, int, bool]] = []  # (operator, value, value is a class like 4xx)
    for part in spec.split(","):
        match = _STATUS.match(part)
        if not match:
            raise FilterError(f"bad status filter {part!r} (try 200, 4xx, >=500)")
        op, value = match.group(1) or "=", match.group(2).lower()
        is_class = value.endswith("xx")
        if is_class and op not in ("=", "!="):
            raise FilterError(f"use a number with {op}: {part!r}")
        tests.append((op, int(value[0]) if is_class else int(value), is_class))

    def matches(status: int | None) -> bool:
        if status is None:
            return False
        for op, value, is_class in tests:
            subject = status // 100 if is_class else status
            if _OPS[op](subject, value):
                return True
        return False

    return matches


def parse_time(text: str, now: float | None = None) -> int:
    """ISO 8601 (``2026-11-23T12:00``, zone optional: UTC) or relative (``30m``, ``2h``, ``1d`` ago),
    as ns since the epoch."""
    match = _RELATIVE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int(((now if now is not None else time.time()) - seconds) * 1e9)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"bad time {text!r} (try 2026-11-23T12:00:00Z or 2h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    route: str | None = None
    status: str | None = None
    model: str | None = None  # a glob (gpt-4o*) or a substring
    since_ns: int | None = None
    until_ns: int | None = None

    _status_test: Callable[[int | None], bool] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Parsed once (and a bad spec fails here, before any file is read).
        if self.status:
            object.__setattr__(self, "_status_test", status_matcher(self.status))

    def cheap_match(self, ex_wall_ns: int | None, route: str | None, status: int | None) -> bool:
        """The filters that need no body parsing (checked before the adapters run)."""
        if self.route is not None and (route or "").rstrip("/") != self.route.rstrip("/"):
            return False
        if self._status_test is not None and not self._status_test(status):
            return False
        if self.since_ns is not None and (ex_wall_ns is None or ex_wall_ns < self.since_ns):
            return False
        return not (
            self.until_ns is not None and (ex_wall_ns is None or ex_wall_ns > self.until_ns)
        )

    def model_match(self, a: Analyzed) -> bool:
        return self.model_names_match(a.facts.model_returned, a.facts.model_requested)

    def model_names_match(self, *models: str | None) -> bool:
        """Whether the model filter (a glob or a substring, any case) matches one of ``models``."""
        if self.model is None:
            return True
        pattern = self.model.lower()
        return any(
            fnmatch.fnmatchcase(m.lower(), pattern) or pattern in m.lower() for m in models if m
        )


def analyzed_exchanges(
    capture: Capture,
    filters: Filters | None = None,
    *,
    progress: bool | None = None,
    last: int | None = None,
    limit: int | None = None,
) -> Iterator[Analyzed]:
    """Exchanges of ``capture`` in start order, analyzed and filtered, streaming (bounded memory).

    ``limit`` stops after that many; ``last`` keeps only the last that many (read through the
    indexes when no model filter needs the bodies, so ``--last 5`` of a large capture reads five
    exchanges). With ``progress`` (default: when stderr is a terminal), a count is shown on stderr
    every second.
    """
    filters = filters or Filters()
    if last is not None and filters.model is None:
        return _last_through_index(capture, filters, last)
    return last_or_first(_scan(capture, filters, progress), last=last, limit=limit)


def last_or_first(found: Iterator[T], *, last: int | None, limit: int | None) -> Iterator[T]:
    """The last ``last`` of ``found`` (held in memory), or its first ``limit``, or all of it."""
    if last is not None:
        return iter(collections.deque(found, maxlen=last))
    return itertools.islice(found, limit) if limit is not None else found


def _scan(capture: Capture, filters: Filters, progress: bool | None) -> Iterator[Analyzed]:
    allowance = EventAllowance.for_files(capture.files)
    for exchange in with_progress(capture.exchanges(), progress):
        route = exchange.request.route if exchange.request else None
        if not filters.cheap_match(exchange.wall_ns, route, exchange.status):
            continue
        a = analyze_exchange(exchange, allowance)
        if filters.model_match(a):
            yield a


def with_progress(items: Iterable[T], progress: bool | None = None) -> Iterator[T]:
    """``items``, with a count of them on stderr every second (``progress``: default when stderr
    is a terminal) that is wiped at the end."""
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        yield from items
        return
    last = time.monotonic()
    count = 0
    for item in items:
        count += 1
        if time.monotonic() - last > 1.0:
            last = time.monotonic()
            print(f"\r{count} exchanges read...", end="", file=sys.stderr, flush=True)
        yield item
    if count:
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)


def _last_through_index(capture: Capture, filters: Filters, last: int) -> Iterator[Analyzed]:
    """The last ``last`` exchanges that pass the filters needing no body, found in the indexes and
    then read one by one."""
    ids: dict[str, None] = {}
    for f in capture.files:
        for entry in f.index().entries:
            if filters.cheap_match(entry.wall_ns, entry.route, entry.status):
                ids[entry.x] = None
    allowance = EventAllowance.for_files(capture.files)  # as in a scan
    for exchange_id in list(ids)[-last:] if last else []:
        exchange = capture.get(exchange_id)
        if exchange is not None:
            yield analyze_exchange(exchange, allowance)


class UnknownId(LookupError):
    """No exchange id is or starts with the one asked for, or several start with it."""


#: An ambiguous prefix lists at most this many of the ids it matches.
CANDIDATES_SHOWN: Final = 10


def resolve_id(capture: Capture, prefix: str) -> str:
    """The exchange id that is ``prefix``, or the only one that starts with it (from the indexes).

    Raises :class:`UnknownId` naming the candidates when the prefix is ambiguous."""
    matches: dict[str, None] = {}
    for f in capture.files:
        for x in f.index().ids():
            if x == prefix:
                return prefix
            if x.startswith(prefix):
                matches[x] = None
    if not matches and capture.get(prefix) is not None:
        return prefix  # an exchange whose index row is unusable, found by scanning
    if not matches:
        raise UnknownId(f"no exchange {prefix!r} in the capture")
    if len(matches) > 1:
        shown = list(matches)[:CANDIDATES_SHOWN]
        more = len(matches) - len(shown)
        raise UnknownId(
            f"{prefix!r} is the start of {len(matches)} exchange ids: {', '.join(shown)}"
            + (f" and {more} more" if more else "")
            + "; give more of the id"
        )
    return next(iter(matches))
