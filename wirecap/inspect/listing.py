"""One row per exchange, straight from the timing index (no body is decoded)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from wirecap.capture import Capture, IndexEntry


def iso_time(wall_ns: int | None) -> str | None:
    if wall_ns is None:
        return None
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def entry_row(entry: IndexEntry) -> dict[str, Any]:
    """The JSON row ``wirecap inspect --json`` prints for one exchange."""
    return {
        "id": entry.x,
        "start": iso_time(entry.wall_ns),
        "start_ns": entry.wall_ns,
        "method": entry.method,
        "path": entry.target,
        "route": entry.route,
        "upstream_url": entry.upstream_url,
        "status": entry.status,
        "outcome": entry.outcome or "incomplete",
        "duration_ms": _ms(entry.dur_ns),
        "ttfb_ms": _ms(entry.ttfb_ns),
        "request_bytes": entry.req_bytes,
        "response_bytes": entry.res_bytes,
    }


def rows(capture: Capture) -> Iterator[dict[str, Any]]:
    """Rows for every exchange of ``capture``, in file order; exchanges split over segments merge."""
    pending: dict[str, IndexEntry] = {}
    order: list[str] = []
    for entry in capture.index_entries():
        known = pending.get(entry.x)
        if known is None:
            pending[entry.x] = entry
            order.append(entry.x)
            continue
        for field in ("wall_ns", "method", "target", "route", "upstream_url", "status", "ttfb_ns"):
            if getattr(known, field) is None:
                setattr(known, field, getattr(entry, field))
        if entry.outcome is not None:
            known.outcome, known.dur_ns = entry.outcome, entry.dur_ns
            known.req_bytes, known.res_bytes = entry.req_bytes, entry.res_bytes
    for x in order:
        yield entry_row(pending[x])


def format_table(row_iter: Iterator[dict[str, Any]]) -> Iterator[str]:
    """A plain text table, one line per exchange."""
    yield f"{'time':<26} {'id':<12} {'method':<6} {'status':>6} {'duration':>10} {'ttfb':>9} {'req':>8} {'res':>9} {'outcome':<14} path"
    for r in row_iter:
        duration = "-" if r["duration_ms"] is None else f"{r['duration_ms']:.1f}ms"
        ttfb = "-" if r["ttfb_ms"] is None else f"{r['ttfb_ms']:.1f}ms"
        yield (
            f"{r['start'] or '-':<26} {r['id']:<12} {r['method'] or '-':<6} {r['status'] or '-':>6} "
            f"{duration:>10} {ttfb:>9} {r['request_bytes']:>8} {r['response_bytes']:>9} "
            f"{r['outcome']:<14} {r['path'] or '-'}"
        )
