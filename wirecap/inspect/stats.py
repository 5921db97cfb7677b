"""Per route and model: request counts, error rate, tokens, TTFT and duration percentiles, bytes."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclasses.dataclass(slots=True)
class Group:
    route: str | None
    model: str | None
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    ttft_ms: list[float] = dataclasses.field(default_factory=list)
    duration_ms: list[float] = dataclasses.field(default_factory=list)

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one exchange, from its JSON row (:meth:`Analyzed.row`)."""
        self.requests += 1
        status = row["status"]
        if row["outcome"] != "ok" or (status is not None and status >= 400):
            self.errors += 1
        self.input_tokens += row["input_tokens"] or 0
        self.output_tokens += row["output_tokens"] or 0
        self.request_bytes += row["request_bytes"]
        self.response_bytes += row["response_bytes"]
        if row["ttft_ms"] is not None:
            self.ttft_ms.append(row["ttft_ms"])
        if row["duration_ms"] is not None:
            self.duration_ms.append(row["duration_ms"])

    def to_json(self) -> dict[str, Any]:
        ttft, duration = sorted(self.ttft_ms), sorted(self.duration_ms)

        def pct(values: list[float]) -> dict[str, float | None]:
            return {f"p{p}": _round(percentile(values, p)) for p in (50, 95, 99)}

        return {
            "route": self.route,
            "model": self.model,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else 0.0,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "ttft_ms": pct(ttft),
            "duration_ms": pct(duration),
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def compute(rows: Iterable[Mapping[str, Any]]) -> list[Group]:
    """One group per (route, model), in order of first appearance, from JSON rows.

    Memory holds two floats per exchange for the percentiles (about 16 MB per million exchanges).
    """
    groups: dict[tuple[str | None, str | None], Group] = {}
    for row in rows:
        key = (row["route"], row["model"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(*key)
        group.add(row)
    return list(groups.values())


def table_lines(groups: list[Group]) -> Iterator[str]:
    yield (
        f"{'route':<14} {'model':<28} {'reqs':>6} {'err%':>6} {'in tok':>9} {'out tok':>9} "
        f"{'ttft p50/p95/p99 ms':>22} {'duration p50/p95/p99 ms':>25} {'bytes in/out':>17}"
    )
    for g in groups:
        row = g.to_json()

        def trio_(d: dict[str, float | None]) -> str:
            return "/".join("-" if v is None else f"{v:.0f}" for v in d.values())

        yield (
            f"{(g.route or '-')[:14]:<14} {(g.model or '-')[:28]:<28} {g.requests:>6} "
            f"{100 * row['error_rate']:>5.1f}% {g.input_tokens:>9} {g.output_tokens:>9} "
            f"{trio_(row['ttft_ms']):>22} {trio_(row['duration_ms']):>25} "
            f"{str(g.request_bytes) + '/' + str(g.response_bytes):>17}"
        )
