"""Provider adapters against wire samples, including every split of each stream at every byte."""

from __future__ import annotations

import json

import pytest
import samples

from wirecap.llm import ExchangeInput, analyze, parse_head
from wirecap.llm.facts import KEPT_PROBLEMS, MAX_STREAMED_CALLS


def exchange(
    path: str,
    request: dict,
    chunks: list[bytes],
    content_type: str,
    *,
    status: int = 200,
    method: str = "POST",
) -> ExchangeInput:
    return ExchangeInput(
        method=method,
        path=path,
        request_head=None,
        request_body=json.dumps(request).encode(),
        status=status,
        response_head=parse_head(
            f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n\r\n".encode()
        ),
        response_chunks=tuple((1000 * (i + 1), c) for i, c in enumerate(chunks)),
    )


def key_facts(f):
    return (
        f.api,
        f.streamed,
        f.model_requested,
        f.model_returned,
        f.text,
        f.finish_reason,
        f.terminated,
        [(t.id, t.name, t.arguments) for t in f.tool_calls],
        None if f.usage is None else (f.usage.input, f.usage.output, f.usage.cached, f.usage.total),
        f.malformed_sse,
        f.malformed_json,
    )


def assert_split_invariant(path, request, chunks, content_type):
    whole = analyze(exchange(path, request, chunks, content_type))
    body = b"".join(chunks)
    for cut in range(len(body) + 1):
        split = analyze(exchange(path, request, [body[:cut], body[cut:]], content_type))
        assert key_facts(split) == key_facts(whole), cut
    return whole


def test_openai_chat_stream_with_tool_call_and_usage():
    chunks = samples.chat_stream(
        text=("Let me ", "check."),
        tool=("call_1", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']),
        finish="tool_calls",
    )
    facts = assert_split_invariant(
        "/openai/v1/chat/completions", samples.CHAT_REQUEST, chunks, "text/event-stream"
    )
    assert facts.api == "openai.chat" and facts.streamed and facts.terminated
    assert (
        facts.model_requested == "gpt-4o-mini" and facts.model_returned == "gpt-4o-mini-2024-07-18"
    )
    assert facts.text == "Let me check." and facts.finish_reason == "tool_calls"
    assert [(t.id, t.name, t.arguments) for t in facts.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}')
    ]
    assert (facts.usage.input, facts.usage.output, facts.usage.total) == (12, 7, 19)
    assert facts.ttft_ns == 2000  # the first chunk with content, not the role-only one


def test_openai_chat_stream_truncated_has_no_done():
    chunks = samples.chat_stream(done=False, usage=False)[:-1]
    facts = analyze(
        exchange("/v1/chat/completions", samples.CHAT_REQUEST, chunks, "text/event-stream")
    )
    assert facts.terminated is False and facts.finish_reason is None and facts.usage is None


def test_openai_chat_json():
    facts = analyze(
        exchange(
            "/v1/chat/completions",
            {"model": "gpt-4o-mini"},
            [json.dumps(samples.CHAT_JSON).encode()],
            "application/json",
        )
    )
    assert not facts.streamed and facts.text == "Hello there!" and facts.finish_reason == "stop"
    assert (facts.usage.input, facts.usage.output, facts.usage.cached, facts.usage.total) == (
        9,
        3,
        4,
        12,
    )
    assert facts.ttft_ns == 1000


def test_openai_responses_stream():
    facts = assert_split_invariant(
        "/v1/responses", samples.RESPONSES_REQUEST, samples.responses_stream(), "text/event-stream"
    )
    assert facts.api == "openai.responses" and facts.terminated
    assert facts.text == "Hi there" and facts.model_returned == "gpt-4.1-2025-04-14"
    assert [(t.id, t.name, t.arguments) for t in facts.tool_calls] == [
        ("call_9", "lookup", '{"q":"paris"}')
    ]
    assert (facts.usage.input, facts.usage.output, facts.usage.total) == (20, 11, 31)
    assert facts.finish_reason == "completed"
    cut = analyze(
        exchange(
            "/v1/responses",
            samples.RESPONSES_REQUEST,
            samples.responses_stream(completed=False),
            "text/event-stream",
        )
    )
    assert cut.terminated is False


def test_openai_responses_json_incomplete():
    facts = analyze(
        exchange(
            "/v1/responses",
            {"model": "gpt-4.1"},
            [json.dumps(samples.RESPONSES_JSON).encode()],
            "application/json",
        )
    )
    assert facts.text == "Partial answ" and facts.finish_reason == "max_output_tokens"


