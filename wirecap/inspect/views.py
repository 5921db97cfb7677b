"""Text views: the exchange table, one exchange in detail, and findings grouped by severity."""

from __future__ import annotations

import codecs
import heapq
import json
import time
from typing import TYPE_CHECKING, Any, Final

from wirecap.inspect.detectors import SEVERITY_RANK, Finding
from wirecap.inspect.paint import Paint, plain, status_role
from wirecap.inspect.session import session_lines
from wirecap.inspect.words import plural

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from wirecap.capture.bodies import Timeline
    from wirecap.capture.records import ExchangeNote
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


def _ms(ms: float | None) -> str:
    return _dur(None if ms is None else round(ms * 1e6))


def table_lines(rows: Iterable[Mapping[str, Any]], paint: Paint = plain) -> Iterator[str]:
    """The exchange table from JSON rows (:meth:`Analyzed.row`): a header, then one line per
    exchange; the status painted by class and an outcome other than ``ok`` as an error."""
    yield TABLE_HEADER
    for row in rows:
        when = "-"
        if row["start_ns"] is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["start_ns"] / 1e9))
        model = (row["model"] or "-")[:24]
        status = paint(f"{_num(row['status']):>6}", status_role(row["status"]))
        outcome = f"{row['outcome']:<14}"
        if row["outcome"] != "ok":
            outcome = paint(outcome, "error")
        size = f"{_size(row['request_bytes'])}/{_size(row['response_bytes'])}"
        yield (
            f"{when:<19} {row['id']:<12} {row['method'] or '-':<6} {status} {model:<24} "
            f"{_ms(row['duration_ms']):>9} {_ms(row['ttft_ms']):>8} "
            f"{_num(row['input_tokens']):>7} {_num(row['output_tokens']):>7} "
            f"{size:>13} {outcome} {row['path'] or '-'}"
        )


def is_binary(body: bytes, *, cut: bool = False) -> bool:
    """Whether ``body`` would garble a terminal: not UTF-8, or holding NUL bytes. With ``cut``,
    ``body`` is the start of a longer body and may end inside a character."""
    if b"\x00" in body:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(body, final=not cut)
    except UnicodeDecodeError:
        return True
    return False


#: A body up to this size is shown pretty-printed (JSON indented); a larger one by its start only.
PRETTY_MAX: Final = 1024 * 1024
#: Characters of a body or an answer shown before "use --raw".
SHOWN_CHARACTERS: Final = 20000


def _pretty_body(body: bytes, side: str, limit: int = SHOWN_CHARACTERS) -> str:
    if not body:
        return "(empty)"
    if len(body) > PRETTY_MAX:
        return _body_start(body[: 4 * limit], len(body), side, limit)
    if is_binary(body):
        return f"(binary, {plural(len(body), 'byte')}, use --raw {side})"
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = body.decode("utf-8")
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters; use --raw {side})"
    return text


def _body_start(start: bytes, size: int, side: str, limit: int = SHOWN_CHARACTERS) -> str:
    """A large body shown by its first ``limit`` characters (``start``: its first bytes)."""
    if is_binary(start, cut=True):
        return f"(binary, {plural(size, 'byte')}, use --raw {side})"
    text = codecs.getincrementaldecoder("utf-8")().decode(start)[:limit]
    rest = size - len(text.encode())
    return text + f"\n... ({plural(rest, 'more byte')} of {plural(size, 'byte')}; use --raw {side})"


def _response_body_lines(a: Analyzed) -> Iterator[str]:
    chunks = a.response_chunks
    yield f"--- response body ({plural(chunks.size, 'byte')})"
    if chunks.size > PRETTY_MAX:
        text = _body_start(chunks.head(4 * SHOWN_CHARACTERS), chunks.size, "response")
    else:
        text = _pretty_body(chunks.join(), "response")
    yield from text.splitlines()


def detail_lines(a: Analyzed, *, full: bool = False, paint: Paint = plain) -> Iterator[str]:
    """One exchange in full: heads, the pretty request body, the reassembled answer, the timeline.

    Binary bodies are named, not printed; a large body or answer is cut after its first
    :data:`SHOWN_CHARACTERS` characters; a long timeline is summarised unless ``full``."""
    ex = a.exchange
    f = a.facts
    yield f"exchange {ex.id}  {ex.method} {ex.target}  ->  {ex.upstream_url or '(no route)'}"
    outcome = a.outcome if a.outcome == "ok" else paint(a.outcome, "error")
    yield f"status {paint(_num(ex.status), status_role(ex.status))}  outcome {outcome}" + (
        f"  ({a.error})" if a.error else ""
    )
    if ex.wall_ns is not None:
        yield f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ex.wall_ns / 1e9))}  duration {_dur(ex.duration_ns)}  ttfb {_dur(ex.ttfb_ns)}  ttft {_dur(f.ttft_ns)}"
    yield from notes_lines(ex.notes)
    yield from _head_lines(a)
    if a.session is not None:  # a WebSocket session: its messages instead of bodies
        if f.api != "websocket":
            yield from _answer_lines(a)
        yield from session_lines(a.session, full=full)
        return
    yield f"--- request body ({plural(len(a.request_body), 'byte')})"
    yield from _pretty_body(a.request_body, "request").splitlines()
    if f.api != "http":
        yield from _answer_lines(a)
    else:
        yield from _response_body_lines(a)
    if a.decode_error:
        yield f"(content coding: {a.decode_error})"
    yield from timeline_lines(ex.timeline, full=full)


