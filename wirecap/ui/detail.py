"""One exchange in full, as the page's detail view draws it. Sans-IO.

Everything captured is sent as data (strings and numbers in JSON) and the page puts it on screen as
text, never as markup. Heads are shown exactly (Latin-1, one character per byte); the raw view
shows bytes as text with escapes and as a hex dump, both bounded (the downloads have everything).
"""

from __future__ import annotations

import itertools
import json
import statistics
import unicodedata
from typing import TYPE_CHECKING, Any, Final

from wirecap.inspect.analysis import iso_time, ms
from wirecap.inspect.views import is_binary
from wirecap.ui.commands import commands
from wirecap.ui.conversation import arguments_json, conversation, thinking_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wirecap.capture import BodyChunk, Exchange
    from wirecap.inspect.analysis import Analyzed
    from wirecap.inspect.detectors import Finding, Thresholds

#: Text of a body shown at most; the downloads hold all of it.
BODY_SHOWN: Final = 1024 * 1024
#: Bytes shown as escaped text, and as a hex dump, in the raw view.
RAW_TEXT_SHOWN: Final = 256 * 1024
RAW_HEX_SHOWN: Final = 64 * 1024
#: Chunks drawn on the timeline at most (past it: the first and last, and the largest gaps).
TIMELINE_POINTS: Final = 4000
#: Gaps between response chunks listed on the timeline.
GAPS_LISTED: Final = 5

_ESCAPES: Final = {0x5C: "\\\\", 0x09: "\\t", 0x0D: "\\r", 0x0A: "\\n\n"}
#: Unicode categories shown escaped: controls, format characters, separators, private use,
#: unassigned.
_INVISIBLE: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Cs"})


