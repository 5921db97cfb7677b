"""Anthropic messages API: JSON bodies and SSE streams. Sans-IO.

Stream events as documented by Anthropic: ``message_start`` (model, input usage), ``content_block_start``
(text, tool_use with id and name, thinking), ``content_block_delta`` (``text_delta``,
``input_json_delta`` with ``partial_json``), ``message_delta`` (stop reason, output usage),
``message_stop`` (the terminator), ``ping``, and ``error``.
"""

from __future__ import annotations

import json

from wirecap.llm.facts import (
    ExchangeInput,
    LLMFacts,
    ToolCall,
    Usage,
    as_dict,
    as_int,
    as_list,
    as_str,
)
from wirecap.llm.streams import json_body, sse_events


class _MessageStream:
    """Folds a message stream's events into facts: text, tool calls by block index, usage."""

    def __init__(self, facts: LLMFacts) -> None:
        self.facts = facts
        self.text: list[str] = []
        self.blocks: dict[int, ToolCall] = {}

    def read(self, inp: ExchangeInput) -> LLMFacts:
        facts = self.facts
        facts.streamed = True
        facts.terminated = False
        for event, data in sse_events(inp, facts):
            payload = as_dict(data)
            self.on_event(as_str(payload.get("type")) or event.event, payload, event.ns)
        facts.text = "".join(self.text)
        facts.tool_calls = [self.blocks[i] for i in sorted(self.blocks)]
        return facts.finish()

    def on_event(self, kind: str | None, payload: dict[str, object], ns: int | None) -> None:
        facts = self.facts
        if kind == "message_start":
            message = as_dict(payload.get("message"))
            facts.model_returned = as_str(message.get("model"))
            facts.usage = _usage(message.get("usage"), facts.usage)
        elif kind == "content_block_start":
            block = as_dict(payload.get("content_block"))
            index = as_int(payload.get("index")) or 0
            if block.get("type") in ("tool_use", "server_tool_use") and self.facts.room_for_call(
                self.blocks, index
            ):
                self.blocks[index] = ToolCall(
                    id=as_str(block.get("id")),
                    name=as_str(block.get("name")),
                    arguments="",
                    index=index,
                )
                self._first_token(ns)
        elif kind == "content_block_delta":
            self.on_delta(as_int(payload.get("index")) or 0, as_dict(payload.get("delta")), ns)
        elif kind == "content_block_stop":
            call = self.blocks.get(as_int(payload.get("index")) or 0)
            if call is not None and not call.settle().arguments.strip():
                # A tool that takes no arguments streams one empty ``partial_json``: its input is {}.
                call.arguments = "{}"
        elif kind == "message_delta":
            delta = as_dict(payload.get("delta"))
            facts.finish_reason = as_str(delta.get("stop_reason")) or facts.finish_reason
            facts.usage = _usage(payload.get("usage"), facts.usage)
        elif kind == "message_stop":
            facts.terminated = True
        elif kind == "error":
            facts.api_error = as_dict(payload.get("error")) or payload

    def on_delta(self, index: int, delta: dict[str, object], ns: int | None) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            piece = as_str(delta.get("text")) or ""
            self.text.append(piece)
            if piece:
                self._first_token(ns)
        elif kind == "input_json_delta" and self.facts.room_for_call(self.blocks, index):
            call = self.blocks.setdefault(index, ToolCall(name=None, arguments="", index=index))
            call.pieces.append(as_str(delta.get("partial_json")) or "")
        elif kind == "thinking_delta":
            self._first_token(ns)

    def _first_token(self, ns: int | None) -> None:
        if self.facts.ttft_ns is None:
            self.facts.ttft_ns = ns


def _usage(raw: object, into: Usage | None = None) -> Usage | None:
    u = as_dict(raw)
    if not u:
        return into
    usage = into or Usage()
    usage.input = as_int(u.get("input_tokens")) if "input_tokens" in u else usage.input
    usage.output = as_int(u.get("output_tokens")) if "output_tokens" in u else usage.output
    if "cache_read_input_tokens" in u:
        usage.cached = as_int(u.get("cache_read_input_tokens"))
    return usage


def analyze_messages(inp: ExchangeInput) -> LLMFacts:
    request = as_dict(inp.request_json())
    facts = LLMFacts(api="anthropic.messages", model_requested=as_str(request.get("model")))
    if inp.content_type == "text/event-stream":
        return _MessageStream(facts).read(inp)
    body = as_dict(json_body(inp, facts))
    if body.get("type") == "error" or "error" in body:
        facts.api_error = as_dict(body.get("error")) or body
    facts.model_returned = as_str(body.get("model"))
    facts.usage = _usage(body.get("usage"))
    facts.finish_reason = as_str(body.get("stop_reason"))
    text = []
    for i, block in enumerate(as_list(body.get("content"))):
        block = as_dict(block)
        if block.get("type") == "text":
            text.append(as_str(block.get("text")) or "")
        elif block.get("type") in ("tool_use", "server_tool_use"):
            facts.tool_calls.append(
                ToolCall(
                    id=as_str(block.get("id")),
                    name=as_str(block.get("name")),
                    # Anthropic sends the input as an object; a string is the argument text
                    # itself (as from a broken model or server), kept as it came.
                    arguments=_input_text(block.get("input")),
                    index=i,
                )
            )
    facts.text = "".join(text)
    return facts.finish()


def _input_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