def notes_lines(notes: Iterable[ExchangeNote]) -> Iterator[str]:
    """The "notes" block: what the tool that made the exchange says about it, one line each
    (where an import came from and what in it is approximate; which fault was injected)."""
    lines = [_note_line(n) for n in notes]
    if lines:
        yield "--- notes"
        yield from lines


def _note_line(note: ExchangeNote) -> str:
    detail = dict(note.detail)
    if note.kind == "import":
        where = f"import from {detail.pop('source', '?')}: {detail.pop('file', '?')}"
        where += f", entry {detail.pop('entry', '?')}"
        approximate = detail.pop("approximate", None) or []
        if approximate:
            where += f"; approximate: {', '.join(str(a) for a in approximate)}"
        rest = detail
    elif note.kind == "fault":
        where = f"fault {detail.pop('kind', '?')}"
        spec = detail.pop("spec", None)
        if spec:
            where += f" (--fault {spec})"
        rest = detail
    else:
        where, rest = note.kind, detail
    if rest:
        where += ": " + ", ".join(f"{k}={json.dumps(v)}" for k, v in rest.items())
    return where


def _head_lines(a: Analyzed) -> Iterator[str]:
    ex = a.exchange
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


def _answer_lines(a: Analyzed) -> Iterator[str]:
    f = a.facts
    yield f"--- answer ({f.api}{', streamed' if f.streamed else ''})"
    yield f"model: {f.model_returned or '-'} (asked for {f.model_requested or '-'})"
    yield f"finish reason: {f.finish_reason or '-'}"
    if f.usage:
        yield f"usage: input {_num(f.usage.input)}, output {_num(f.usage.output)}, cached {_num(f.usage.cached)}, total {_num(f.usage.total)}"
    if f.tokens_per_second:
        yield f"speed: {f.tokens_per_second:.1f} tokens/s"
    if f.terminated is False:
        yield "stream: ENDED WITHOUT ITS TERMINATOR"
    if f.analysis_stopped:
        yield f"analysis: {f.analysis_stopped}"
    if f.api_error:
        yield f"error: {json.dumps(f.api_error)[:500]}"
    yield "text:"
    yield from (_cut(f.text) or "(none)").splitlines() or [""]
    for call in f.tool_calls:
        yield f"tool call {call.name} ({call.id or '-'}): {_cut(call.arguments)}"


def _cut(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters; use --raw response)"


#: A timeline longer than this is summarised: its first and last chunks and its largest gaps.
TIMELINE_SUMMARY_OVER: Final = 40
TIMELINE_ENDS: Final = 10  # chunks shown at each end of a summarised timeline
TIMELINE_GAPS: Final = 5  # largest gaps listed


def timeline_lines(chunks: Timeline, *, full: bool = False) -> Iterator[str]:
    """The body chunks with their arrival times and the gap before each; past
    :data:`TIMELINE_SUMMARY_OVER` chunks (unless ``full``), the first and last
    :data:`TIMELINE_ENDS`, then the :data:`TIMELINE_GAPS` largest gaps."""
    count = len(chunks)

    def gap(i: int) -> int:
        return chunks[i].ns - (chunks[i - 1].ns if i else 0)

    def line(i: int) -> str:
        c = chunks[i]
        return f"{c.ns / 1e6:10.3f} ms  +{gap(i) / 1e6:8.3f}  {c.dir}  {c.size:7d} B  #{i + 1}"

    if full or count <= TIMELINE_SUMMARY_OVER:
        yield f"--- timeline ({plural(count, 'body chunk')})"
        yield from (line(i) for i in range(count))
        return
    hidden = count - 2 * TIMELINE_ENDS
    yield (
        f"--- timeline ({plural(count, 'body chunk')}: the first and last {TIMELINE_ENDS}, "
        f"then the largest gaps; --full for all)"
    )
    yield from (line(i) for i in range(TIMELINE_ENDS))
    yield f"   ... {plural(hidden, 'chunk')} not shown ..."
    yield from (line(i) for i in range(count - TIMELINE_ENDS, count))
    yield "--- largest gaps between chunks"
    largest = heapq.nlargest(TIMELINE_GAPS, range(count), key=gap)
    yield from (line(i) for i in sorted(largest))


_SEVERITY_ROLE: Final = {"error": "error", "warning": "warning", "info": "info"}


def findings_lines(findings: list[Finding], paint: Paint = plain) -> Iterator[str]:
    """Findings grouped by severity, most severe first, with a count line."""
    if not findings:
        yield "no issues found"
        return
    for severity in sorted(SEVERITY_RANK, key=SEVERITY_RANK.__getitem__, reverse=True):
        group = [f for f in findings if f.severity == severity]
        if not group:
            continue
        role = _SEVERITY_ROLE.get(severity, "info")
        yield paint(f"{severity.upper()} ({len(group)})", role)
        for f in group:
            yield f"  {f.id}  {paint(f'{f.code:<24}', role)} {f.message}"
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    yield (
        f"{plural(len(findings), 'finding')}: {plural(counts['error'], 'error')}, "
        f"{plural(counts['warning'], 'warning')}, {counts['info']} info"
    )
