"""Sans-IO: comparison modes, JSON paths, request matching and the closest-request report."""

from __future__ import annotations

import json
import re

import pytest
import samples

from wirecap.llm import ExchangeInput, parse_head
from wirecap.replay.catalog import Catalog, Miss, Recorded, request_body_key
from wirecap.replay.compare import compare, parse_ignores
from wirecap.replay.normalize import PathError, drop_path, parse_path, shape


def response(
    body: list[bytes] | bytes,
    content_type: str = "application/json",
    status: int = 200,
    path: str = "/v1/chat/completions",
) -> ExchangeInput:
    chunks = body if isinstance(body, list) else [body]
    return ExchangeInput(
        method="POST",
        path=path,
        request_head=None,
        request_body=b"{}",
        status=status,
        response_head=parse_head(
            f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n\r\n".encode()
        ),
        response_chunks=tuple((i * 1000, c) for i, c in enumerate(chunks)),
    )


def chat(content: str, **extra) -> bytes:
    body = json.loads(json.dumps(samples.CHAT_JSON))
    body["choices"][0]["message"]["content"] = content
    body.update(extra)
    return json.dumps(body).encode()


def test_json_mode_ignores_volatile_fields_and_reports_real_changes():
    a = response(chat("Hello"))
    b = response(chat("Hello", id="chatcmpl-other", created=1800000000, system_fingerprint="fp_9"))
    assert compare(a, b).passed
    changed = compare(a, response(chat("Goodbye")))
    assert not changed.passed
    assert changed.summary == "$.body.choices[0].message.content differs: 'Hello' -> 'Goodbye'"
    assert re.search(r'^- +"content": "Hello",$', changed.diff, re.MULTILINE)
    assert re.search(r'^\+ +"content": "Goodbye",$', changed.diff, re.MULTILINE)
    assert compare(
        a, response(chat("Goodbye")), ignore=parse_ignores(["$.choices[*].message.content"])
    ).passed


def test_streams_compare_as_reassembled_results_not_chunk_boundaries():
    stream = samples.chat_stream(text=("Hel", "lo"))
    body = b"".join(stream)
    regrouped = [body[:7], body[7:300], body[300:]]
    assert compare(
        response(stream, "text/event-stream"), response(regrouped, "text/event-stream"), "json"
    ).passed
    other = samples.chat_stream(text=("Hel", "p"))
    verdict = compare(response(stream, "text/event-stream"), response(other, "text/event-stream"))
    assert not verdict.passed and "$.body.text differs: 'Hello' -> 'Help'" in verdict.summary
    tool_a = samples.chat_stream(tool=("c1", "f", ['{"a": 1, ', '"b": 2}']), finish="tool_calls")
    tool_b = samples.chat_stream(tool=("c2", "f", ['{"b": 2,', '"a":1}']), finish="tool_calls")
    assert compare(
        response(tool_a, "text/event-stream"), response(tool_b, "text/event-stream")
    ).passed  # arguments compared as data


def test_schema_exact_and_status_modes():
    a, b = response(chat("Hello")), response(chat("Something else entirely"))
    assert compare(a, b, "schema").passed and not compare(a, b, "json").passed
    assert not compare(a, response(b'{"choices": "not a list"}'), "schema").passed
    assert (
        compare(a, b, "status").passed
        and not compare(a, response(chat("Hello"), status=500), "status").passed
    )
    same = response(chat("Hello"))
    assert compare(a, same, "exact").passed
    respaced = response(json.dumps(json.loads(chat("Hello")), indent=2).encode())
    assert compare(a, respaced, "json").passed and not compare(a, respaced, "exact").passed


def test_json_paths():
    assert parse_path("$.choices[*].message.content") == ["choices", None, "message", "content"]
    assert parse_path("usage") == ["usage"]
    assert drop_path({"a": [{"b": 1, "c": 2}]}, parse_path("$.a[*].b")) == {"a": [{"c": 2}]}
    assert drop_path({"a": [1, 2, 3]}, parse_path("$.a[1]")) == {"a": [1, 3]}
    with pytest.raises(PathError):
        parse_path("$..bad")
    assert shape({"a": [1, 2], "b": "x", "c": None}) == {
        "a": ["number"],
        "b": "string",
        "c": "null",
    }


