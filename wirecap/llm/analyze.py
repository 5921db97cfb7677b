"""Choosing the adapter for an exchange and running it. Sans-IO.

The adapter is chosen by the request path (``/chat/completions``, ``/responses``, ``/messages``,
``/api/chat``, ``/api/generate``, after any route prefix), then, for unknown paths, by what the body
looks like. Anything else gets plain HTTP facts (``api = "http"``).
"""

from __future__ import annotations

from collections.abc import Callable

from wirecap.llm import anthropic, ollama, openai, realtime
from wirecap.llm.facts import ExchangeInput, LLMFacts
from wirecap.llm.streams import json_body, sse_events

Adapter = Callable[[ExchangeInput], LLMFacts]

#: Path endings and their adapters, most specific first.
ADAPTERS: tuple[tuple[str, Adapter], ...] = (
    ("/chat/completions", openai.analyze_chat),
    ("/responses", openai.analyze_responses),
    ("/messages", anthropic.analyze_messages),
    ("/api/chat", lambda inp: ollama.analyze(inp, "chat")),
    ("/api/generate", lambda inp: ollama.analyze(inp, "generate")),
)


def pick_adapter(inp: ExchangeInput) -> Adapter | None:
    path = inp.path.split("?", 1)[0].rstrip("/")
    for suffix, adapter in ADAPTERS:
        if path.endswith(suffix):
            return adapter
    body = inp.response_chunks.head(4096)
    if b'"chat.completion' in body:
        return openai.analyze_chat
    if b'"message_start"' in body or b'"type":"message"' in body.replace(b" ", b""):
        return anthropic.analyze_messages
    return None


def analyze(inp: ExchangeInput) -> LLMFacts:
    """LLM facts for one exchange (plain HTTP facts when no adapter applies)."""
    if inp.session is not None:
        path = inp.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/realtime") or realtime.looks_realtime(inp.session):
            facts = realtime.analyze_realtime(inp)
        else:
            facts = realtime.analyze_websocket(inp)
        facts.analysis_stopped = inp.session.stopped
        return _unjudged_if_stopped(facts)
    adapter = pick_adapter(inp)
    if adapter is not None and inp.method == "POST":
        return _unjudged_if_stopped(adapter(inp))
    facts = LLMFacts()
    request = inp.request_json()
    if isinstance(request, dict) and isinstance(request.get("model"), str):
        facts.model_requested = request["model"]
    if inp.content_type == "text/event-stream":
        facts.streamed = True
        for event, _data in sse_events(inp, facts):
            if facts.ttft_ns is None:
                facts.ttft_ns = event.ns
        facts.malformed_json.clear()  # an unknown API's events need not carry JSON
        facts.more_malformed_json = 0
    elif inp.content_type.endswith("json"):
        body = json_body(inp, facts)
        if isinstance(body, dict) and isinstance(body.get("error"), dict | str):
            error = body["error"]
            facts.api_error = error if isinstance(error, dict) else {"message": error}
    else:
        facts.ttft_ns = inp.response_chunks.first_ns
        facts.last_chunk_ns = inp.response_chunks.last_ns
    return facts


def _unjudged_if_stopped(facts: LLMFacts) -> LLMFacts:
    if facts.analysis_stopped and facts.terminated is False:
        facts.terminated = None  # the terminator may be in what was not parsed
    return facts
