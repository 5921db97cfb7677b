"""Body transforms, sans-IO: what each stream kind sends, pauses and cuts."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirecap.faults import BodyFault, Cut, Pause, Send, parse_fault, synthesized_answer
from wirecap.llm import ExchangeInput, analyze, parse_head

EVENTS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b'data: {"n": 3}\n\n', b"data: [DONE]\n\n"]


def run(
    spec: str,
    pieces: list[bytes],
    content_type: str = "text/event-stream",
    target: str = "/v1/chat/completions",
):
    fault = BodyFault(parse_fault(spec), target=target, content_type=content_type)
    steps = [s for piece in pieces for s in fault.feed(piece)] + fault.close()
    return steps, fault


def sent(steps) -> bytes:
    return b"".join(s.data for s in steps if isinstance(s, Send))


@pytest.mark.parametrize("split", [1, 7, 1000])
def test_truncate_leaves_out_the_last_event_however_the_bytes_arrive(split):
    body = b"".join(EVENTS)
    steps, fault = run("truncate", [body[i : i + split] for i in range(0, len(body), split)])
    assert sent(steps) == b"".join(EVENTS[:-1])
    assert not any(isinstance(s, Cut) for s in steps) and fault.applied


@pytest.mark.parametrize(("after", "kept"), [(0, 0), (1, 1), (2, 2), (9, 3)])
def test_disconnect_cuts_after_n_events_and_never_sends_the_terminator(after, kept):
    steps, _ = run(f"disconnect,after-events={after}", EVENTS)
    assert sent(steps) == b"".join(EVENTS[:kept])
    assert isinstance(steps[-1], Cut)


def test_stall_and_slow_ttft_pause_where_they_say():
    steps, _ = run("stall,ms=250,after-events=2", EVENTS)
    assert steps[2] == Pause(0.25) and sent(steps) == b"".join(EVENTS)
    steps, _ = run("slow-ttft,ms=40", EVENTS)
    assert steps[0] == Pause(0.04) and sent(steps) == b"".join(EVENTS)


def test_malformed_sse_adds_an_event_that_is_not_utf8():
    steps, _ = run("malformed-sse", EVENTS)
    body = sent(steps)
    assert body.startswith(EVENTS[0] + b"data: ") and b"\xff" in body and body.endswith(EVENTS[-1])


def test_a_json_answer_is_cut_in_half_or_rewritten():
    body = json.dumps(
        {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    ).encode()
    steps, _ = run("disconnect", [body], "application/json")
    assert sent(steps) == body[: len(body) // 2] and isinstance(steps[-1], Cut)
    steps, fault = run("length", [body], "application/json")
    assert json.loads(sent(steps))["choices"][0]["finish_reason"] == "length" and fault.applied


def test_bad_tool_args_breaks_each_streamed_call_once():
    def chunk(index: int, args: str) -> bytes:
        call = {"index": index, "function": {"arguments": args}}
        return (
            b"data: "
            + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}).encode()
            + b"\n\n"
        )

    steps, fault = run(
        "bad-tool-args", [chunk(0, '{"a"'), chunk(0, ": 1}"), chunk(1, "{}"), EVENTS[-1]]
    )
    args: dict[int, str] = {}
    for line in sent(steps).split(b"\n\n")[:-2]:
        call = json.loads(line[6:])["choices"][0]["delta"]["tool_calls"][0]
        args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert args == {0: '{{"a": 1}', 1: "{{}"} and fault.applied


def test_a_rewrite_with_nothing_to_rewrite_says_so():
    _steps, fault = run("bad-tool-args", EVENTS)
    assert not fault.applied


def test_a_rewritten_anthropic_event_keeps_its_event_line_with_its_data():
    """An SSE event with an ``event:`` field stays one event after a rewrite: the Anthropic
    SDK's decoder reads the new stop reason from it."""
    from anthropic._streaming import SSEDecoder

    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}
    events = [
        b'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n',
        b"event: message_delta\ndata: " + json.dumps(delta).encode() + b"\n\n",
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n',
    ]
    steps, fault = run("length", events, target="/v1/messages")
    assert fault.applied
    decoded = [(e.event, e.data) for e in SSEDecoder().iter_bytes(iter([sent(steps)]))]
    assert [name for name, _ in decoded] == ["message_start", "message_delta", "message_stop"]
    assert json.loads(decoded[1][1])["delta"]["stop_reason"] == "max_tokens"


