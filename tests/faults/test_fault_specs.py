"""Fault specs, selectors and error answers: sans-IO, table-driven."""

from __future__ import annotations

import json

import pytest

from wirecap.faults import FaultPlan, FaultSpecError, error_answer, parse_fault, request_model


@pytest.mark.parametrize(
    ("text", "kind", "params", "selectors"),
    [
        ("429", "429", {"retry-after": 1}, {}),
        ("429,retry-after=2.5,every=3", "429", {"retry-after": 2.5}, {"every": 3}),
        ("500", "500", {}, {}),
        ("503,retry-after=7", "503", {"retry-after": 7}, {}),
        ("disconnect,after-events=4", "disconnect", {"after-events": 4}, {}),
        (
            "stall,ms=250,rate=0.5,seed=3",
            "stall",
            {"ms": 250, "after-events": 1},
            {"rate": 0.5, "seed": 3},
        ),
        (" slow-ttft , ms=10 , route=/openai ", "slow-ttft", {"ms": 10}, {"route": "/openai"}),
        ("length,model=gpt-4o*,after=2", "length", {}, {"model": "gpt-4o*", "after": 2}),
    ],
)
def test_a_spec_reads_its_kind_parameters_and_selectors(text, kind, params, selectors):
    spec = parse_fault(text)
    assert spec.kind == kind
    assert dict(spec.params) == params
    for key, value in selectors.items():
        assert getattr(spec, key) == value
    assert spec.note() == {"kind": kind, "spec": text.strip(), **params}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("418", "unknown fault kind '418'"),
        ("", "unknown fault kind ''"),
        ("429,ms=3", "fault 429 takes no key 'ms'"),
        ("truncate,after-events=2", "fault truncate takes no key 'after-events'"),
        ("429,retry-after=soon", "retry-after=soon: not a number of seconds"),
        ("429,retry-after=-1", "retry-after=-1: must be 0 or more seconds"),
        ("stall,ms=1.5", "ms=1.5: not a whole number"),
        ("500,every=0", "every=0: must be at least 1"),
        ("500,rate=0", "rate=0: must be above 0 and at most 1"),
        ("500,rate=2", "rate=2: must be above 0 and at most 1"),
        ("500,seed=4", "seed= goes with rate="),
        ("500,every", "'every' in fault 500: expected key=value"),
        ("500,route=", "route= needs a value"),
    ],
)
def test_a_bad_spec_is_one_clear_line(text, message):
    with pytest.raises(FaultSpecError) as info:
        parse_fault(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def picks(plan: FaultPlan, requests: list[tuple[str, bytes]]) -> list[str | None]:
    return [(s.kind if (s := plan.choose(t, b)) else None) for t, b in requests]


CHAT = "/openai/v1/chat/completions"


def test_every_and_after_count_the_requests_a_spec_considers():
    assert picks(FaultPlan([parse_fault("429,every=2")]), [(CHAT, b"")] * 5) == [
        None,
        "429",
        None,
        "429",
        None,
    ]
    assert picks(FaultPlan([parse_fault("500,after=3")]), [(CHAT, b"")] * 5) == [
        None,
        None,
        None,
        "500",
        "500",
    ]
    assert picks(FaultPlan([parse_fault("500,after=1,every=2")]), [(CHAT, b"")] * 5) == [
        None,
        None,
        "500",
        None,
        "500",
    ]


def test_route_and_model_narrow_what_a_spec_considers():
    plan = FaultPlan(
        [parse_fault("429,route=/anthropic,every=2"), parse_fault("500,model=gpt-4o*")]
    )
    gpt, claude = b'{"model": "gpt-4o-mini", "messages": []}', b'{"messages": [], "model":"claude"}'
    requests = [
        ("/anthropic/v1/messages", claude),
        (CHAT, gpt),
        ("/anthropic/v1/messages", claude),
        (CHAT, b'{"model": "gpt-3.5"}'),
        ("/anthropic/v1/messages?beta=1", gpt),
    ]
    assert picks(plan, requests) == [None, "500", "429", None, "500"]


def test_the_first_spec_that_picks_wins_and_every_spec_keeps_counting():
    plan = FaultPlan([parse_fault("429,every=2"), parse_fault("500,every=3")])
    assert picks(plan, [(CHAT, b"")] * 6) == [None, "429", "500", "429", None, "429"]


def test_a_rate_with_a_seed_picks_the_same_requests_every_run():
    def run() -> list[str | None]:
        return picks(FaultPlan([parse_fault("503,rate=0.3,seed=7")]), [(CHAT, b"")] * 200)

    first = run()
    assert first == run()
    assert 30 < first.count("503") < 90  # about 60 of 200


def test_the_model_is_read_from_the_body_without_parsing_all_of_it():
    assert request_model(b'{"model": "llama3.2", "messages": []}') == "llama3.2"
    assert (
        request_model(b'{"messages": [{"content": "say \\"model\\": \\"x\\""}], "model":"m1"}')
        == "m1"
    )
    assert request_model(b"not json") is None


@pytest.mark.parametrize(
    ("spec", "target", "status", "shape"),
    [
        (
            "429,retry-after=3",
            CHAT,
            429,
            {"error": {"type": "requests", "code": "rate_limit_exceeded"}},
        ),
        ("500", "/v1/responses", 500, {"error": {"type": "server_error", "code": None}}),
        ("503", CHAT, 503, {"error": {"type": "server_error", "param": None}}),
        (
            "429",
            "/anthropic/v1/messages",
            429,
            {"type": "error", "error": {"type": "rate_limit_error"}},
        ),
        ("500", "/v1/messages", 500, {"type": "error", "error": {"type": "api_error"}}),
        ("503", "/v1/messages", 503, {"type": "error", "error": {"type": "overloaded_error"}}),
        ("429", "/api/chat", 429, {}),
        ("500", "/ollama/api/generate", 500, {}),
    ],
)
def test_error_answers_have_each_providers_shape(spec, target, status, shape):
    answer = error_answer(parse_fault(spec), target)
    body = json.loads(answer.body)
    headers = dict(answer.headers)
    assert answer.status == status
    assert headers["Content-Type"] == "application/json"
    if "ollama" in target or target.startswith("/api/"):
        assert set(body) == {"error"} and isinstance(body["error"], str)
    for key, value in shape.items():
        if isinstance(value, dict):
            assert {k: body[key][k] for k in value} == value
            assert "injected by wirecap" in body[key]["message"]
        else:
            assert body[key] == value
    assert headers.get("retry-after") == ({"429": "1", "429,retry-after=3": "3"}.get(spec))
