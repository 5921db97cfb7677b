"""Every fault kind, injected by ``wirecap serve`` and by the proxy, is named by its detector.

Through serve: client -> recording proxy -> ``MockServer`` with the fault; the proxy's capture
holds what the client saw. Through the proxy: client -> proxy with the fault -> ``MockServer`` as
the upstream; the capture also holds the fault's note. Either way ``--detect-issues`` must name
the kind with its code, for each provider's answer shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from wirecap.capture import open_capture
from wirecap.faults import FaultPlan, parse_fault
from wirecap.inspect.analysis import analyze_exchange
from wirecap.inspect.detectors import Thresholds, detect_all
from wirecap.replay.serve import MockServer, Served, load_catalog

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
THRESHOLDS = Thresholds(slow_ttft_s=0.2, stall_s=0.2)

#: Each kind's spec in the tests (gaps well over the thresholds above) and the code that names it.
KINDS = {
    "429": ("429,retry-after=1", "rate-limited"),
    "500": ("500", "http-error"),
    "503": ("503,retry-after=2", "http-error"),
    "timeout": ("timeout", "upstream-failure"),
    "disconnect": ("disconnect,after-events=2", "truncated-stream"),
    "truncate": ("truncate", "truncated-stream"),
    "stall": ("stall,ms=600", "stream-stall"),
    "slow-ttft": ("slow-ttft,ms=600", "slow-ttft"),
    "malformed-sse": ("malformed-sse", "malformed-sse"),
    "bad-tool-args": ("bad-tool-args", "invalid-tool-arguments"),
    "length": ("length", "output-truncated"),
}
#: Each provider's answer shape, from the fixtures; NDJSON and JSON answers have no SSE to break,
#: so malformed-sse breaks their JSON instead.
ANSWERS = {
    "openai-stream": "openai_chat_stream",
    "openai-json": "openai_chat_json",
    "openai-tool-call": "openai_tool_call",
    "responses-stream": "openai_responses_stream",
    "anthropic-stream": "anthropic_message_stream",
    "anthropic-json": "anthropic_message_json",
    "ollama-ndjson": "ollama_chat_ndjson",
}
NOT_SSE = {"openai-json", "anthropic-json", "ollama-ndjson", "openai-tool-call"}
NO_TOOL_CALLS = {"openai-stream", "openai-json", "ollama-ndjson"}
ERROR_KINDS = {"429", "500", "503", "timeout"}
CASES = [
    pytest.param(kind, answer, id=f"{kind}-{answer}")
    for kind in KINDS
    for answer in ANSWERS
    if kind not in ERROR_KINDS or answer in ("openai-stream", "anthropic-json", "ollama-ndjson")
]


def expected_code(kind: str, answer: str) -> str:
    if kind == "malformed-sse" and answer in NOT_SSE:
        return "malformed-json"
    return KINDS[kind][1]


def recorded_request(name: str) -> tuple[str, bytes]:
    with open_capture(FIXTURES / f"{name}.cbor.zst") as capture:
        [exchange] = list(capture.exchanges())
        return exchange.target, exchange.request_body


async def start_mock(nursery, name: str, faults: list[str], told: list[Served]) -> MockServer:
    with open_capture(FIXTURES / f"{name}.cbor.zst") as capture:
        catalog = load_catalog(capture, match_on=("method", "path", "query", "body"))
    plan = FaultPlan([parse_fault(f) for f in faults]) if faults else None
    server = MockServer(catalog, speed=None, faults=plan, on_answer=told.append)
    await nursery.start(server.run)
    return server


def send(url: str, body: bytes, timeout: float) -> int | str:
    """The status the client got, or the name of the error it raised."""
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            response.read()
            return response.status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def findings(proxy) -> tuple[set[str], list]:
    with await proxy.capture() as capture:
        exchanges = list(capture.exchanges())
        codes = {f.code for f in detect_all((analyze_exchange(e) for e in exchanges), THRESHOLDS)}
        return codes, [note for e in exchanges for note in e.notes_of("fault")]


@pytest.mark.parametrize(("kind", "answer"), CASES)
async def test_each_kind_injected_by_serve_is_named(nursery, start_proxy, kind, answer):
    spec, _code = KINDS[kind]
    told: list[Served] = []
    mock = await start_mock(nursery, ANSWERS[answer], [spec], told)
    proxy = await start_proxy(
        upstream=mock.url + "/", read_timeout=0.5 if kind == "timeout" else 30
    )
    target, body = recorded_request(ANSWERS[answer])
    await trio.to_thread.run_sync(send, proxy.url + target, body, 30)
    codes, _notes = await findings(proxy)
    assert expected_code(kind, answer) in codes
    assert [s.fault["kind"] for s in told if s.fault] == [kind]
    assert told[0].fault == {
        **parse_fault(spec).note(),
        **({"synthesized": True} if told[0].fault.get("synthesized") else {}),
    }


async def test_a_rewrite_with_nothing_to_rewrite_is_synthesized(nursery, start_proxy):
    """bad-tool-args on an answer without tool calls: serve answers with a synthesized one."""
    told: list[Served] = []
    mock = await start_mock(nursery, "openai_chat_json", ["bad-tool-args"], told)
    proxy = await start_proxy(upstream=mock.url + "/")
    target, body = recorded_request("openai_chat_json")
    await trio.to_thread.run_sync(send, proxy.url + target, body, 30)
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
        facts = analyze_exchange(exchange).facts
    assert told[0].fault["synthesized"] is True and told[0].recording is None
    assert [c.name for c in facts.tool_calls] == ["wirecap_tool"]
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        json.loads(facts.tool_calls[0].arguments)


@pytest.mark.parametrize(("kind", "answer"), CASES)
async def test_each_kind_injected_by_the_proxy_is_named_and_noted(
    nursery, start_proxy, kind, answer
):
    spec, _code = KINDS[kind]
    mock = await start_mock(nursery, ANSWERS[answer], [], [])
    proxy = await start_proxy(upstream=mock.url + "/", fault=[spec])
    target, body = recorded_request(ANSWERS[answer])
    # A client that waits for the injected timeout gives up after a second (a hang guard
    # for every other kind).
    got = await trio.to_thread.run_sync(
        send, proxy.url + target, body, 1 if kind == "timeout" else 30
    )
    codes, notes = await findings(proxy)
    assert [n["kind"] for n in notes] == [kind]
    outcome = {"applied", "synthesized"}
    assert {k: v for k, v in notes[0].items() if k not in outcome} == parse_fault(spec).note()
    assert expected_code(kind, answer) in codes
    assert notes[0].get("applied", True) is True
    # bad-tool-args on an answer without a tool call: the proxy adds one (it rewrites the rest).
    added = kind == "bad-tool-args" and answer in NO_TOOL_CALLS
    assert notes[0].get("synthesized", False) is added
    if kind in ERROR_KINDS - {"timeout"}:
        assert got == int(kind)


async def test_a_model_selector_in_the_proxy_waits_for_the_model_however_the_body_arrives(
    nursery, start_proxy
):
    """The body comes in a second write after the head: the proxy reads it before choosing, so
    each of three identical requests gets the fault."""
    mock = await start_mock(nursery, "openai_chat_json", [], [])
    proxy = await start_proxy(upstream=mock.url + "/", fault=[parse_fault("429,model=gpt-4o*")])
    target, body = recorded_request("openai_chat_json")
    assert b'"model": "gpt-4o' in body or b'"model":"gpt-4o' in body

    async def post_in_two_writes() -> int:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        head = (
            f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        await stream.send_all(head)
        await trio.sleep(0.05)  # a second segment: the proxy has read the head alone
        await stream.send_all(body)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        await stream.aclose()
        return int(answer.split(b" ", 2)[1])

    assert [await post_in_two_writes() for _ in range(3)] == [429, 429, 429]


async def test_the_proxy_names_an_added_tool_call_after_the_requests_first_tool(
    start_upstream, start_proxy
):
    """The request body comes chunked (the proxy reads its payload, not its wire bytes)."""
    with open_capture(FIXTURES / "openai_chat_json.cbor.zst") as capture:
        [recorded] = list(capture.exchanges())
        target, body, answer_body = recorded.target, recorded.request_body, recorded.response_body

    async def answer(exchange) -> None:
        await exchange.respond(200, answer_body, [("Content-Type", "application/json")])

    upstream = await start_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url, fault=["bad-tool-args"])
    request = json.loads(body)
    request["tools"] = [{"type": "function", "function": {"name": "get_weather"}}]
    encoded = json.dumps(request).encode()

    def post_chunked() -> int:
        pieces = iter([encoded[:20], encoded[20:]])
        with httpx.Client(timeout=30) as client:
            response = client.post(proxy.url + target, content=pieces)
            return response.status_code

    assert await trio.to_thread.run_sync(post_chunked) == 200
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
        assert b"transfer-encoding: chunked" in exchange.request.head.lower()
        facts = analyze_exchange(exchange).facts
    assert [c.name for c in facts.tool_calls] == ["get_weather"]
    assert facts.finish_reason == "tool_calls" and facts.text == "Hello there!"


@pytest.mark.parametrize("kind", ["bad-tool-args", "length"])
async def test_an_error_answer_cannot_carry_a_rewrite_and_passes_as_it_came(
    start_upstream, start_proxy, kind
):
    error = json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode()

    async def answer(exchange) -> None:
        await exchange.respond(503, error, [("Content-Type", "application/json")])

    upstream = await start_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url, fault=[kind])
    target, body = recorded_request("openai_chat_json")
    assert await trio.to_thread.run_sync(send, proxy.url + target, body, 30) == 503
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
        assert exchange.response_body == error
        [note] = exchange.notes_of("fault")
    assert note["applied"] is False and "synthesized" not in note


async def test_the_proxy_console_line_names_the_injected_fault(nursery, start_proxy):
    """An answer the proxy made up under a fault is not the upstream's: its line says so."""
    mock = await start_mock(nursery, "openai_chat_json", [], [])
    proxy = await start_proxy(upstream=mock.url + "/", fault=["429,every=2"])
    target, body = recorded_request("openai_chat_json")
    got = [await trio.to_thread.run_sync(send, proxy.url + target, body, 30) for _ in range(2)]
    assert got == [200, 429]
    first, second = proxy.console.getvalue().splitlines()[-2:]
    assert " 200 " in first and "fault" not in first
    assert " 429 " in second and second.endswith("fault 429,every=2"), second


async def test_an_answer_changed_by_a_fault_counts_the_bytes_the_client_got(nursery, start_proxy):
    """The capture holds the answer as the client got it; its end counts that, not the upstream's."""
    mock = await start_mock(nursery, "openai_chat_json", [], [])
    proxy = await start_proxy(upstream=mock.url + "/", fault=["bad-tool-args"])
    target, body = recorded_request("openai_chat_json")

    def post() -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.post(proxy.url + target, content=body)

    got = await trio.to_thread.run_sync(post)
    with open_capture(FIXTURES / "openai_chat_json.cbor.zst") as capture:
        [upstream_answer] = list(capture.exchanges())
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert len(got.content) > len(upstream_answer.response_body)  # a tool call was added
    assert exchange.end.res_bytes == len(got.content) == len(exchange.response_body)
