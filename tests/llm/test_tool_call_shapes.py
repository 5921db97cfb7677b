"""Tool calls in the shapes real traffic has: an Anthropic tool that takes no arguments (its input
streams as one empty ``partial_json``), and OpenAI's legacy ``functions`` style
(``message.function_call``, finish reason ``function_call``), JSON and streamed."""

from __future__ import annotations

import copy
import json

import samples

from wirecap.capture import (
    BodyChunk,
    Exchange,
    ExchangeEnd,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.inspect.analysis import analyze_exchange
from wirecap.inspect.detectors import Thresholds, detect
from wirecap.llm import ExchangeInput, analyze, parse_head

MESSAGES = "/anthropic/v1/messages"
CHAT = "/openai/v1/chat/completions"


def exchange_input(path: str, request: dict, chunks: list[bytes], content_type: str):
    return ExchangeInput(
        method="POST",
        path=path,
        request_head=None,
        request_body=json.dumps(request).encode(),
        status=200,
        response_head=parse_head(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n".encode()
        ),
        response_chunks=tuple((1000 * (i + 1), c) for i, c in enumerate(chunks)),
    )


def captured(path: str, request: dict, chunks: list[bytes], content_type: str) -> Exchange:
    """The exchange as a capture holds it, for the detectors."""
    x = "a0b1c2d3e4f5"
    body = json.dumps(request).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: up\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    ex = Exchange(x)
    ex.add(RequestReceived(x=x, wall_ns=1, method="POST", target=path, head=head, route="/"))
    ex.add(UpstreamRequest(x=x, ns=10, head=head))
    ex.add(BodyChunk(x=x, dir="req", ns=20, data=body))
    response = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n".encode()
    ex.add(ResponseHead(x=x, ns=1000, status=200, by="upstream", head=response))
    for i, chunk in enumerate(chunks):
        ex.add(BodyChunk(x=x, dir="res", ns=2000 + i, data=chunk))
    size = sum(map(len, chunks))
    ex.add(ExchangeEnd(x=x, ns=9000, outcome="ok", status=200, req_bytes=len(body), res_bytes=size))
    return ex


def error_codes(ex: Exchange) -> set[str]:
    findings = detect(analyze_exchange(ex), Thresholds())
    return {f.code for f in findings if f.severity == "error"}


# -- Anthropic: a tool that takes no arguments --------------------------------------------------


def test_anthropic_stream_tool_without_arguments_has_empty_object_input():
    chunks = samples.message_stream(json_parts=("",))
    facts = analyze(exchange_input(MESSAGES, samples.MESSAGES_REQUEST, chunks, "text/event-stream"))
    assert [(t.id, t.name, t.arguments) for t in facts.tool_calls] == [
        ("toolu_1", "get_weather", "{}")
    ]


def test_anthropic_stream_tool_without_arguments_is_not_an_invalid_tool_call():
    chunks = samples.message_stream(json_parts=("",))
    ex = captured(MESSAGES, samples.MESSAGES_REQUEST, chunks, "text/event-stream")
    assert "invalid-tool-arguments" not in error_codes(ex)
    assert error_codes(ex) == set()


def test_anthropic_stream_tool_cut_before_its_block_ends_keeps_what_arrived():
    """Only a block that ended is known to hold no arguments: one cut off mid-way stays as it was
    (the truncated stream is reported by its own detector)."""
    chunks = samples.message_stream(json_parts=('{"city": ',), stop=False)
    cut = [c for c in chunks if b"content_block_stop" not in c or b'"index": 0' in c]
    facts = analyze(exchange_input(MESSAGES, samples.MESSAGES_REQUEST, cut, "text/event-stream"))
    assert [t.arguments for t in facts.tool_calls] == ['{"city": ']


def test_anthropic_stream_tool_with_real_invalid_arguments_is_still_reported():
    chunks = samples.message_stream(json_parts=('{"city": ',))
    ex = captured(MESSAGES, samples.MESSAGES_REQUEST, chunks, "text/event-stream")
    assert "invalid-tool-arguments" in error_codes(ex)


# -- OpenAI: the legacy functions style ---------------------------------------------------------

FUNCTIONS_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "functions": [{"name": "get_weather", "parameters": {"type": "object"}}],
}


