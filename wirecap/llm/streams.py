"""Driving the SSE and NDJSON parsers over an exchange's timed chunks for the adapters. Sans-IO."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, TypeVar

from wirecap.llm.facts import EventAllowance
from wirecap.llm.ndjson import NDJSONParser
from wirecap.llm.sse import SSEEvent, SSEParser

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from wirecap.llm.facts import ExchangeInput, LLMFacts

#: The one malformation of an SSE stream that a cut (a client or upstream gone) also produces.
ENDS_INSIDE_AN_EVENT: Final = "stream ends inside an event (no blank line after the last one)"


T = TypeVar("T")

#: With an allowance, a body is parsed this many bytes at a time, the allowance checked between.
PIECE: Final = 64 * 1024


def _parsed(
    inp: ExchangeInput, facts: LLMFacts, feed: Callable[[bytes, int], list[T]]
) -> Iterator[T]:
    """What ``feed`` (a parser's) makes of the response's reads: given whole without an
    allowance, else in pieces of at most PIECE bytes while ``inp.allowance`` lasts. When it runs
    out, the rest is not parsed and ``facts`` say so."""
    allowance = inp.allowance
    for ns, chunk in inp.response_chunks:
        facts.last_chunk_ns = ns
        if allowance is None:
            yield from feed(chunk, ns)
            continue
        for at in range(0, len(chunk), PIECE):
            if allowance.left <= 0:
                facts.analysis_stopped = EventAllowance.stopped(facts.events, "events")
                return
            items = feed(chunk[at : at + PIECE], ns)
            allowance.spend(len(items))
            yield from items


def sse_events(inp: ExchangeInput, facts: LLMFacts) -> Iterator[tuple[SSEEvent, Any]]:
    """Each SSE event of the response with its data decoded as JSON (None for non-JSON data such as
    ``[DONE]``). Malformed framing and JSON are noted on ``facts``; so is the arrival of the last chunk."""
    parser = SSEParser()
    for event in _parsed(inp, facts, parser.feed):
        facts.events += 1
        data: Any = None
        if event.data and event.data != "[DONE]":
            try:
                data = json.loads(event.data)
            except ValueError as exc:
                facts.json_problem(f"event {facts.events}: data is not JSON ({exc})")
        yield event, data
    if facts.analysis_stopped:
        return
    end = parser.close()
    if parser.invalid_utf8:
        facts.malformed_sse.append(f"{parser.invalid_utf8} line(s) are not valid UTF-8")
    if parser.overlong:
        facts.malformed_sse.append("a line longer than the parser's limit")
    if not end.clean:
        facts.malformed_sse.append(ENDS_INSIDE_AN_EVENT)


def ndjson_lines(inp: ExchangeInput, facts: LLMFacts) -> Iterator[tuple[int | None, Any]]:
    """Each NDJSON value of the response with its arrival time; bad lines are noted on ``facts``."""
    parser = NDJSONParser()
    for line in _parsed(inp, facts, parser.feed):
        facts.events += 1
        if line.error:
            facts.json_problem(f"line {facts.events}: {line.error}")
            continue
        yield line.ns, line.value
    if facts.analysis_stopped:
        return
    tail = parser.close()
    if tail is not None:
        facts.events += 1
        if tail.error:
            facts.json_problem(f"last line is cut off: {tail.error}")
        else:
            yield facts.last_chunk_ns, tail.value


def json_body(inp: ExchangeInput, facts: LLMFacts) -> Any:
    """The response body as JSON; a body that is not JSON is noted on ``facts``.

    The body's bytes are let go once decoded, so parsing holds the text and what it parses into,
    never the bytes as well."""
    if inp.response_chunks:
        facts.ttft_ns = inp.response_chunks.first_ns
        facts.last_chunk_ns = inp.response_chunks.last_ns
    body = inp.response_body
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError as exc:
        facts.json_problem(f"response body is not JSON: {exc}")
        return None
    del body
    if not text or text.isspace():  # (strip() would copy a large text)
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        facts.json_problem(f"response body is not JSON: {exc}")
        return None
