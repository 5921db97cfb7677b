"""The LLM-level Prometheus series, counted as the inspector analyses exchanges (off the proxy's
event loop): exchanges, tokens, time to first token and duration by model, findings by code.

Each exchange is counted once, when it ends (or, for a capture read from the start, when the
inspector reads it). Model names and routes come from the capture: past :data:`MAX_LABELS`
distinct values of each, the others are counted as ``other``, so that no capture can grow the
series without bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wirecap.ui.table import Row

__all__ = ["CONTENT_TYPE", "LLMMetrics"]

MAX_LABELS: Final = 100
#: Seconds: LLM latencies run from tens of milliseconds to minutes.
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class LLMMetrics:
    """A registry of its own (nothing global) with the series the inspector serves on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._models: set[str] = set()
        self._routes: set[str] = set()
        self.exchanges = Counter(
            "wirecap_llm_exchanges",
            "Exchanges that ended, by model, route and outcome.",
            ["model", "route", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "wirecap_llm_tokens",
            "Tokens reported in usage, by model and kind (input, output).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "wirecap_llm_ttft_seconds",
            "Time to first token, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "wirecap_llm_duration_seconds",
            "Duration of an exchange, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.findings = Counter(
            "wirecap_findings",
            "Findings of the issue detectors, by code and severity.",
            ["code", "severity"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "wirecap_ui_exchanges_in_flight",
            "Exchanges being written (seen without their end).",
            registry=self.registry,
        )
        self.indexed = Gauge(
            "wirecap_ui_exchanges_indexed",
            "Exchanges in the inspector's table.",
            registry=self.registry,
        )

    def _label(self, seen: set[str], name: str | None) -> str:
        """``name`` as a label value, while fewer than :data:`MAX_LABELS` are in use."""
        if not name:
            return "unknown"
        if name in seen:
            return name
        if len(seen) < MAX_LABELS:
            seen.add(name)
            return name
        return "other"

    def count(self, rows: Sequence[Row]) -> None:
        """Count exchanges that ended."""
        for row in rows:
            model = self._label(self._models, row.model)
            route = self._label(self._routes, row.route)
            self.exchanges.labels(model, route, row.outcome).inc()
            if row.input_tokens:
                self.tokens.labels(model, "input").inc(row.input_tokens)
            if row.output_tokens:
                self.tokens.labels(model, "output").inc(row.output_tokens)
            if row.ttft_ns is not None:
                self.ttft.labels(model).observe(row.ttft_ns / 1e9)
            if row.duration_ns is not None:
                self.duration.labels(model).observe(row.duration_ns / 1e9)
            for code, severity in row.findings:
                self.findings.labels(code, severity).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