def test_an_answer_held_back_past_the_bound_is_cut_not_buffered(monkeypatch):
    from wirecap.faults import body

    monkeypatch.setattr(body, "MAX_HELD_BYTES", 1000)
    steps, _ = run("length", [b"{" + b" " * 600, b" " * 600, b"}"], "application/json")
    assert isinstance(steps[-1], Cut) and sent(steps) == b""
    steps, _ = run("stall,ms=5", [b"data: " + b"x" * 1500])  # an event that never ends
    assert isinstance(steps[-1], Cut)


# -- what the proxy adds where a rewrite finds nothing --------------------------------------------


def sse(*events: tuple[str | None, object]) -> list[bytes]:
    return [
        (f"event: {name}\n" if name else "").encode()
        + b"data: "
        + (data.encode() if isinstance(data, str) else json.dumps(data).encode())
        + b"\n\n"
        for name, data in events
    ]


def ndjson(*values: object) -> list[bytes]:
    return [json.dumps(v).encode() + b"\n" for v in values]


def chat_chunk(delta: dict, finish: str | None = None) -> tuple[None, dict]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return None, {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


def anthropic_event(kind: str, **fields: object) -> tuple[str, dict]:
    return kind, {"type": kind, **fields}


def responses_event(kind: str, n: int, **fields: object) -> tuple[str, dict]:
    return kind, {"type": kind, "sequence_number": n, **fields}


MESSAGE_ITEM = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
RESPONSE = {"id": "resp_1", "object": "response", "model": "m", "status": "completed"}

#: Answers without a tool call, one per shape: target, content type, the answer's events (a JSON
#: body is one), and how many of the last events finish the message (the stream's terminator
#: and the event that carries its finish reason, which the additions go before).
PLAIN: dict[str, tuple[str, str, list[bytes], int]] = {
    "openai-json": (
        "/v1/chat/completions",
        "application/json",
        [
            json.dumps(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hi"},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
        ],
        1,
    ),
    "openai-sse": (
        "/v1/chat/completions",
        "text/event-stream",
        sse(
            chat_chunk({"role": "assistant", "content": "Hel"}),
            chat_chunk({"content": "lo"}),
            chat_chunk({}, "stop"),
            (None, "[DONE]"),
        ),
        2,
    ),
    "responses-json": (
        "/v1/responses",
        "application/json",
        [json.dumps({**RESPONSE, "output": [MESSAGE_ITEM]}).encode()],
        1,
    ),
    "responses-sse": (
        "/v1/responses",
        "text/event-stream",
        sse(
            responses_event("response.created", 0, response={**RESPONSE, "status": "in_progress"}),
            responses_event("response.output_item.added", 1, output_index=0, item=MESSAGE_ITEM),
            responses_event(
                "response.output_text.delta", 2, item_id="msg_1", output_index=0, delta="hi"
            ),
            responses_event("response.output_item.done", 3, output_index=0, item=MESSAGE_ITEM),
            responses_event("response.completed", 4, response={**RESPONSE, "output": []}),
        ),
        1,
    ),
    "anthropic-json": (
        "/v1/messages",
        "application/json",
        [
            json.dumps(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": "hi"}],
                    "stop_reason": "end_turn",
                }
            ).encode()
        ],
        1,
    ),
    "anthropic-sse": (
        "/v1/messages",
        "text/event-stream",
        sse(
            anthropic_event("message_start", message={"id": "msg_1", "content": []}),
            anthropic_event(
                "content_block_start", index=0, content_block={"type": "text", "text": ""}
            ),
            anthropic_event(
                "content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"}
            ),
            anthropic_event("content_block_stop", index=0),
            anthropic_event(
                "message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}
            ),
            anthropic_event("message_stop"),
        ),
        2,
    ),
    "ollama-json": (
        "/api/chat",
        "application/json",
        ndjson(
            {
                "model": "m",
                "message": {"role": "assistant", "content": "hi"},
                "done": True,
                "done_reason": "stop",
            }
        ),
        1,
    ),
    "ollama-ndjson": (
        "/api/chat",
        "application/x-ndjson",
        ndjson(
            {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": False},
            {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True},
        ),
        1,
    ),
}
STREAMS = [
    name for name, (_, content_type, _, _) in PLAIN.items() if content_type != "application/json"
]
TOOLS_REQUEST = json.dumps(
    {"model": "m", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
).encode()


def facts_of(target: str, content_type: str, body: bytes):
    """What wirecap's own adapters make of an answer (the detectors read these facts)."""
    from wirecap.llm import ExchangeInput, analyze, parse_head

    head = parse_head(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n".encode())
    return analyze(
        ExchangeInput(
            method="POST",
            path=target,
            request_head=None,
            request_body=TOOLS_REQUEST,
            status=200,
            response_head=head,
            response_chunks=((0, body),),
        )
    )


def added(spec: str, shape: str, pieces: list[bytes] | None = None, **kwargs):
    target, content_type, events, _ = PLAIN[shape]
    fault = BodyFault(
        parse_fault(spec),
        target=target,
        content_type=content_type,
        request_body=kwargs.pop("request_body", TOOLS_REQUEST),
        **kwargs,
    )
    body = b"".join(events)
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)] if pieces is None else pieces
    steps = [s for piece in pieces for s in fault.feed(piece)] + fault.close()
    return sent(steps), fault


@pytest.mark.parametrize("shape", PLAIN)
def test_bad_tool_args_adds_a_broken_tool_call_to_an_answer_without_one(shape):
    target, content_type, events, finishing = PLAIN[shape]
    body, fault = added("bad-tool-args", shape)
    assert fault.applied and fault.synthesized
    facts = facts_of(target, content_type, body)
    assert [call.name for call in facts.tool_calls] == ["get_weather"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(facts.tool_calls[0].arguments)
    assert facts.finish_reason in ("tool_calls", "tool_use", "completed", "stop")
    if content_type != "application/json":
        # Streamed: the additions come before the events that finish the message, which still
        # end the stream; what came before is unchanged.
        assert facts.terminated is True
        tail = b"".join(events[-finishing:])
        assert body.startswith(b"".join(events[:-finishing]))
        assert body.index(b"wirecap_fault") < len(body) - len(tail)


@pytest.mark.parametrize("shape", ["openai-sse", "anthropic-sse"])
def test_the_added_tool_call_is_the_finish_reason_of_a_stream(shape):
    target, content_type, _, _ = PLAIN[shape]
    body, _ = added("bad-tool-args", shape)
    assert facts_of(target, content_type, body).finish_reason in ("tool_calls", "tool_use")


@pytest.mark.parametrize("shape", STREAMS)
def test_a_stream_without_its_end_gets_the_tool_call_at_its_close(shape):
    target, content_type, events, finishing = PLAIN[shape]
    cut = b"".join(events[:-finishing])
    body, fault = added("bad-tool-args", shape, [cut])
    assert fault.applied and fault.synthesized
    assert body.startswith(cut) and len(body) > len(cut)
    facts = facts_of(target, content_type, body)
    assert [call.name for call in facts.tool_calls] == ["get_weather"]


def test_the_tool_is_the_requests_first_else_a_fixed_name():
    anthropic_request = json.dumps({"tools": [{"name": "lookup", "input_schema": {}}]}).encode()
    for request, name in [
        (anthropic_request, "lookup"),
        (b"{}", "wirecap_tool"),
        (b"", "wirecap_tool"),
    ]:
        body, _ = added(
            "bad-tool-args", "anthropic-json", [PLAIN["anthropic-json"][2][0]], request_body=request
        )
        assert json.loads(body)["content"][-1]["name"] == name


def test_added_events_are_numbered_and_the_item_joins_the_final_response():
    body, _ = added("bad-tool-args", "responses-sse")
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert [item["type"] for item in events[-1]["response"]["output"]] == ["function_call"]


LENGTH_WITHOUT_FINISH = {
    "openai-json": lambda b: b.replace(b'"finish_reason": "stop"', b'"finish_reason": null'),
    "openai-sse": lambda b: b.replace(b'"finish_reason": "stop"', b'"finish_reason": null'),
    "responses-json": lambda b: b.replace(b'"status": "completed"', b'"status": "in_progress"'),
    "responses-sse": lambda b: b.replace(b"response.completed", b"response.failed").replace(
        b'"status": "completed"', b'"status": "failed"'
    ),
    "anthropic-json": lambda b: b.replace(b'"stop_reason": "end_turn"', b'"stop_reason": null'),
    "anthropic-sse": lambda b: b.replace(b'"stop_reason": "end_turn"', b'"stop_reason": null'),
    "ollama-json": lambda b: b.replace(b', "done": true, "done_reason": "stop"', b""),
    "ollama-ndjson": lambda b: b.rsplit(b"\n", 2)[0] + b"\n",  # no done line
}


@pytest.mark.parametrize("shape", PLAIN)
def test_length_sets_a_finish_reason_where_the_answer_has_none(shape):
    target, content_type, events, _ = PLAIN[shape]
    body = LENGTH_WITHOUT_FINISH[shape](b"".join(events))
    assert body != b"".join(events)
    sent_body, fault = added("length", shape, [body])
    assert fault.applied and fault.synthesized
    facts = facts_of(target, content_type, sent_body)
    assert facts.finish_reason in ("length", "max_tokens", "max_output_tokens")


@pytest.mark.parametrize(
    ("shape", "status", "body"),
    [
        ("openai-json", 429, b'{"error": {"message": "slow down"}}'),
        ("openai-json", 200, b"<html>not an answer</html>"),
        ("openai-json", 200, b'{"object": "list", "data": []}'),
        ("anthropic-json", 200, b'{"type": "error", "error": {"type": "api_error"}}'),
        ("ollama-json", 200, b'{"error": "model not found"}'),
        ("openai-sse", 200, b'data: {"progress": 1}\n\n'),
        # a legacy completion (text, not a message): nothing can hold a tool call
        ("openai-sse", 200, b'data: {"choices": [{"text": "hi", "finish_reason": null}]}\n\n'),
        ("anthropic-sse", 200, b""),
    ],
)
def test_what_cannot_carry_the_fault_passes_unchanged(shape, status, body):
    for spec in ("bad-tool-args", "length"):
        sent_body, fault = added(spec, shape, [body], status=status)
        assert sent_body == body and not fault.applied and not fault.synthesized


def test_without_the_request_body_nothing_is_added():
    """``wirecap serve`` gives none: it synthesizes a whole answer of its own instead."""
    for shape in PLAIN:
        body, fault = added("bad-tool-args", shape, request_body=None)
        assert body == b"".join(PLAIN[shape][2]) and not fault.applied


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from(STREAMS),
    spec=st.sampled_from(["bad-tool-args", "length"]),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_what_is_added_does_not_depend_on_how_the_bytes_arrive(shape, spec, cuts):
    body = b"".join(PLAIN[shape][2])
    if spec == "length":
        body = LENGTH_WITHOUT_FINISH[shape](body)
    edges = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    pieces = [body[a:b] for a, b in itertools.pairwise(edges)]
    assert added(spec, shape, pieces)[0] == added(spec, shape, [body])[0]


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_synthesized_chat_stream_ends_with_usage_when_the_request_asks(include_usage):
    request = {"model": "gpt-4o-mini", "stream": True}
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    answer = synthesized_answer(
        parse_fault("length"), "/v1/chat/completions", json.dumps(request).encode()
    )
    events = [e[len("data: ") :] for e in answer.body.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert ("usage" in last and last["choices"] == []) is include_usage
    facts = analyze(
        ExchangeInput(
            method="POST",
            path="/v1/chat/completions",
            request_head=None,
            request_body=json.dumps(request).encode(),
            status=200,
            response_head=parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"),
            response_chunks=((1, answer.body),),
        )
    )
    assert (facts.usage is not None) is include_usage and facts.finish_reason == "length"
