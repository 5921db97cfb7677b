"""The OpenAI Realtime adapter, on sessions given as decoded messages (sans-IO, table-like)."""

from __future__ import annotations

import json

from wirecap.llm import ExchangeInput, analyze
from wirecap.llm.websocket import WsMessage, WsSession


def text(direction: str, ns: int, event: dict) -> WsMessage:
    body = json.dumps(event)
    return WsMessage(dir=direction, ns=ns, opcode="text", data=body.encode(), text=body)


def close(direction: str, ns: int) -> WsMessage:
    return WsMessage(dir=direction, ns=ns, opcode="close", data=b"", close_code=1000)


def done(rid: str, output: int, status: str = "completed", reason: str | None = None) -> dict:
    response = {
        "id": rid,
        "status": status,
        "usage": {
            "input_tokens": 10,
            "output_tokens": output,
            "total_tokens": 10 + output,
            "input_token_details": {"cached_tokens": 4},
        },
    }
    if reason:
        response["status_details"] = {"type": status, "reason": reason}
    return {"type": "response.done", "response": response}


def facts_of(messages: list[WsMessage], path: str = "/v1/realtime?model=gpt-realtime"):
    inp = ExchangeInput(
        method="GET",
        path=path,
        request_head=None,
        request_body=b"",
        status=101,
        response_head=None,
        response_chunks=(),
        session=WsSession(messages=messages),
    )
    return analyze(inp)


SESSION = [
    text("res", 1_000, {"type": "session.created", "session": {"model": "gpt-realtime-2025"}}),
    text("req", 5_000_000, {"type": "response.create"}),
    text("res", 6_000_000, {"type": "response.created", "response": {"id": "r1"}}),
    text("res", 9_000_000, {"type": "response.output_audio.delta", "delta": "AAAA"}),
    text("res", 9_500_000, {"type": "response.output_audio_transcript.delta", "delta": "Hi"}),
    text("res", 9_600_000, {"type": "response.output_text.delta", "delta": " there"}),
    text("res", 10_000_000, done("r1", 3)),
    text("req", 20_000_000, {"type": "input_audio_buffer.append", "audio": "AAAA"}),
    text("res", 21_000_000, {"type": "response.created", "response": {"id": "r2"}}),
    text("res", 25_000_000, {"type": "response.text.delta", "delta": "!"}),
    text("res", 26_000_000, done("r2", 1)),
    close("req", 30_000_000),
    close("res", 30_100_000),
]


def test_model_usage_ttft_and_text_of_a_whole_session():
    facts = facts_of(SESSION)
    assert facts.api == "openai.realtime" and facts.streamed
    assert (facts.model_requested, facts.model_returned) == ("gpt-realtime", "gpt-realtime-2025")
    assert facts.usage is not None
    assert (facts.usage.input, facts.usage.output, facts.usage.total) == (20, 4, 24)
    assert facts.usage.cached == 8
    # From the client's response.create (5 ms) to the first output delta (9 ms, audio).
    assert facts.ttft_ns == 4_000_000
    assert facts.text == "Hi there!"
    assert facts.finish_reason == "completed"
    assert facts.terminated is True
    assert facts.api_error is None
    assert facts.stall_times == (
        9_000_000,
        9_500_000,
        9_600_000,
        10_000_000,
        25_000_000,
        26_000_000,
    )


def test_a_response_without_its_done_or_a_session_without_close_is_not_terminated():
    assert facts_of(SESSION[:9] + SESSION[-2:]).terminated is False  # r2 never finished
    assert facts_of(SESSION[:-2]).terminated is False  # no Close frame either way


def test_error_events_failed_responses_and_length_limits():
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    facts = facts_of([*SESSION[:3], text("res", 7_000_000, error)])
    assert facts.api_error == {"type": "invalid_request_error", "message": "bad"}
    failed = facts_of([*SESSION[:3], text("res", 7_000_000, done("r1", 0, "failed"))])
    assert failed.api_error == {"message": "response failed"}
    cut = facts_of(
        [*SESSION[:3], text("res", 7_000_000, done("r1", 5, "incomplete", "max_output_tokens"))]
    )
    assert cut.finish_reason == "max_output_tokens"


def test_a_text_message_that_is_not_json_is_malformed():
    broken = WsMessage(dir="res", ns=5, opcode="text", data=b"{nope", text="{nope")
    facts = facts_of([SESSION[0], broken])
    assert len(facts.malformed_json) == 1 and "res message" in facts.malformed_json[0]


def test_a_session_on_another_path_is_realtime_by_its_first_event_or_plain_websocket():
    assert facts_of(SESSION, path="/ws").api == "openai.realtime"
    echo = [text("req", 1, {"type": "hello"}), text("res", 7, {"type": "hello"}), close("res", 9)]
    facts = facts_of(echo, path="/ws")
    assert facts.api == "websocket"
    assert (facts.ttft_ns, facts.terminated, facts.stall_times) == (7, True, ())
