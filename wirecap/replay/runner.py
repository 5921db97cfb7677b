"""``wirecap replay``: send recorded requests to a target, compare, and report (trio).

Exchanges stream from the capture in recorded order through a channel to ``concurrency`` workers, so
memory stays bounded. With ``pace``, each request leaves at its recorded offset from the first one,
divided by the speed factor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import trio

from wirecap.capture import BodyChunk, ExchangeEnd, RequestReceived, ResponseHead
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.capture.writer import CaptureWriter
from wirecap.inspect.paint import Paint, plain
from wirecap.inspect.select import analyzed_exchanges
from wirecap.inspect.words import plural
from wirecap.proxy.errors import resolver_failure_in
from wirecap.proxy.upstream import (
    ConnectionPool,
    UpstreamConnectError,
    UpstreamTimeout,
)
from wirecap.replay.client import Response, build_request, client_pool, send
from wirecap.replay.compare import WHOLE_BODY_MAX, Mode, Verdict, compare
from wirecap.replay.wsreplay import replay_session

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from wirecap.capture import Capture
    from wirecap.inspect.analysis import Analyzed
    from wirecap.inspect.select import Filters
    from wirecap.proxy.config import Upstream


class TargetUnreachable(Exception):
    """The replay target cannot be connected to (exit code 2)."""


@dataclasses.dataclass(slots=True)
class Result:
    id: str
    method: str
    path: str
    recorded_status: int | None
    replayed_status: int | None
    verdict: Verdict
    duration_ns: int
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path} [{self.id}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "verdict": "PASS" if self.verdict.passed else "FAIL",
            "recorded_status": self.recorded_status,
            "replayed_status": self.replayed_status,
            "summary": self.verdict.summary,
            "diff": self.verdict.diff,
            "duration_ms": round(self.duration_ns / 1e6, 3),
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOptions:
    target: Upstream
    mode: Mode = "json"
    ignore: Sequence[list[str | int | None]] = ()
    concurrency: int = 1
    pace: float | None = None  # None: as fast as possible; 1.0: recorded gaps; 2.0: twice as fast
    via_proxy: bool = False
    headers: Sequence[tuple[str, str]] = ()
    read_timeout: float = 300.0
    connect_timeout: float = 10.0
    ca_file: Path | None = None


async def replay(
    capture: Capture,
    options: ReplayOptions,
    filters: Filters | None = None,
    *,
    out: Path | None = None,
) -> list[Result]:
    """Replay every selected exchange; results come back in recorded order."""
    from wirecap.proxy.upstream import make_ssl_context

    pool = client_pool(
        connect_timeout=options.connect_timeout,
        idle_timeout=60.0,
        max_idle=max(options.concurrency, 1),
        ssl_context=make_ssl_context(options.ca_file) if options.ca_file else None,
    )
    writer = _writer(out, options) if out is not None else None
    results: dict[int, Result] = {}
    unreachable: list[str] = []
    try:
        async with trio.open_nursery() as outer:
            if writer is not None:
                await outer.start(writer.run)
            try:
                async with trio.open_nursery() as workers:
                    send_jobs, receive_jobs = trio.open_memory_channel[tuple[int, "Analyzed"]](
                        options.concurrency
                    )

                    async def worker(jobs: trio.MemoryReceiveChannel[tuple[int, Analyzed]]) -> None:
                        async with jobs:
                            async for position, analyzed in jobs:
                                try:
                                    results[position] = await _replay_one(
                                        pool, analyzed, options, writer
                                    )
                                except (UpstreamConnectError, UpstreamTimeout) as exc:
                                    unreachable.append(_unreachable(exc, options.target))
                                    workers.cancel_scope.cancel()
                                    return

                    async with receive_jobs:
                        for _ in range(max(options.concurrency, 1)):
                            workers.start_soon(worker, receive_jobs.clone())
                    async with send_jobs:
                        await _feed(capture, filters, options, send_jobs)
            finally:
                if writer is not None:
                    with trio.CancelScope(shield=True):
                        await writer.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()
    if unreachable:
        raise TargetUnreachable(unreachable[0])
    return [results[i] for i in sorted(results)]


def _unreachable(exc: Exception, target: Upstream) -> str:
    """Why the target cannot be reached, a host name that does not resolve said in words."""
    resolver = resolver_failure_in(exc)
    if resolver is None:
        return str(exc)
    return f"cannot connect to {target.host}:{target.port}: {resolver}"


async def _feed(
    capture: Capture,
    filters: Filters | None,
    options: ReplayOptions,
    jobs: trio.MemorySendChannel[tuple[int, Analyzed]],
) -> None:
    """Hand exchanges to the workers in recorded order, at their recorded pace when asked."""
    start = trio.current_time()
    first_wall: int | None = None
    for position, analyzed in enumerate(analyzed_exchanges(capture, filters)):
        wall = analyzed.exchange.wall_ns
        if options.pace and wall is not None:
            first_wall = wall if first_wall is None else first_wall
            await trio.sleep_until(start + (wall - first_wall) / 1e9 / options.pace)
        await jobs.send((position, analyzed))


async def _replay_one(
    pool: ConnectionPool,
    analyzed: Analyzed,
    options: ReplayOptions,
    writer: CaptureWriter | None,
) -> Result:
    exchange = analyzed.exchange
    method, path = exchange.method or "-", exchange.target or "-"
    if analyzed.session is not None:  # a WebSocket session (its traffic is not recorded by --out)
        status, verdict, duration_ns, error = await replay_session(pool, exchange, options)
        return Result(
            exchange.id, method, path, exchange.status, status, verdict, duration_ns, error
        )
    request = build_request(
        exchange, options.target, via_proxy=options.via_proxy, extra_headers=options.headers
    )
    if request is None:
        return Result(
            exchange.id,
            method,
            path,
            exchange.status,
            None,
            Verdict(False, "", "no request recorded"),
            0,
            "no request recorded",
        )
    response = await send(
        pool,
        options.target,
        request,
        read_timeout=options.read_timeout,
        hold=WHOLE_BODY_MAX,
        keep_wire=writer is not None,
    )
    if writer is not None:
        await _record(writer, request.method, request.target, request.body, response, options)
    if response.error is not None:
        verdict = Verdict(False, "", response.error)
    else:
        verdict = compare(
            analyzed.input, response.as_input(request.method, path), options.mode, options.ignore
        )
    return Result(
        exchange.id,
        method,
        path,
        exchange.status,
        response.status,
        verdict,
        response.duration_ns,
        response.error,
    )


def _writer(out: Path, options: ReplayOptions) -> CaptureWriter:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)

    header = SegmentHeader(
        {"enabled": False, "headers": [], "body_patterns": [], "note": "replay traffic"}
    )
    return CaptureWriter(SegmentSink(out, header, prefix="replay"))


async def _record(
    writer: CaptureWriter,
    method: str,
    target: str,
    body: bytes,
    response: Response,
    options: ReplayOptions,
) -> None:
    x = os.urandom(6).hex()
    url = f"{options.target.scheme}://{options.target.host_header}{target}"
    await writer.submit(
        RequestReceived(
            x=x,
            wall_ns=response.started_ns,
            method=method,
            target=target,
            head=response.request_head,
            upstream_url=url,
        )
    )
    if body:
        await writer.submit(BodyChunk(x=x, dir="req", ns=0, data=body))
    if response.head:
        await writer.submit(
            ResponseHead(
                x=x, ns=response.ttfb_ns or 0, status=response.status or 0, head=response.head
            )
        )
    for ns, chunk in response.wire_chunks:
        await writer.submit(BodyChunk(x=x, dir="res", ns=ns, data=chunk))
    await writer.submit(
        ExchangeEnd(
            x=x,
            ns=response.duration_ns,
            outcome="ok" if response.error is None else "upstream_error",
            status=response.status,
            error=response.error,
            req_bytes=len(body),
            res_bytes=response.size,
            ttfb_ns=response.ttfb_ns,
        )
    )


# -- reports -----------------------------------------------------------------------------------------


def summary_line(results: Sequence[Result]) -> str:
    failed = sum(1 for r in results if not r.verdict.passed)
    return f"{plural(len(results), 'exchange')} replayed: {len(results) - failed} passed, {failed} failed"


def text_lines(results: Sequence[Result], paint: Paint = plain) -> list[str]:
    """PASS or FAIL per exchange (a failure with its first difference and diff), then a summary."""
    lines = []
    for r in results:
        status = f"{r.recorded_status}->{r.replayed_status}"
        if r.verdict.passed:
            lines.append(f"{paint('PASS', 'pass')} {r.name} {status}")
        else:
            lines.append(f"{paint('FAIL', 'fail')} {r.name} {status}: {r.verdict.summary}")
            if r.verdict.diff:
                lines.extend("    " + line for line in r.verdict.diff.splitlines())
    lines.append(summary_line(results))
    return lines


def junit_xml(results: Sequence[Result], suite: str = "wirecap replay") -> str:
    """JUnit XML: one testcase per exchange; failures carry the diff."""
    failures = sum(1 for r in results if not r.verdict.passed)
    total = sum(r.duration_ns for r in results) / 1e9
    root = ET.Element(
        "testsuites",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        time=f"{total:.3f}",
    )
    tsuite = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{total:.3f}",
    )
    for r in results:
        case = ET.SubElement(
            tsuite,
            "testcase",
            classname="wirecap.replay",
            name=r.name,
            time=f"{r.duration_ns / 1e9:.3f}",
        )
        if not r.verdict.passed:
            failure = ET.SubElement(
                case, "failure", message=r.verdict.summary or "differs", type="regression"
            )
            failure.text = r.verdict.diff or r.verdict.summary
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def json_report(results: Sequence[Result]) -> str:
    failed = sum(1 for r in results if not r.verdict.passed)
    return json.dumps(
        {
            "summary": {"total": len(results), "passed": len(results) - failed, "failed": failed},
            "exchanges": [r.to_json() for r in results],
        },
        indent=1,
    )


def parse_pace(text: str) -> float | None:
    """``none`` -> None (as fast as possible), ``recorded`` -> 1.0, ``x2`` -> 2.0 (twice as fast)."""
    value = text.strip().lower()
    if value == "none":
        return None
    if value == "recorded":
        return 1.0
    if value.startswith("x"):
        try:
            factor = float(value[1:])
        except ValueError:
            factor = math.nan
        if factor > 0:
            return factor
    raise ValueError(f"{text!r} is not a speed: use recorded, none or xN (x2 is twice as fast)")