def escaped_text(data: bytes) -> str:
    """``data`` as readable text that says every byte: UTF-8 shown as itself, ``\\r`` ``\\n``
    ``\\t`` and ``\\\\`` escaped (a line break follows each ``\\n``), a byte that is not UTF-8
    or an ASCII control byte as ``\\xNN``, and characters that draw nothing or reorder text
    (controls, format characters such as bidi overrides) as ``\\uNNNN``."""
    text = data.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0x20 <= code < 0x7F and code != 0x5C:
            out.append(ch)
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(ch) in _INVISIBLE:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def hex_dump(data: bytes) -> str:
    """The classic dump: offset, 16 bytes in hex, and those printable in ASCII."""
    lines = []
    for at in range(0, len(data), 16):
        row = data[at : at + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        shown = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{at:08x}  {hexes[:23]:<23}  {hexes[24:]:<23}  |{shown}|")
    return "\n".join(lines)


def raw_view(data: bytes) -> dict[str, Any]:
    return {
        "size": len(data),
        "text": escaped_text(data[:RAW_TEXT_SHOWN]),
        "text_cut": len(data) > RAW_TEXT_SHOWN,
        "hex": hex_dump(data[:RAW_HEX_SHOWN]),
        "hex_cut": len(data) > RAW_HEX_SHOWN,
    }


def body_view(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A body for reading: pretty JSON, or its text, or a note that it is binary."""
    view: dict[str, Any] = {"size": len(body), "content_type": content_type or ""}
    if not body:
        view["text"] = ""
        return view
    if is_binary(body):
        view["binary"] = True
        return view
    text = body.decode("utf-8")
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        view["json"] = True
    except ValueError:
        pass
    view["text"] = text[:BODY_SHOWN]
    view["cut"] = len(text) > BODY_SHOWN
    return view


def _heads(ex: Exchange) -> list[dict[str, str]]:
    heads = []
    if ex.request is not None:
        heads.append({"label": "request as received", "text": ex.request.head.decode("latin-1")})
    if ex.upstream is not None:
        heads.append(
            {"label": "request as sent upstream", "text": ex.upstream.head.decode("latin-1")}
        )
    for head in ex.responses:
        label = "informational response" if head.status < 200 else "response"
        if head.by == "proxy":
            label += " (made by wirecap)"
        heads.append({"label": label, "text": head.head.decode("latin-1")})
    return heads


def _answer(a: Analyzed) -> dict[str, Any]:
    f = a.facts
    return {
        "api": f.api,
        "streamed": f.streamed,
        "model": f.model_returned,
        "model_requested": f.model_requested,
        "text": f.text[:BODY_SHOWN],
        "thinking": thinking_of(a)[:BODY_SHOWN],
        "tool_calls": [
            {"id": c.id, "name": c.name, **arguments_json(c.arguments)} for c in f.tool_calls
        ],
        "finish_reason": f.finish_reason,
        "usage": f.usage.to_json() if f.usage else None,
        "tokens_per_second": None if f.tokens_per_second is None else round(f.tokens_per_second, 2),
        "terminated": f.terminated,
        "api_error": f.api_error,
        "events": f.events,
    }


def timeline(
    ex: Exchange, response_chunks: Sequence[BodyChunk], ttft_ns: int | None, stall_ns: int
) -> dict[str, Any]:
    """What the timeline chart draws: every body read (direction, time, size) on a time axis with
    the response head, the first token and the end marked, and the largest gaps between response
    reads (those above ``stall_ns`` are stalls; ``notable`` ones are over twice the median gap)."""
    chunks = [(0 if c.dir == "req" else 1, c.ns, len(c.data)) for c in ex.chunks]
    if len(chunks) > TIMELINE_POINTS:
        keep = TIMELINE_POINTS // 2
        chunks = chunks[:keep] + chunks[-keep:]
    gaps = [
        (later.ns - earlier.ns, i)
        for i, (earlier, later) in enumerate(itertools.pairwise(response_chunks))
    ]
    largest = sorted(gaps, reverse=True)[:GAPS_LISTED]
    usual = statistics.median(g for g, _ in gaps) if gaps else 0
    return {
        "duration_ns": ex.duration_ns,
        "heads_ns": [h.ns for h in ex.responses],
        "ttfb_ns": ex.ttfb_ns,
        "ttft_ns": ttft_ns,
        "stall_ns": stall_ns,
        "chunks": chunks,
        "chunk_count": len(ex.chunks),
        "gaps": [
            {
                "after": i + 1,
                "from_ns": response_chunks[i].ns,
                "to_ns": response_chunks[i + 1].ns,
                "stall": gap > stall_ns,
                "notable": gap > 2 * usual,  # stands out from the stream's usual rhythm
            }
            for gap, i in sorted(largest, key=lambda g: g[1])
        ],
    }


def _last_record_ns(ex: Exchange) -> int | None:
    """When the last record of an exchange still being written arrived."""
    times = [c.ns for c in ex.chunks] + [h.ns for h in ex.responses]
    return max(times, default=None)


def _redactions(ex: Exchange) -> list[dict[str, str]]:
    found = {
        (r.where, r.name, r.fp): {"where": r.where, "name": r.name, "fp": r.fp}
        for record in (ex.request, ex.upstream, *ex.responses, *ex.chunks)
        for r in getattr(record, "redactions", ()) or ()
    }
    return list(found.values())


def detail(
    a: Analyzed,
    findings: Sequence[Finding],
    thresholds: Thresholds,
    *,
    live: bool = False,
    redaction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The detail view of ``a`` as JSON-ready data."""
    ex = a.exchange
    request = ex.request
    end = ex.end
    request_type = a.request_head.get("content-type") if a.request_head else None
    response_type = a.response_head.get("content-type") if a.response_head else None
    response_body = b"".join(c for _, c in a.response_chunks)
    return {
        "id": ex.id,
        "method": ex.method,
        "path": ex.target,
        "route": a.route,
        "upstream_url": ex.upstream_url,
        "proxy_url": request.proxy_url if request else None,
        "client": request.client if request else None,
        "start": iso_time(ex.wall_ns),
        "status": ex.status,
        "outcome": a.outcome,
        "live": live,
        "error": a.error,
        "duration_ms": ms(ex.duration_ns if end else _last_record_ns(ex)),
        "ttfb_ms": ms(ex.ttfb_ns),
        "ttft_ms": ms(a.facts.ttft_ns),
        "req_bytes": end.req_bytes if end else len(ex.request_body),
        "res_bytes": end.res_bytes if end else len(ex.response_body),
        "heads": _heads(ex),
        "request": {
            **body_view(a.request_body, request_type),
            "conversation": [m.to_json() for m in conversation(a.input.request_json())],
        },
        "answer": _answer(a) if a.facts.api != "http" else None,
        "response": body_view(response_body, response_type),
        "decode_error": a.decode_error,
        "timeline": timeline(
            ex, ex.response_chunks, a.facts.ttft_ns, int(thresholds.stall_s * 1e9)
        ),
        "findings": [f.to_json() for f in findings],
        "redactions": _redactions(ex),
        "redaction": redaction,
        "raw": {
            "request": raw_view(ex.request_bytes()),
            "upstream": raw_view(ex.upstream_request_bytes()) if ex.upstream else None,
            "response": raw_view(ex.response_bytes()),
        },
        "commands": commands(a),
    }
