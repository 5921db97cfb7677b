"""Wire samples written from the providers' documented formats, shared by tests (and fixture makers)."""

from __future__ import annotations

import json


def sse(data: object, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


# -- OpenAI chat completions ------------------------------------------------------------------------

CHAT_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}

CHAT_JSON = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!"},
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


def chat_stream(
    *,
    text: tuple[str, ...] = ("Hel", "lo"),
    tool: tuple[str, str, list[str]] | None = None,
    finish: str = "stop",
    usage: bool = True,
    done: bool = True,
) -> list[bytes]:
    base = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
    }
    events = [
        dict(
            base,
            choices=[
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        )
    ]
    events += [
        dict(base, choices=[{"index": 0, "delta": {"content": t}, "finish_reason": None}])
        for t in text
    ]
    if tool:
        call_id, name, parts = tool
        events.append(
            dict(
                base,
                choices=[
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": call_id,
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ],
            )
        )
        events += [
            dict(
                base,
                choices=[
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]},
                        "finish_reason": None,
                    }
                ],
            )
            for p in parts
        ]
    events.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage:
        events.append(
            dict(
                base,
                choices=[],
                usage={"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
            )
        )
    out = [sse(e) for e in events]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


# -- OpenAI responses API --------------------------------------------------------------------------

RESPONSES_REQUEST = {"model": "gpt-4.1", "input": "Say hi and call a tool", "stream": True}


def responses_stream(*, completed: bool = True) -> list[bytes]:
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-4.1-2025-04-14",
        "status": "in_progress",
        "usage": None,
    }
    events = [
        ("response.created", {"type": "response.created", "response": response}),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {"id": "msg_1", "type": "message", "role": "assistant", "content": []},
            },
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hi",
            },
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": " there",
            },
        ),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": {
                    "id": "fc_1",
                    "type": "function_call",
                    "call_id": "call_9",
                    "name": "lookup",
                    "arguments": "",
                },
            },
        ),
        (
            "response.function_call_arguments.delta",
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_1",
                "output_index": 1,
                "delta": '{"q":',
            },
        ),
        (
            "response.function_call_arguments.delta",
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_1",
                "output_index": 1,
                "delta": '"paris"}',
            },
        ),
    ]
    if completed:
        done = dict(
            response,
            status="completed",
            usage={
                "input_tokens": 20,
                "output_tokens": 11,
                "total_tokens": 31,
                "input_tokens_details": {"cached_tokens": 0},
            },
        )
        events.append(("response.completed", {"type": "response.completed", "response": done}))
    return [sse(data, name) for name, data in events]


RESPONSES_JSON = {
    "id": "resp_2",
    "object": "response",
    "model": "gpt-4.1-2025-04-14",
    "status": "incomplete",
    "incomplete_details": {"reason": "max_output_tokens"},
    "output": [
        {
            "type": "message",
            "id": "msg_2",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Partial answ"}],
        }
    ],
    "usage": {"input_tokens": 5, "output_tokens": 16, "total_tokens": 21},
}

# -- Anthropic messages ----------------------------------------------------------------------------

MESSAGES_REQUEST = {
    "model": "claude-wirecap-test",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}

MESSAGE_JSON = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-wirecap-test",
    "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 30, "cache_read_input_tokens": 10},
}


def message_stream(
    *,
    stop: bool = True,
    stop_reason: str = "tool_use",
    text: tuple[str, ...] = ("Let me ", "check."),
    json_parts: tuple[str, ...] | None = ('{"city": ', '"Paris"}'),
    message: dict | None = None,
    output_tokens: int = 30,
) -> list[bytes]:
    """An Anthropic message stream: text deltas, then (unless ``json_parts`` is None) a tool_use block."""
    base = message or MESSAGE_JSON
    start = {
        **base,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": base["usage"]["input_tokens"], "output_tokens": 1},
    }
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in text
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if json_parts is not None:
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {},
                    },
                },
            )
        )
        events += [
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": p},
                },
            )
            for p in json_parts
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    if stop:
        events.append(("message_stop", {"type": "message_stop"}))
    return [sse(data, name) for name, data in events]


# -- Ollama ----------------------------------------------------------------------------------------

OLLAMA_CHAT_REQUEST = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def ollama_chat_stream(*, done: bool = True) -> list[bytes]:
    lines = [
        {
            "model": "llama3.2",
            "created_at": "2026-11-23T12:00:00Z",
            "message": {"role": "assistant", "content": w},
            "done": False,
        }
        for w in ("The", " sky", " is blue.")
    ]
    if done:
        lines.append(
            {
                "model": "llama3.2",
                "created_at": "2026-11-23T12:00:01Z",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "total_duration": 5,
                "prompt_eval_count": 26,
                "eval_count": 290,
            }
        )
    return [json.dumps(line).encode() + b"\n" for line in lines]


OLLAMA_GENERATE_JSON = {
    "model": "llama3.2",
    "created_at": "2026-11-23T12:00:00Z",
    "response": "Blue, because of Rayleigh scattering.",
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 10,
    "eval_count": 8,
}