def recorded(
    i: int,
    body: dict,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    answer: bytes = b"{}",
) -> Recorded:
    return Recorded(
        id=f"r{i}",
        method=method,
        paths=(path,),
        query=(),
        body=request_body_key(json.dumps(body).encode(), []),
        status=200,
        head=b"HTTP/1.1 200 OK\r\n\r\n",
        head_delay_ns=0,
        chunks=((0, answer),),
    )


def test_identical_requests_answer_in_recorded_order_then_repeat_the_last():
    req = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    catalog = Catalog([recorded(1, req, answer=b"first"), recorded(2, req, answer=b"second")])
    body = json.dumps(req, indent=4).encode()  # formatting differs: compared as data
    answers = [catalog.lookup("POST", "/v1/chat/completions", body) for _ in range(3)]
    assert [a.chunks[0][1] for a in answers if isinstance(a, Recorded)] == [
        b"first",
        b"second",
        b"second",
    ]


def test_miss_names_the_closest_requests_and_what_differs():
    catalog = Catalog(
        [
            recorded(1, {"model": "m", "messages": [{"content": "hi"}]}),
            recorded(2, {"model": "x"}, path="/v1/embeddings"),
        ]
    )
    miss = catalog.lookup(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "m", "messages": [{"content": "hello"}]}).encode(),
    )
    assert isinstance(miss, Miss)
    closest = miss.to_json()["error"]["closest"]
    assert closest[0]["id"] == "r1"
    assert closest[0]["differences"] == ["body: $.messages[0].content differs: 'hi' -> 'hello'"]
    assert any("path /v1/embeddings" in d for d in closest[1]["differences"])
    loose = Catalog([recorded(1, {"model": "m"})], match_on=("method", "path"))
    assert isinstance(loose.lookup("POST", "/v1/chat/completions", b'{"model": "other"}'), Recorded)


def test_sequence_mode_matches_on_the_request_and_its_predecessor():
    step = {"messages": [{"content": "next step"}]}
    a, b = {"messages": [{"content": "plan A"}]}, {"messages": [{"content": "plan B"}]}
    catalog = Catalog(
        [
            recorded(1, a),
            recorded(2, step, answer=b"after A"),
            recorded(3, b),
            recorded(4, step, answer=b"after B"),
        ],
        sequence=True,
    )

    def ask(body):
        found = catalog.lookup("POST", "/v1/chat/completions", json.dumps(body).encode())
        assert isinstance(found, Recorded)
        return found

    ask(b)
    assert (
        ask(step).chunks[0][1] == b"after B"
    )  # the same request, answered for the step it follows
    ask(a)
    assert ask(step).chunks[0][1] == b"after A"


def tool_call_answer(arguments: str) -> bytes:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": arguments},
            }
        ],
    }
    return chat("", choices=[{"index": 0, "message": message, "finish_reason": "tool_calls"}])


@pytest.mark.parametrize(
    ("mode", "passes"), [("json", True), ("schema", True), ("status", True), ("exact", False)]
)
def test_tool_call_arguments_compare_as_data_streamed_or_not(mode, passes):
    compact, spaced = '{"city":"Berlin"}', '{"city": "Berlin"}'
    plain = compare(
        response(tool_call_answer(compact)), response(tool_call_answer(spaced)), mode=mode
    )
    streamed = compare(
        response(
            samples.chat_stream(text=(), tool=("call_1", "get_weather", [compact])),
            "text/event-stream",
        ),
        response(
            samples.chat_stream(text=(), tool=("call_1", "get_weather", [spaced])),
            "text/event-stream",
        ),
        mode=mode,
    )
    assert (plain.passed, streamed.passed) == (passes, passes), (plain, streamed)


def test_tool_call_arguments_that_differ_as_data_still_fail():
    verdict = compare(
        response(tool_call_answer('{"city":"Berlin"}')),
        response(tool_call_answer('{"city":"Paris"}')),
    )
    assert not verdict.passed
    assert verdict.summary == (
        "$.body.choices[0].message.tool_calls[0].function.arguments.city differs: "
        "'Berlin' -> 'Paris'"
    )
