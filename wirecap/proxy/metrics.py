"""The proxy's Prometheus series, in a registry of its own (several proxies may share a process).

Two kinds of figures. What each exchange adds (requests, bytes, time to first byte, duration,
upstream errors) is counted by :meth:`ProxyMetrics.observe` once the exchange has ended: a few
counter increments and histogram observations on label children looked up in one dict, so the
relay's hot path pays nothing more. What the proxy and its capture writer hold at any moment
(exchanges in flight, records written, dropped and lost, the writer's backlog, whether capture
stopped) is read only when Prometheus scrapes, by :class:`_StateCollector`.

Every label takes a bounded set of values: routes come from the config, a method outside the
standard ones is ``OTHER``, a status is three digits (h11 checks) or ``none``, outcomes and error
kinds are the relay's own names. So a client cannot grow the registry without bound.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from wirecap.proxy.exchange import ExchangeState
    from wirecap.proxy.server import ProxyServer

#: Methods counted by name; any other is ``OTHER`` (a client chooses the method).
METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
#: The ``route`` label of a request that matched no route (or could not be parsed).
NO_ROUTE: Final = "none"
#: Seconds: LLM answers take from milliseconds (a cached or proxy-made answer) to minutes.
LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def is_upstream_error(outcome: str, kind: str | None) -> bool:
    """Whether an exchange failed by the upstream's doing (unreachable, timed out, broke or
    answered malformed HTTP) rather than the client's or the proxy's shutdown."""
    return (
        outcome in ("upstream_error", "timeout")
        and kind is not None
        and kind.startswith("upstream")
    )


@dataclasses.dataclass(slots=True, frozen=True)
class _RouteSeries:
    """The label children of one route, looked up once."""

    request_bytes: Counter
    response_bytes: Counter
    ttfb: Histogram
    duration: Histogram


class ProxyMetrics:
    """The series of one proxy. :meth:`observe` is called at the end of every exchange;
    :meth:`render` gives the Prometheus text exposition."""

    def __init__(self, server: ProxyServer) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = Counter(
            "wirecap_proxy_requests",
            "Exchanges that ended, by route, method, status (none: no answer) and outcome.",
            ["route", "method", "status", "outcome"],
            registry=registry,
        )
        self._request_bytes = Counter(
            "wirecap_proxy_request_bytes",
            "Request body bytes received from clients.",
            ["route"],
            registry=registry,
        )
        self._response_bytes = Counter(
            "wirecap_proxy_response_bytes",
            "Response body bytes received from upstreams (or made by the proxy).",
            ["route"],
            registry=registry,
        )
        self._ttfb = Histogram(
            "wirecap_proxy_time_to_first_byte_seconds",
            "From the first byte of the request head to the response head.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._duration = Histogram(
            "wirecap_proxy_duration_seconds",
            "From the first byte of the request head to the end of the exchange.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._upstream_errors = Counter(
            "wirecap_proxy_upstream_errors",
            "Exchanges the upstream failed, by route and kind (upstream_unreachable, "
            "upstream_timeout, upstream_error).",
            ["route", "kind"],
            registry=registry,
        )
        registry.register(_StateCollector(server))
        self._routes: dict[str | None, _RouteSeries] = {}
        self._counts: dict[tuple[str | None, str, int | None, str], Counter] = {}

    def observe(self, ex: ExchangeState, duration_ns: int) -> None:
        """Count one finished exchange (its final state, and how long it took)."""
        series = self._routes.get(ex.route)
        if series is None:
            series = self._route_series(ex.route)
        key = (ex.route, method_label(ex.method), ex.status, ex.outcome)
        count = self._counts.get(key)
        if count is None:
            count = self._count_child(key)
        count.inc()
        if ex.req_bytes:
            series.request_bytes.inc(ex.req_bytes)
        if ex.res_bytes:
            series.response_bytes.inc(ex.res_bytes)
        if ex.ttfb_ns is not None:
            series.ttfb.observe(ex.ttfb_ns / 1e9)
        series.duration.observe(duration_ns / 1e9)
        if ex.outcome != "ok" and is_upstream_error(ex.outcome, ex.kind):
            self._upstream_errors.labels(ex.route or NO_ROUTE, ex.kind).inc()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Every series, and its content type, in the format a scraper's ``Accept`` header asks
        for: the Prometheus text format (version 0.0.4) unless it asks for OpenMetrics."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def _route_series(self, route: str | None) -> _RouteSeries:
        label = route or NO_ROUTE
        series = _RouteSeries(
            request_bytes=self._request_bytes.labels(label),
            response_bytes=self._response_bytes.labels(label),
            ttfb=self._ttfb.labels(label),
            duration=self._duration.labels(label),
        )
        self._routes[route] = series
        return series

    def _count_child(self, key: tuple[str | None, str, int | None, str]) -> Counter:
        route, method, status, outcome = key
        child = self._requests.labels(
            route or NO_ROUTE,
            method,
            "none" if status is None else str(status),
            outcome,
        )
        self._counts[key] = child
        return child


class _StateCollector(Collector):
    """What the proxy and its capture writer hold now, read at scrape time."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        stats = self.server.stats
        yield GaugeMetricFamily(
            "wirecap_proxy_in_flight", "Exchanges in progress.", value=stats.active
        )
        yield CounterMetricFamily(
            "wirecap_proxy_connections", "Client connections accepted.", value=stats.connections
        )
        writer = self.server.writer
        yield GaugeMetricFamily(
            "wirecap_capture_enabled", "1 when the proxy captures.", value=int(writer is not None)
        )
        if writer is None:
            return
        capture = writer.statistics()
        for name, value, text in (
            ("records_written", capture.records_written, "Capture records written to disk."),
            ("records_dropped", capture.records_dropped, "Records refused under --on-full drop."),
            ("records_lost", capture.records_lost, "Records not written because capture failed."),
            ("bytes_written", capture.bytes_written, "Compressed bytes written to capture files."),
        ):
            yield CounterMetricFamily(f"wirecap_capture_{name}", text, value=value)
        yield GaugeMetricFamily(
            "wirecap_capture_backlog_bytes",
            "Record bytes waiting for the capture writer.",
            value=capture.queued_bytes,
        )
        yield GaugeMetricFamily(
            "wirecap_capture_stopped",
            "1 once capture has stopped (a write error or the writer process died).",
            value=int(capture.failed is not None),
        )
