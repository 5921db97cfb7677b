"""What a fault answers with: provider-shaped error answers and synthesized answers. Sans-IO.

The provider is told by the request path (after any route prefix), as the LLM adapters tell it:
``/chat/completions`` and ``/responses`` are OpenAI, ``/messages`` Anthropic, ``/api/chat`` and
``/api/generate`` Ollama; any other path gets OpenAI's shapes, which most compatible servers copy.
Error bodies have each provider's real shape, so SDKs raise their own typed errors: OpenAI's
``{"error": {"message", "type", "param", "code"}}``, Anthropic's ``{"type": "error", "error":
{"type", "message"}}``, Ollama's ``{"error": "..."}``. ``retry-after`` is the standard header both
the openai and the anthropic SDKs honour (they retry 429 and 5xx twice by default, waiting what
it says: openai up to 120 s and not at all past that, anthropic any positive value); no
``x-should-retry`` is sent, so each SDK applies its own policy.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from wirecap.faults.spec import FaultSpec

#: Path endings and the API they belong to (the LLM adapters' table, for the same paths).
APIS: Final = (
    ("/chat/completions", "openai.chat"),
    ("/responses", "openai.responses"),
    ("/messages", "anthropic.messages"),
    ("/api/chat", "ollama.chat"),
    ("/api/generate", "ollama.generate"),
)
#: Tool call arguments a synthesized answer carries for ``bad-tool-args``: JSON cut short.
BAD_ARGUMENTS: Final = '{"wirecap_fault": "bad-tool-args", "cut": '
#: The text of a synthesized answer for ``length``.
LENGTH_TEXT: Final = "This answer stops here: wirecap's length fault"


def api_of(target: str) -> str:
    """The API of a request target: ``openai.chat``, ..., or ``http`` for any other path."""
    path = target.partition("?")[0].rstrip("/")
    return next((api for suffix, api in APIS if path.endswith(suffix)), "http")


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer the fault makes: status, headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


_OPENAI_ERRORS: Final = {
    429: (
        "Rate limit reached for requests (injected by wirecap)",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request (injected by wirecap).",
        "server_error",
        None,
    ),
    503: (
        "The engine is currently overloaded, please try again later (injected by wirecap).",
        "server_error",
        None,
    ),
}
_ANTHROPIC_ERRORS: Final = {
    429: (
        "rate_limit_error",
        "Number of requests has exceeded your rate limit (injected by wirecap).",
    ),
    500: ("api_error", "Internal server error (injected by wirecap)."),
    503: ("overloaded_error", "Overloaded (injected by wirecap)."),
}


def error_answer(spec: FaultSpec, target: str) -> Answer:
    """The answer of an ``answer`` kind (429, 500, 503) for a request to ``target``."""
    status = int(spec.kind)
    api = api_of(target)
    payload: dict[str, Any]
    headers = [("Content-Type", "application/json")]
    if api.startswith("anthropic"):
        kind, message = _ANTHROPIC_ERRORS[status]
        payload = {"type": "error", "error": {"type": kind, "message": message}}
        headers.append(("request-id", "req_wirecap_fault"))
    elif api.startswith("ollama"):
        payload = {"error": _OPENAI_ERRORS[status][0]}
    else:
        message, kind, code = _OPENAI_ERRORS[status]
        payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        headers.append(("x-request-id", "req_wirecap_fault"))
    retry_after = spec.params.get("retry-after")
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    headers.append(("X-Wirecap-Fault", spec.kind))
    return Answer(status, tuple(headers), json.dumps(payload).encode())


# -- synthesized answers ----------------------------------------------------------------------------


def _request(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_name(request: dict[str, Any]) -> str:
    """The first tool the request offers (its name), or ``wirecap_tool``."""
    for tool in request.get("tools") or ():
        if isinstance(tool, dict):
            name = (
                (tool.get("function") or {}).get("name") if "function" in tool else tool.get("name")
            )
            if isinstance(name, str):
                return name
    return "wirecap_tool"


def synthesized_answer(spec: FaultSpec, target: str, request_body: bytes) -> Answer:
    """A provider-shaped answer that carries the fault (``bad-tool-args``: one tool call whose
    arguments are not JSON; ``length``: text cut by the token limit), streamed when the request
    asked for a stream. Used where there is no real answer to transform."""
    request = _request(request_body)
    api = api_of(target)
    model = str(request.get("model") or "wirecap-fault")
    tool = _tool_name(request) if spec.kind == "bad-tool-args" else None
    stream = request.get("stream") is True or (
        api.startswith("ollama") and request.get("stream") is not False
    )
    build = _BUILDERS.get(api, _BUILDERS["openai.chat"])
    content_type, body = build(model, tool, stream)
    headers = (("Content-Type", content_type), ("X-Wirecap-Fault", spec.kind))
    return Answer(200, headers, body)


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def _openai_chat(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    finish = "tool_calls" if tool else "length"
    call = {
        "id": "call_wirecap",
        "type": "function",
        "function": {"name": tool, "arguments": BAD_ARGUMENTS},
    }
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    base = {"id": "chatcmpl-wirecap", "created": 0, "model": model}
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else LENGTH_TEXT}
        if tool:
            message["tool_calls"] = [call]
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        return "application/json", json.dumps(body).encode()
    delta: dict[str, Any] = {"role": "assistant", "content": None if tool else LENGTH_TEXT}
    if tool:
        delta["tool_calls"] = [{"index": 0, **call}]
    chunk = {**base, "object": "chat.completion.chunk"}
    events: list[tuple[str | None, Any]] = [
        (None, {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
        (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
        (None, "[DONE]"),
    ]
    return "text/event-stream", _sse(events)


def _openai_responses(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    if tool:
        item: dict[str, Any] = {
            "type": "function_call",
            "id": "fc_wirecap",
            "call_id": "call_wirecap",
            "name": tool,
            "arguments": BAD_ARGUMENTS,
            "status": "completed",
        }
    else:
        item = {
            "type": "message",
            "id": "msg_wirecap",
            "role": "assistant",
            "status": "incomplete",
            "content": [{"type": "output_text", "text": LENGTH_TEXT, "annotations": []}],
        }
    response: dict[str, Any] = {
        "id": "resp_wirecap",
        "object": "response",
        "created_at": 0,
        "model": model,
        "status": "completed" if tool else "incomplete",
        "incomplete_details": None if tool else {"reason": "max_output_tokens"},
        "output": [item],
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    }
    if not stream:
        return "application/json", json.dumps(response).encode()
    started = {**response, "status": "in_progress", "incomplete_details": None, "output": []}
    last = "response.completed" if tool else "response.incomplete"
    names = ["response.created", "response.output_item.added", "response.output_item.done", last]
    payloads: list[dict[str, Any]] = [
        {"response": started},
        {"output_index": 0, "item": item},
        {"output_index": 0, "item": item},
        {"response": response},
    ]
    events: list[tuple[str | None, Any]] = [
        (name, {"type": name, "sequence_number": n, **payload})
        for n, (name, payload) in enumerate(zip(names, payloads, strict=True))
    ]
    return "text/event-stream", _sse(events)


def _anthropic(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    stop = "tool_use" if tool else "max_tokens"
    usage = {"input_tokens": 1, "output_tokens": 1}
    base = {"id": "msg_wirecap", "type": "message", "role": "assistant", "model": model}
    if not stream:
        block: dict[str, Any] = (
            {"type": "tool_use", "id": "toolu_wirecap", "name": tool, "input": BAD_ARGUMENTS}
            if tool
            else {"type": "text", "text": LENGTH_TEXT}
        )
        body = {
            **base,
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return "application/json", json.dumps(body).encode()
    start = (
        {"type": "tool_use", "id": "toolu_wirecap", "name": tool, "input": {}}
        if tool
        else {"type": "text", "text": ""}
    )
    delta = (
        {"type": "input_json_delta", "partial_json": BAD_ARGUMENTS}
        if tool
        else {"type": "text_delta", "text": LENGTH_TEXT}
    )
    message: dict[str, Any] = {
        **base,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": start},
        ),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "text/event-stream", _sse(events)


def _ollama(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    message: dict[str, Any] = {"role": "assistant", "content": "" if tool else LENGTH_TEXT}
    if tool:
        message["tool_calls"] = [{"function": {"name": tool, "arguments": BAD_ARGUMENTS}}]
    last = {
        "model": model,
        "created_at": "1970-01-01T00:00:00Z",
        "message": message,
        "done": True,
        "done_reason": "stop" if tool else "length",
        "prompt_eval_count": 1,
        "eval_count": 1,
    }
    if not stream:
        return "application/json", json.dumps(last).encode()
    return "application/x-ndjson", (json.dumps(last) + "\n").encode()


_BUILDERS: Final = {
    "openai.chat": _openai_chat,
    "openai.responses": _openai_responses,
    "anthropic.messages": _anthropic,
    "ollama.chat": _ollama,
    "ollama.generate": _ollama,
}
