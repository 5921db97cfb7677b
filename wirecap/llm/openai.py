"""OpenAI chat completions and responses API: JSON bodies and SSE streams. Sans-IO.

Wire formats as documented by OpenAI: chat completion chunks (``choices[].delta``, tool calls assembled
from indexed deltas, ``[DONE]`` terminator, a final usage-only chunk with ``stream_options``), and the
responses API's typed events (``response.output_text.delta``, ``response.function_call_arguments.delta``,
``response.completed``/``failed``/``incomplete``).
"""

from __future__ import annotations

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
from wirecap.llm.streams import json_body, sse_events


def _chat_usage(raw: Any) -> Usage | None:
    u = as_dict(raw)
    if not u:
        return None
    return Usage(
        input=as_int(u.get("prompt_tokens")),
        output=as_int(u.get("completion_tokens")),
        cached=as_int(as_dict(u.get("prompt_tokens_details")).get("cached_tokens")),
        total=as_int(u.get("total_tokens")),
    )


def analyze_chat(inp: ExchangeInput) -> LLMFacts:
    request = as_dict(inp.request_json())
    facts = LLMFacts(api="openai.chat", model_requested=as_str(request.get("model")))
    if inp.content_type == "text/event-stream":
        facts.streamed = True
        facts.terminated = False
        text: list[str] = []
        calls: dict[int, ToolCall] = {}
        for event, data in sse_events(inp, facts):
            if event.data == "[DONE]":
                facts.terminated = True
                continue
            chunk = as_dict(data)
            if "error" in chunk:
                facts.api_error = as_dict(chunk["error"]) or {"message": str(chunk["error"])}
                continue
            facts.model_returned = as_str(chunk.get("model")) or facts.model_returned
            if chunk.get("usage"):
                facts.usage = _chat_usage(chunk["usage"])
            for choice in as_list(chunk.get("choices")):
                choice = as_dict(choice)
                if as_int(choice.get("index")) not in (0, None):
                    continue
                delta = as_dict(choice.get("delta"))
                content = as_str(delta.get("content"))
                if content:
                    text.append(content)
                    if facts.ttft_ns is None:
                        facts.ttft_ns = event.ns
                if _chat_delta_calls(delta, calls, facts) and facts.ttft_ns is None:
                    facts.ttft_ns = event.ns
                if choice.get("finish_reason"):
                    facts.finish_reason = as_str(choice.get("finish_reason"))
        facts.text = "".join(text)
        facts.tool_calls = [calls[i] for i in sorted(calls)]
        if facts.finish_reason is not None:
            _no_arguments_is_empty_object(facts.tool_calls)
        return facts.finish()
    body = as_dict(json_body(inp, facts))
    if "error" in body:
        facts.api_error = as_dict(body["error"]) or {"message": str(body["error"])}
    facts.model_returned = as_str(body.get("model"))
    facts.usage = _chat_usage(body.get("usage"))
    choices = as_list(body.get("choices"))
    if choices:
        choice = as_dict(choices[0])
        message = as_dict(choice.get("message"))
        facts.text = as_str(message.get("content")) or ""
        facts.finish_reason = as_str(choice.get("finish_reason"))
        facts.tool_calls = _message_calls(message)
    return facts.finish()


#: Where a legacy ``function_call`` (the ``functions`` request style) is kept among the indexed
#: ``tool_calls`` of a stream: it never comes with them, and it has no index of its own.
_LEGACY_INDEX = 0


def _chat_delta_calls(delta: dict[str, Any], calls: dict[int, ToolCall], facts: LLMFacts) -> bool:
    """Fold a streamed delta's ``tool_calls`` (or legacy ``function_call``) into ``calls``;
    True when a call began in it."""
    began = False
    pieces = [
        (as_int(as_dict(c).get("index")) or 0, as_dict(c), as_dict(as_dict(c).get("function")))
        for c in as_list(delta.get("tool_calls"))
    ]
    legacy = delta.get("function_call")
    if isinstance(legacy, dict) and not pieces:  # some servers send ``"function_call": null``
        pieces.append((_LEGACY_INDEX, {}, legacy))
    for index, call, function in pieces:
        known = calls.get(index)
        if known is None:
            if not facts.room_for_call(calls, index):
                continue
            known = calls[index] = ToolCall(name=None, arguments="", index=index)
            began = True
        known.id = as_str(call.get("id")) or known.id
        known.name = as_str(function.get("name")) or known.name
        known.pieces.append(as_str(function.get("arguments")) or "")
    return began


def _no_arguments_is_empty_object(calls: list[ToolCall]) -> None:
    """A finished stream's call of a tool that takes no arguments may never stream any (some
    OpenAI-compatible servers send ``"arguments": null`` and no ``"{}"``): its input is ``{}``."""
    for call in calls:
        if not call.settle().arguments.strip():
            call.arguments = "{}"


