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
import functools
import json
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

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


# -- the shapes of a fault's tool call and finish (synthesized answers and the proxy's additions) --

#: An SSE event: its ``event:`` name (None: no ``event:`` line) and its data (a JSON value).
SSEEvent = tuple[str | None, Any]


def request_json(body: bytes) -> dict[str, Any]:
    """A request's JSON body as an object (``{}`` when it is not one)."""
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_name(request: dict[str, Any]) -> str:
    """The name of the first tool ``request`` offers (OpenAI's ``function.name`` or Anthropic's
    and the responses API's ``name``), or ``wirecap_tool``."""
    for tool in request.get("tools") or ():
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                return name
    return "wirecap_tool"


def encode_sse(events: Iterable[SSEEvent]) -> bytes:
    """``events`` as SSE bytes, each ended by a blank line."""
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def chat_tool_call(tool: str, index: int | None = None) -> dict[str, Any]:
    """An OpenAI chat tool call with broken arguments; ``index`` given: a streamed delta's."""
    call = {
        "id": "call_wirecap",
        "type": "function",
        "function": {"name": tool, "arguments": BAD_ARGUMENTS},
    }
    return call if index is None else {"index": index, **call}


def chat_chunk(
    base: dict[str, Any], delta: dict[str, Any], finish: str | None = None, index: int = 0
) -> dict[str, Any]:
    """An OpenAI chat completion chunk of one choice (``base``: its id, created and model)."""
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return {**base, "object": "chat.completion.chunk", "choices": [choice]}


def responses_tool_item(tool: str) -> dict[str, Any]:
    """A responses API ``function_call`` output item with broken arguments."""
    return {
        "type": "function_call",
        "id": "fc_wirecap",
        "call_id": "call_wirecap",
        "name": tool,
        "arguments": BAD_ARGUMENTS,
        "status": "completed",
    }


def responses_item_events(item: dict[str, Any], output_index: int) -> list[SSEEvent]:
    """The responses API events that stream ``item`` at ``output_index``: added, for a function
    call its arguments (a delta, then done), and done. The caller numbers them
    (``sequence_number``)."""
    at = {"output_index": output_index}
    if item.get("type") != "function_call":
        added: list[tuple[str, dict[str, Any]]] = [("response.output_item.added", {"item": item})]
    else:
        arguments = {"item_id": item["id"], **at}
        added = [
            (
                "response.output_item.added",
                {"item": {**item, "arguments": "", "status": "in_progress"}},
            ),
            ("response.function_call_arguments.delta", {**arguments, "delta": item["arguments"]}),
            (
                "response.function_call_arguments.done",
                {**arguments, "arguments": item["arguments"]},
            ),
        ]
    events = [*added, ("response.output_item.done", {"item": item})]
    return [(name, {"type": name, **at, **payload}) for name, payload in events]


def incomplete(response: dict[str, Any]) -> dict[str, Any]:
    """``response`` (a responses API response object) made incomplete by the token limit."""
    response["status"] = "incomplete"
    response["incomplete_details"] = {"reason": "max_output_tokens"}
    return response


def anthropic_tool_block(tool: str, *, streamed: bool = False) -> dict[str, Any]:
    """An Anthropic ``tool_use`` block: whole, its input is the broken arguments' text; streamed,
    it starts with an empty input and the text comes in a delta (:func:`anthropic_block_events`)."""
    return {
        "type": "tool_use",
        "id": "toolu_wirecap",
        "name": tool,
        "input": {} if streamed else BAD_ARGUMENTS,
    }


def anthropic_block_events(
    start: dict[str, Any], delta: dict[str, Any], index: int
) -> list[SSEEvent]:
    """The Anthropic events that stream one content block: start, one delta, stop."""
    return [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def anthropic_tool_events(tool: str, index: int) -> list[SSEEvent]:
    """A streamed ``tool_use`` block at ``index`` whose input JSON is broken."""
    delta = {"type": "input_json_delta", "partial_json": BAD_ARGUMENTS}
    return anthropic_block_events(anthropic_tool_block(tool, streamed=True), delta, index)


def anthropic_stop_event(stop: str) -> SSEEvent:
    """The Anthropic ``message_delta`` event that gives the stop reason."""
    return (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 1},
        },
    )


