"""OpenAI Realtime sessions (and any WebSocket session): facts from the decoded messages. Sans-IO.

A Realtime session is JSON text events both ways. The server's ``session.created`` (and
``session.updated``) names the model; ``response.created`` starts a response; its output arrives
as deltas (``response.output_text.delta``, ``response.output_audio.delta``,
``response.output_audio_transcript.delta``, ``response.function_call_arguments.delta``, and the
beta names ``response.text.delta``, ``response.audio.delta``, ``response.audio_transcript.delta``);
``response.done`` ends it with its status and usage; ``error`` reports a failure. Usage is summed
over the responses of the session.

TTFT is measured per response from the last client message before it began (the message that
asked for it: ``response.create``, or the audio a server-side VAD answered) to its first output
delta; the session's TTFT is its first response's. A session ends whole when the closing
handshake went through (or a side closed with a Close frame) and every response that began has
its ``response.done``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from wirecap.llm.facts import LLMFacts, Usage, as_dict, as_int, as_str

if TYPE_CHECKING:
    from wirecap.llm.facts import ExchangeInput
    from wirecap.llm.websocket import WsMessage, WsSession

#: Output deltas whose ``delta`` is text the model produced (the transcript of its audio included).
TEXT_DELTAS: Final = frozenset(
    {
        "response.output_text.delta",
        "response.text.delta",
        "response.output_audio_transcript.delta",
        "response.audio_transcript.delta",
    }
)
#: Every output delta (TTFT is the first of any of them).
OUTPUT_DELTAS: Final = TEXT_DELTAS | {
    "response.output_audio.delta",
    "response.audio.delta",
    "response.function_call_arguments.delta",
}


def events_of(messages: list[WsMessage], facts: LLMFacts) -> list[tuple[WsMessage, dict[str, Any]]]:
    """The text messages that are JSON objects with a ``type``; others are named in
    ``facts.malformed_json`` (only for text messages: binary ones are not events)."""
    out = []
    for message in messages:
        if message.text is None:
            continue
        try:
            event = json.loads(message.text)
        except ValueError as exc:
            facts.json_problem(f"{message.dir} message at {message.ns / 1e6:.1f} ms: {exc}")
            continue
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            out.append((message, event))
    return out


def looks_realtime(session: WsSession) -> bool:
    """Whether the server's first text message is a Realtime session event."""
    for message in session.messages:
        if message.dir == "res" and message.text is not None:
            return '"session.created"' in message.text or '"session.updated"' in message.text
    return False


def analyze_realtime(inp: ExchangeInput) -> LLMFacts:
    """Facts of an OpenAI Realtime session (``inp.session`` decoded)."""
    session = inp.session
    facts = LLMFacts(api="openai.realtime", streamed=True)
    query = parse_qs(urlsplit(inp.path).query)
    facts.model_requested = next(iter(query.get("model", [])), None)
    if session is None:
        return facts
    events = events_of(session.messages, facts)
    facts.events = len(events)
    open_responses: set[str] = set()
    asked_ns: int | None = None  # the last client message before the current response
    started_ns: int | None = None
    output_times: list[int] = []
    text: list[str] = []
    for message, event in events:
        kind = event["type"]
        if message.dir == "req":
            asked_ns = message.ns
            if kind == "session.update":
                facts.model_requested = as_str(as_dict(event.get("session")).get("model")) or (
                    facts.model_requested
                )
            continue
        if kind in ("session.created", "session.updated"):
            facts.model_returned = as_str(as_dict(event.get("session")).get("model")) or (
                facts.model_returned
            )
        elif kind == "response.created":
            open_responses.add(as_str(as_dict(event.get("response")).get("id")) or "")
            started_ns = asked_ns
        elif kind in OUTPUT_DELTAS:
            output_times.append(message.ns)
            if facts.ttft_ns is None and started_ns is not None:
                facts.ttft_ns = message.ns - started_ns
            if kind in TEXT_DELTAS:
                text.append(as_str(event.get("delta")) or "")
        elif kind == "response.done":
            _response_done(as_dict(event.get("response")), facts, open_responses)
            output_times.append(message.ns)
        elif kind == "error":
            facts.api_error = as_dict(event.get("error")) or {"message": str(event.get("error"))}
    facts.text = "".join(text)
    facts.last_chunk_ns = output_times[-1] if output_times else None
    facts.stall_times = tuple(output_times)
    closed = session.closed_by("req") or session.closed_by("res")
    facts.terminated = closed and not open_responses and not session.problems
    return facts.finish()


def _response_done(response: dict[str, Any], facts: LLMFacts, open_responses: set[str]) -> None:
    """Take one ``response.done``: its status (the finish reason) and usage (added up)."""
    open_responses.discard(as_str(response.get("id")) or "")
    details = as_dict(response.get("status_details"))
    status = as_str(response.get("status"))
    facts.finish_reason = as_str(details.get("reason")) or status
    if status == "failed" and facts.api_error is None:
        facts.api_error = as_dict(details.get("error")) or {"message": "response failed"}
    usage = as_dict(response.get("usage"))
    if not usage:
        return
    total = facts.usage or Usage(input=0, output=0, total=0)
    cached = as_int(as_dict(usage.get("input_token_details")).get("cached_tokens"))
    total.input = (total.input or 0) + (as_int(usage.get("input_tokens")) or 0)
    total.output = (total.output or 0) + (as_int(usage.get("output_tokens")) or 0)
    total.total = (total.total or 0) + (as_int(usage.get("total_tokens")) or 0)
    if cached is not None:
        total.cached = (total.cached or 0) + cached
    facts.usage = total


def analyze_websocket(inp: ExchangeInput) -> LLMFacts:
    """Facts of a session no adapter knows: first server message as TTFT, whether it closed."""
    facts = LLMFacts(api="websocket", streamed=True)
    session = inp.session
    if session is None:
        return facts
    replies = [m.ns for m in session.messages if m.dir == "res"]
    facts.ttft_ns = replies[0] if replies else None
    facts.last_chunk_ns = replies[-1] if replies else None
    facts.events = len(session.messages)
    facts.stall_times = ()  # quiet between messages is the application's pace, not a stall
    facts.terminated = (
        session.closed_by("req") or session.closed_by("res")
    ) and not session.problems
    return facts
