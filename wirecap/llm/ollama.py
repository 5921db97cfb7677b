"""Ollama ``/api/chat`` and ``/api/generate``: JSON bodies and NDJSON streams. Sans-IO.

Each streamed line is a JSON object; the last has ``"done": true`` with ``done_reason`` and the counts
``prompt_eval_count`` (input tokens) and ``eval_count`` (output tokens). Tool call arguments are JSON
objects, kept here as their compact JSON text.
"""

from __future__ import annotations

import json
from typing import Any

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
from wirecap.llm.streams import json_body, ndjson_lines


def _apply(
    facts: LLMFacts, obj: dict[str, Any], kind: str, text: list[str], ns: int | None
) -> None:
    facts.model_returned = as_str(obj.get("model")) or facts.model_returned
    if "error" in obj:
        facts.api_error = {"message": str(obj["error"])}
    piece = (
        as_str(as_dict(obj.get("message")).get("content"))
        if kind == "chat"
        else as_str(obj.get("response"))
    )
    if piece:
        text.append(piece)
        if facts.ttft_ns is None:
            facts.ttft_ns = ns
    for raw in as_list(as_dict(obj.get("message")).get("tool_calls")):
        function = as_dict(as_dict(raw).get("function"))
        arguments = function.get("arguments")
        facts.tool_calls.append(
            ToolCall(
                name=as_str(function.get("name")),
                arguments=arguments
                if isinstance(arguments, str)
                else json.dumps(arguments, separators=(",", ":")),
                index=len(facts.tool_calls),
            )
        )
        if facts.ttft_ns is None:
            facts.ttft_ns = ns
    if obj.get("done") is True:
        facts.terminated = True
        facts.finish_reason = as_str(obj.get("done_reason")) or "stop"
        if "prompt_eval_count" in obj or "eval_count" in obj:
            facts.usage = Usage(
                input=as_int(obj.get("prompt_eval_count")), output=as_int(obj.get("eval_count"))
            )


def analyze(inp: ExchangeInput, kind: str) -> LLMFacts:
    """``kind`` is ``"chat"`` or ``"generate"``."""
    request = as_dict(inp.request_json())
    facts = LLMFacts(api=f"ollama.{kind}", model_requested=as_str(request.get("model")))
    text: list[str] = []
    if inp.content_type in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        facts.streamed = True
        facts.terminated = False
        for ns, value in ndjson_lines(inp, facts):
            _apply(facts, as_dict(value), kind, text, ns)
    else:
        body = json_body(inp, facts)
        ttft = facts.ttft_ns
        _apply(facts, as_dict(body), kind, text, ttft)
        facts.terminated = None
    facts.text = "".join(text)
    return facts.finish()