def ollama_tool_call(tool: str) -> dict[str, Any]:
    """An Ollama tool call with broken arguments (a text where Ollama sends an object)."""
    return {"function": {"name": tool, "arguments": BAD_ARGUMENTS}}


# -- synthesized answers ----------------------------------------------------------------------------


def synthesized_answer(spec: FaultSpec, target: str, request_body: bytes) -> Answer:
    """A provider-shaped answer that carries the fault (``bad-tool-args``: one tool call whose
    arguments are not JSON; ``length``: text cut by the token limit), streamed when the request
    asked for a stream. Used where there is no real answer to transform."""
    request = request_json(request_body)
    api = api_of(target)
    model = str(request.get("model") or "wirecap-fault")
    tool = tool_name(request) if spec.kind == "bad-tool-args" else None
    stream = request.get("stream") is True or (
        api.startswith("ollama") and request.get("stream") is not False
    )
    build = _BUILDERS.get(api, _BUILDERS["openai.chat"])
    if build is _openai_chat:
        options = request.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        build = functools.partial(_openai_chat, usage_chunk=wants_usage)
    content_type, body = build(model, tool, stream)
    headers = (("Content-Type", content_type), ("X-Wirecap-Fault", spec.kind))
    return Answer(200, headers, body)


def _openai_chat(
    model: str, tool: str | None, stream: bool, *, usage_chunk: bool = False
) -> tuple[str, bytes]:
    """A chat completion; streamed, it ends with the usage-only chunk when ``usage_chunk``
    (``stream_options.include_usage``), as OpenAI's does."""
    finish = "tool_calls" if tool else "length"
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    base = {"id": "chatcmpl-wirecap", "created": 0, "model": model}
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else LENGTH_TEXT}
        if tool:
            message["tool_calls"] = [chat_tool_call(tool)]
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        return "application/json", json.dumps(body).encode()
    delta: dict[str, Any] = {"role": "assistant", "content": None if tool else LENGTH_TEXT}
    if tool:
        delta["tool_calls"] = [chat_tool_call(tool, 0)]
    events: list[SSEEvent] = [
        (None, chat_chunk(base, delta)),
        (None, chat_chunk(base, {}, finish)),
    ]
    if usage_chunk:
        events.append(
            (None, {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        )
    events.append((None, "[DONE]"))
    return "text/event-stream", encode_sse(events)


def _openai_responses(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    if tool:
        item = responses_tool_item(tool)
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
        "status": "completed",
        "incomplete_details": None,
        "output": [item],
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    }
    if not tool:
        incomplete(response)
    if not stream:
        return "application/json", json.dumps(response).encode()
    started = {**response, "status": "in_progress", "incomplete_details": None, "output": []}
    last = "response.completed" if tool else "response.incomplete"
    events = [
        ("response.created", {"type": "response.created", "response": started}),
        *responses_item_events(item, 0),
        (last, {"type": last, "response": response}),
    ]
    numbered = [(name, {**data, "sequence_number": n}) for n, (name, data) in enumerate(events)]
    return "text/event-stream", encode_sse(numbered)


def _anthropic(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    stop = "tool_use" if tool else "max_tokens"
    usage = {"input_tokens": 1, "output_tokens": 1}
    base = {"id": "msg_wirecap", "type": "message", "role": "assistant", "model": model}
    if not stream:
        block = anthropic_tool_block(tool) if tool else {"type": "text", "text": LENGTH_TEXT}
        body = {
            **base,
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return "application/json", json.dumps(body).encode()
    if tool:
        blocks = anthropic_tool_events(tool, 0)
    else:
        text = {"type": "text_delta", "text": LENGTH_TEXT}
        blocks = anthropic_block_events({"type": "text", "text": ""}, text, 0)
    message: dict[str, Any] = {
        **base,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[SSEEvent] = [
        ("message_start", {"type": "message_start", "message": message}),
        *blocks,
        anthropic_stop_event(stop),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "text/event-stream", encode_sse(events)


def _ollama(model: str, tool: str | None, stream: bool) -> tuple[str, bytes]:
    message: dict[str, Any] = {"role": "assistant", "content": "" if tool else LENGTH_TEXT}
    if tool:
        message["tool_calls"] = [ollama_tool_call(tool)]
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
