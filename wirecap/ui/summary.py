"""An analyzed exchange reduced to its list row and its searchable text. Sans-IO."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

from wirecap.ui.conversation import conversation, thinking_of
from wirecap.ui.search import TEXT_BYTES
from wirecap.ui.table import Row, pack_locations

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wirecap.inspect.analysis import Analyzed
    from wirecap.inspect.detectors import Finding

#: Strings that repeat from row to row (methods, routes, paths, models, outcomes) are shared.
_SHARED_MAX: Final = 200


def _shared(text: str | None) -> str | None:
    return sys.intern(text) if text is not None and len(text) <= _SHARED_MAX else text


def summarize(
    a: Analyzed,
    findings: Sequence[Finding],
    locations: Sequence[tuple[int, int]],
    *,
    live: bool = False,
) -> Row:
    """The list row of ``a``. A live exchange's duration is the time of its last record so far."""
    ex = a.exchange
    usage = a.facts.usage
    duration = ex.duration_ns
    if duration is None and live:
        times = [c.ns for c in ex.chunks] + [h.ns for h in ex.responses]
        duration = max(times, default=None)
    return Row(
        id=ex.id,
        wall_ns=ex.wall_ns,
        method=_shared(ex.method),
        route=_shared(a.route),
        path=_shared(ex.target),
        status=ex.status,
        outcome=_shared(a.outcome) or a.outcome,
        live=live,
        model=_shared(a.model),
        model_requested=_shared(a.facts.model_requested),
        api=_shared(a.facts.api) or a.facts.api,
        streamed=a.facts.streamed,
        ttft_ns=a.facts.ttft_ns,
        duration_ns=duration,
        input_tokens=usage.input if usage else None,
        output_tokens=usage.output if usage else None,
        req_bytes=ex.end.req_bytes if ex.end else len(ex.request_body),
        res_bytes=ex.end.res_bytes if ex.end else len(ex.response_body),
        chunks=len(a.response_chunks),
        findings=tuple((f.code, f.severity) for f in findings),
        locations=pack_locations(locations),
    )


def search_text(a: Analyzed) -> str:
    """What a text search looks through: the path, the request's messages (or its body when it
    has none), the answer, its tool calls and thinking. Bounded: the first
    :data:`~wirecap.ui.search.TEXT_BYTES` count."""
    pieces: list[str] = [a.exchange.target or ""]
    body = a.input.request_json()
    messages = conversation(body)
    if messages:
        for message in messages:
            pieces.extend(p.text or p.arguments or "" for p in message.parts)
            pieces.extend(p.name for p in message.parts if p.name)
    elif a.request_body:
        pieces.append(a.request_body[:TEXT_BYTES].decode("utf-8", "replace"))
    facts = a.facts
    pieces.append(facts.text)
    for call in facts.tool_calls:
        pieces.extend((call.name or "", call.arguments))
    if facts.api != "http":
        pieces.append(thinking_of(a))
    elif a.response_chunks:
        body_bytes = b"".join(c for _, c in a.response_chunks)[:TEXT_BYTES]
        pieces.append(body_bytes.decode("utf-8", "replace"))
    text = "\n".join(p for p in pieces if p)
    return text[: TEXT_BYTES * 2]