def legacy_chat_json(arguments: str = '{"city": "Paris"}') -> bytes:
    body = copy.deepcopy(samples.CHAT_JSON)
    choice = body["choices"][0]
    choice["message"] = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "get_weather", "arguments": arguments},
    }
    choice["finish_reason"] = "function_call"
    return json.dumps(body).encode()


def legacy_chat_stream(parts: tuple[str, ...] = ('{"ci', 'ty": "Paris"}')) -> list[bytes]:
    base = {
        "id": "chatcmpl-f",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
    }

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return samples.sse(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        )

    first = {"role": "assistant", "content": None}
    first["function_call"] = {"name": "get_weather", "arguments": ""}
    out = [chunk(first)]
    out += [chunk({"function_call": {"arguments": p}}) for p in parts]
    out.append(chunk({}, "function_call"))
    out.append(b"data: [DONE]\n\n")
    return out


def test_openai_legacy_function_call_json_shows_its_tool_call():
    facts = analyze(
        exchange_input(CHAT, FUNCTIONS_REQUEST, [legacy_chat_json()], "application/json")
    )
    assert facts.finish_reason == "function_call"
    assert [(t.name, t.arguments) for t in facts.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]


def test_openai_legacy_function_call_stream_shows_its_tool_call():
    chunks = legacy_chat_stream()
    facts = analyze(exchange_input(CHAT, FUNCTIONS_REQUEST, chunks, "text/event-stream"))
    assert facts.terminated and facts.finish_reason == "function_call"
    assert [(t.name, t.arguments) for t in facts.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    body = b"".join(chunks)
    for cut in range(0, len(body) + 1, 7):  # however the reads cut the stream
        split = analyze(
            exchange_input(CHAT, FUNCTIONS_REQUEST, [body[:cut], body[cut:]], "text/event-stream")
        )
        assert [(t.name, t.arguments) for t in split.tool_calls] == [
            ("get_weather", '{"city": "Paris"}')
        ]


def test_openai_legacy_function_call_is_not_an_empty_completion_and_bad_arguments_are_seen():
    clean = captured(CHAT, FUNCTIONS_REQUEST, [legacy_chat_json()], "application/json")
    findings = {f.code for f in detect(analyze_exchange(clean), Thresholds())}
    assert "empty-completion" not in findings and "invalid-tool-arguments" not in findings
    bad = captured(CHAT, FUNCTIONS_REQUEST, [legacy_chat_json('{"city": ')], "application/json")
    assert "invalid-tool-arguments" in error_codes(bad)


def test_openai_stream_tool_without_arguments_has_empty_object_input():
    """Some OpenAI-compatible servers stream ``"arguments": null`` for a tool that takes none, and
    never a ``"{}"``: once the stream has finished, its input is ``{}``, not an invalid call."""
    chunks = samples.chat_stream(text=(), tool=("call_1", "llm_version", []), finish="tool_calls")
    chunks = [c.replace(b'"arguments": ""', b'"arguments": null') for c in chunks]
    facts = analyze(exchange_input(CHAT, samples.CHAT_REQUEST, chunks, "text/event-stream"))
    assert [(t.name, t.arguments) for t in facts.tool_calls] == [("llm_version", "{}")]
    ex = captured(CHAT, samples.CHAT_REQUEST, chunks, "text/event-stream")
    assert error_codes(ex) == set()


def test_openai_stream_cut_before_it_finished_keeps_the_arguments_that_arrived():
    chunks = samples.chat_stream(
        text=(), tool=("call_1", "get_weather", []), finish="tool_calls", done=False
    )
    cut = [c for c in chunks if b'"finish_reason": "tool_calls"' not in c]
    facts = analyze(exchange_input(CHAT, samples.CHAT_REQUEST, cut, "text/event-stream"))
    assert [t.arguments for t in facts.tool_calls] == [""]
