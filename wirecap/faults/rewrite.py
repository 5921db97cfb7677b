"""Rewriting one decoded JSON value of an answer (a body, an SSE event's data, an NDJSON line) so
that it carries ``bad-tool-args`` or ``length``. Sans-IO.

Each function changes ``obj`` in place and returns whether it changed anything; ``seen`` holds the
tool calls already broken in this answer, so that only the first argument fragment of each is
(a prefixed ``{`` makes the whole argument text invalid JSON, whatever the model sent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

Rewriter = Callable[[str, Any, set[Any]], bool]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _break(holder: dict[str, Any], key: str, seen: set[Any], ident: Any) -> bool:
    """Prefix ``{`` to ``holder[key]`` (an argument text; an object is first written as JSON)."""
    if ident in seen or key not in holder:
        return False
    value = holder[key]
    if not isinstance(value, str):
        value = json.dumps(value)
    holder[key] = "{" + value
    seen.add(ident)
    return True


def _openai_chat_args(obj: dict[str, Any], seen: set[Any]) -> bool:
    changed = False
    for choice in _dicts(obj.get("choices")):
        where = _dict(choice.get("delta")) or _dict(choice.get("message"))
        for n, call in enumerate(_dicts(where.get("tool_calls"))):
            index = call.get("index", n)
            changed |= _break(
                _dict(call.get("function")), "arguments", seen, (choice.get("index"), index)
            )
        legacy = _dict(where.get("function_call"))
        changed |= _break(legacy, "arguments", seen, (choice.get("index"), "function_call"))
    return changed


def _responses_args(obj: dict[str, Any], seen: set[Any]) -> bool:
    kind = obj.get("type")
    if kind == "response.function_call_arguments.delta":
        return _break(obj, "delta", seen, ("delta", obj.get("item_id")))
    if kind == "response.function_call_arguments.done":
        return _break(obj, "arguments", seen, ("done", obj.get("item_id")))
    items = [
        _dict(obj.get("item")),
        *_dicts(_dict(obj.get("response")).get("output")),
        *_dicts(obj.get("output")),
    ]
    changed = False
    for item in items:
        if item.get("type") == "function_call" and item.get("arguments"):
            changed |= _break(item, "arguments", set(), None)
    return changed


def _anthropic_args(obj: dict[str, Any], seen: set[Any]) -> bool:
    if obj.get("type") == "content_block_delta":
        delta = _dict(obj.get("delta"))
        if delta.get("type") == "input_json_delta":
            return _break(delta, "partial_json", seen, obj.get("index"))
        return False
    changed = False
    for n, block in enumerate(_dicts(obj.get("content"))):
        if block.get("type") == "tool_use":
            changed |= _break(block, "input", seen, n)
    return changed


def _ollama_args(obj: dict[str, Any], seen: set[Any]) -> bool:
    changed = False
    for n, call in enumerate(_dicts(_dict(obj.get("message")).get("tool_calls"))):
        changed |= _break(_dict(call.get("function")), "arguments", set(), n)
    return changed


def bad_tool_args(api: str, obj: Any, seen: set[Any]) -> bool:
    if not isinstance(obj, dict):
        return False
    fn = _ARGS.get(api, _openai_chat_args)
    return fn(obj, seen)


_ARGS: Final[dict[str, Callable[[dict[str, Any], set[Any]], bool]]] = {
    "openai.chat": _openai_chat_args,
    "openai.responses": _responses_args,
    "anthropic.messages": _anthropic_args,
    "ollama.chat": _ollama_args,
    "ollama.generate": _ollama_args,
}


def _set(holder: dict[str, Any], key: str, value: Any) -> bool:
    """Set ``holder[key]`` where the answer has it (a finish reason that is not null)."""
    if holder.get(key) is None:
        return False
    holder[key] = value
    return True


def length(api: str, obj: Any, seen: set[Any]) -> bool:
    """The finish reason becomes the token limit's: ``length`` (OpenAI chat, Ollama),
    ``max_tokens`` (Anthropic), an incomplete response with ``max_output_tokens`` (responses)."""
    if not isinstance(obj, dict):
        return False
    if api == "openai.responses":
        response = _dict(obj.get("response")) if "response" in obj else obj
        if obj.get("type") == "response.completed":
            obj["type"] = "response.incomplete"
        elif response.get("status") != "completed" or obj.get("type") not in (None, "response"):
            return False
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
        return True
    if api == "anthropic.messages":
        return _set(
            _dict(obj.get("delta")) if obj.get("type") == "message_delta" else obj,
            "stop_reason",
            "max_tokens",
        )
    if api.startswith("ollama"):
        if obj.get("done") is not True:
            return False
        obj["done_reason"] = "length"
        return True
    changed = False
    for choice in _dicts(obj.get("choices")):
        changed |= _set(choice, "finish_reason", "length")
    return changed


REWRITERS: Final[dict[str, Rewriter]] = {"bad-tool-args": bad_tool_args, "length": length}