def _message_calls(message: dict[str, Any]) -> list[ToolCall]:
    """A chat completion message's tool calls: ``tool_calls``, or the legacy ``function_call``."""
    calls = []
    for i, raw_call in enumerate(as_list(message.get("tool_calls"))):
        call = as_dict(raw_call)
        function = as_dict(call.get("function"))
        calls.append(
            ToolCall(
                id=as_str(call.get("id")),
                name=as_str(function.get("name")),
                arguments=as_str(function.get("arguments")) or "",
                index=i,
            )
        )
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict):
        calls.append(
            ToolCall(
                name=as_str(legacy.get("name")),
                arguments=as_str(legacy.get("arguments")) or "",
                index=_LEGACY_INDEX,
            )
        )
    return calls


def _responses_usage(raw: Any) -> Usage | None:
    u = as_dict(raw)
    if not u:
        return None
    return Usage(
        input=as_int(u.get("input_tokens")),
        output=as_int(u.get("output_tokens")),
        cached=as_int(as_dict(u.get("input_tokens_details")).get("cached_tokens")),
        total=as_int(u.get("total_tokens")),
    )


def _response_object(facts: LLMFacts, response: dict[str, Any]) -> None:
    """Fill facts from a complete ``response`` object (a JSON body or a terminal stream event)."""
    facts.model_returned = as_str(response.get("model")) or facts.model_returned
    facts.usage = _responses_usage(response.get("usage")) or facts.usage
    status = as_str(response.get("status"))
    incomplete = as_dict(response.get("incomplete_details"))
    facts.finish_reason = as_str(incomplete.get("reason")) or status or facts.finish_reason
    if response.get("error"):
        facts.api_error = as_dict(response.get("error"))


def _output_items(facts: LLMFacts, output: list[Any]) -> None:
    text: list[str] = []
    for item in output:
        item = as_dict(item)
        if item.get("type") == "message":
            for part in as_list(item.get("content")):
                part = as_dict(part)
                if part.get("type") == "output_text":
                    text.append(as_str(part.get("text")) or "")
        elif item.get("type") == "function_call":
            facts.tool_calls.append(
                ToolCall(
                    id=as_str(item.get("call_id")) or as_str(item.get("id")),
                    name=as_str(item.get("name")),
                    arguments=as_str(item.get("arguments")) or "",
                )
            )
    facts.text = "".join(text)


def analyze_responses(inp: ExchangeInput) -> LLMFacts:
    request = as_dict(inp.request_json())
    facts = LLMFacts(api="openai.responses", model_requested=as_str(request.get("model")))
    if inp.content_type == "text/event-stream":
        facts.streamed = True
        facts.terminated = False
        text: list[str] = []
        calls: dict[str, ToolCall] = {}
        for event, data in sse_events(inp, facts):
            payload = as_dict(data)
            kind = as_str(payload.get("type")) or event.event
            if kind == "response.output_text.delta":
                delta = as_str(payload.get("delta")) or ""
                text.append(delta)
                if delta and facts.ttft_ns is None:
                    facts.ttft_ns = event.ns
            elif kind == "response.output_item.added":
                item = as_dict(payload.get("item"))
                key = as_str(item.get("id")) or str(len(calls))
                if item.get("type") == "function_call" and facts.room_for_call(calls, key):
                    calls[key] = ToolCall(
                        id=as_str(item.get("call_id")) or key,
                        name=as_str(item.get("name")),
                        arguments="",
                    )
                    if facts.ttft_ns is None:
                        facts.ttft_ns = event.ns
            elif kind == "response.function_call_arguments.delta":
                key = as_str(payload.get("item_id")) or ""
                if facts.room_for_call(calls, key):
                    call = calls.setdefault(key, ToolCall(id=key, name=None, arguments=""))
                    call.pieces.append(as_str(payload.get("delta")) or "")
            elif kind == "response.function_call_arguments.done":
                key = as_str(payload.get("item_id")) or ""
                if key in calls and isinstance(payload.get("arguments"), str):
                    calls[key].pieces.clear()
                    calls[key].arguments = payload["arguments"]
            elif kind in ("response.created", "response.in_progress"):
                _response_object(facts, as_dict(payload.get("response")))
            elif kind in ("response.completed", "response.failed", "response.incomplete"):
                facts.terminated = True
                _response_object(facts, as_dict(payload.get("response")))
            elif kind == "error":
                facts.api_error = payload
        facts.text = "".join(text)
        facts.tool_calls = list(calls.values())
        return facts.finish()
    body = as_dict(json_body(inp, facts))
    if body.get("error"):
        facts.api_error = as_dict(body["error"]) or {"message": str(body["error"])}
    _response_object(facts, body)
    _output_items(facts, as_list(body.get("output")))
    return facts.finish()
