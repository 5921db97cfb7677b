"""Body transforms, sans-IO: what each stream kind sends, pauses and cuts."""

from __future__ import annotations

import json

import pytest

from wirecap.faults import BodyFault, Cut, Pause, Send, parse_fault

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
