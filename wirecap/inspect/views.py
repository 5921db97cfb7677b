"""Text views: the exchange table, one exchange in detail, and findings grouped by severity."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from wirecap.inspect.detectors import SEVERITY_RANK, Finding

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from wirecap.inspect.analysis import Analyzed


def _dur(ns: int | None) -> str:
    if ns is None:
        return "-"
    return f"{ns / 1e6:.0f}ms" if ns < 10_000_000_000 else f"{ns / 1e9:.1f}s"


def _num(n: int | None) -> str:
    return "-" if n is None else str(n)


def _size(n: int) -> str:
    if n < 10_000:
        return str(n)
    if n < 10_000_000:
        return f"{n / 1024:.0f}K"
    return f"{n / 2**20:.0f}M"


TABLE_HEADER = (
    f"{'time':<19} {'id':<12} {'method':<6} {'status':>6} {'model':<24} {'duration':>9} {'ttft':>8} "
    f"{'in':>7} {'out':>7} {'bytes':>13} {'outcome':<14} path"
)


def table_lines(rows: Iterable[Analyzed]) -> Iterator[str]:
    yield TABLE_HEADER
    for a in rows:
        ex = a.exchange
        when = "-"
        if ex.wall_ns is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ex.wall_ns / 1e9))
        usage = a.facts.usage
        req = ex.end.req_bytes if ex.end else len(ex.request_body)
        res = ex.end.res_bytes if ex.end else len(ex.response_body)
        model = (a.model or "-")[:24]
        yield (
            f"{when:<19} {ex.id:<12} {ex.method or '-':<6} {_num(ex.status):>6} {model:<24} "
            f"{_dur(ex.duration_ns):>9} {_dur(a.facts.ttft_ns):>8} "
            f"{_num(usage.input if usage else None):>7} {_num(usage.output if usage else None):>7} "
            f"{_size(req) + '/' + _size(res):>13} {ex.outcome:<14} {ex.target or '-'}"
        )


def _pretty_body(body: bytes, limit: int = 20000) -> str:
    if not body:
        return "(empty)"
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters; use --raw)"
    return text


def detail_lines(a: Analyzed) -> Iterator[str]:
    """One exchange in full: heads, the pretty request body, the reassembled answer, the timeline."""
    ex = a.exchange
    f = a.facts
    yield f"exchange {ex.id}  {ex.method} {ex.target}  ->  {ex.upstream_url or '(no route)'}"
    yield f"status {_num(ex.status)}  outcome {ex.outcome}" + (
        f"  ({ex.end.error})" if ex.end and ex.end.error else ""
    )
    if ex.wall_ns is not None:
        yield f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ex.wall_ns / 1e9))}  duration {_dur(ex.duration_ns)}  ttfb {_dur(ex.ttfb_ns)}  ttft {_dur(f.ttft_ns)}"
    for label, head in (
        ("request as received", ex.request.head if ex.request else None),
        ("request as sent upstream", ex.upstream.head if ex.upstream else None),
        *(("informational response", h.head) for h in ex.informational),
        (
            "response" + (" (made by wirecap)" if a.by_proxy else ""),
            ex.response.head if ex.response else None,
        ),
    ):
        if head is not None:
            yield f"--- {label}"
            yield from head.decode("latin-1").rstrip("\r\n").split("\r\n")
    yield f"--- request body ({len(a.request_body)} bytes)"
    yield from _pretty_body(a.request_body).splitlines()
    if f.api != "http":
        yield f"--- answer ({f.api}{', streamed' if f.streamed else ''})"
        yield f"model: {f.model_returned or '-'} (asked for {f.model_requested or '-'})"
        yield f"finish reason: {f.finish_reason or '-'}"
        if f.usage:
            yield f"usage: input {_num(f.usage.input)}, output {_num(f.usage.output)}, cached {_num(f.usage.cached)}, total {_num(f.usage.total)}"
        if f.tokens_per_second:
            yield f"speed: {f.tokens_per_second:.1f} tokens/s"
        if f.terminated is False:
            yield "stream: ENDED WITHOUT ITS TERMINATOR"
        if f.api_error:
            yield f"error: {json.dumps(f.api_error)[:500]}"
        yield "text:"
        yield from (f.text or "(none)").splitlines() or [""]
        for call in f.tool_calls:
            yield f"tool call {call.name} ({call.id or '-'}): {call.arguments}"
    else:
        body = b"".join(c for _, c in a.response_chunks)
        yield f"--- response body ({len(body)} bytes)"
        yield from _pretty_body(body).splitlines()
    if a.decode_error:
        yield f"(content coding: {a.decode_error})"
    chunks = ex.chunks
    yield f"--- timeline ({len(chunks)} body chunks)"
    previous = 0
    for c in chunks[:200]:
        yield f"{c.ns / 1e6:10.3f} ms  +{(c.ns - previous) / 1e6:8.3f}  {c.dir}  {len(c.data):7d} B"
        previous = c.ns
    if len(chunks) > 200:
        yield f"... {len(chunks) - 200} more chunks"


def findings_lines(findings: list[Finding]) -> Iterator[str]:
    """Findings grouped by severity, most severe first, with a count line."""
    if not findings:
        yield "no issues found"
        return
    for severity in sorted(SEVERITY_RANK, key=SEVERITY_RANK.__getitem__, reverse=True):
        group = [f for f in findings if f.severity == severity]
        if not group:
            continue
        yield f"{severity.upper()} ({len(group)})"
        for f in group:
            yield f"  {f.id}  {f.code:<24} {f.message}"
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    yield f"{len(findings)} findings: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info"