def test_anthropic_stream_with_tool_use():
    facts = assert_split_invariant(
        "/anthropic/v1/messages",
        samples.MESSAGES_REQUEST,
        samples.message_stream(),
        "text/event-stream",
    )
    assert facts.api == "anthropic.messages" and facts.terminated
    assert facts.text == "Let me check." and facts.finish_reason == "tool_use"
    assert [(t.id, t.name, t.arguments) for t in facts.tool_calls] == [
        ("toolu_1", "get_weather", '{"city": "Paris"}')
    ]
    assert (facts.usage.input, facts.usage.output) == (25, 30)
    no_stop = analyze(
        exchange(
            "/v1/messages",
            samples.MESSAGES_REQUEST,
            samples.message_stream(stop=False),
            "text/event-stream",
        )
    )
    assert no_stop.terminated is False


def test_anthropic_json():
    facts = analyze(
        exchange(
            "/v1/messages",
            {"model": "claude-wirecap-test"},
            [json.dumps(samples.MESSAGE_JSON).encode()],
            "application/json",
        )
    )
    assert facts.text == "Let me check." and facts.finish_reason == "tool_use"
    assert [(t.name, json.loads(t.arguments)) for t in facts.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert (facts.usage.input, facts.usage.output, facts.usage.cached) == (25, 30, 10)


def test_ollama_chat_ndjson_and_generate_json():
    facts = assert_split_invariant(
        "/ollama/api/chat",
        samples.OLLAMA_CHAT_REQUEST,
        samples.ollama_chat_stream(),
        "application/x-ndjson",
    )
    assert facts.api == "ollama.chat" and facts.streamed and facts.terminated
    assert facts.text == "The sky is blue." and facts.finish_reason == "stop"
    assert (facts.usage.input, facts.usage.output) == (26, 290)
    assert facts.tokens_per_second is not None and facts.tokens_per_second > 0
    cut = analyze(
        exchange(
            "/api/chat",
            samples.OLLAMA_CHAT_REQUEST,
            samples.ollama_chat_stream(done=False),
            "application/x-ndjson",
        )
    )
    assert cut.terminated is False
    gen = analyze(
        exchange(
            "/api/generate",
            {"model": "llama3.2"},
            [json.dumps(samples.OLLAMA_GENERATE_JSON).encode()],
            "application/json",
        )
    )
    assert gen.api == "ollama.generate" and gen.text.startswith("Blue") and gen.usage.output == 8


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [("/v1/models", "application/json", b'{"data": []}'), ("/health", "text/plain", b"ok")],
)
def test_unknown_apis_fall_back_to_http_facts(path, content_type, body):
    facts = analyze(exchange(path, {}, [body], content_type, method="GET"))
    assert facts.api == "http" and facts.ttft_ns == 1000


def test_malformed_stream_is_reported():
    chunks = [
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n',
        b"data: {not json}\n\n",
        b"data: [DONE]\n\n",
    ]
    facts = analyze(exchange("/v1/chat/completions", {}, chunks, "text/event-stream"))
    assert facts.text == "a" and facts.terminated and len(facts.malformed_json) == 1


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def test_json_problems_past_the_first_few_are_counted_not_kept():
    chunks = [b"data: {not json}\n\n" * 5000, b"data: [DONE]\n\n"]
    facts = analyze(exchange("/v1/chat/completions", {}, chunks, "text/event-stream"))
    assert facts.events == 5001 and facts.terminated
    assert len(facts.malformed_json) == KEPT_PROBLEMS
    assert facts.more_malformed_json == 5000 - KEPT_PROBLEMS


def chat_call(index: int, arguments: str) -> dict:
    return {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]},
            }
        ]
    }


@pytest.mark.parametrize(
    ("path", "piece", "call"),
    [
        ("/v1/chat/completions", lambda a: chat_call(0, a), lambda i: chat_call(i, "")),
        (
            "/v1/responses",
            lambda a: {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_0",
                "delta": a,
            },
            lambda i: {
                "type": "response.output_item.added",
                "item": {"type": "function_call", "id": f"fc_{i}"},
            },
        ),
        (
            "/v1/messages",
            lambda a: {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": a},
            },
            lambda i: {
                "type": "content_block_start",
                "index": i,
                "content_block": {"type": "tool_use", "id": f"t{i}"},
            },
        ),
    ],
)
def test_streamed_tool_calls_join_many_pieces_and_stop_at_the_limit(path, piece, call):
    arguments = [f"{i % 10}" for i in range(20_000)]
    first = [call(0)] if path != "/v1/chat/completions" else []
    stream = sse(*first, *map(piece, arguments))
    facts = analyze(exchange(path, {}, [stream[:7], stream[7:]], "text/event-stream"))
    assert [t.arguments for t in facts.tool_calls] == ["".join(arguments)]

    calls = sse(*(call(i) for i in range(MAX_STREAMED_CALLS + 5)))
    facts = analyze(exchange(path, {}, [calls], "text/event-stream"))
    assert len(facts.tool_calls) == MAX_STREAMED_CALLS
    assert any("past the first 1024 calls are left out" in p for p in facts.malformed_json)
