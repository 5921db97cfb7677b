"""Each detector fires on an exchange that has its problem and stays quiet on one that does not."""

from __future__ import annotations

import json

import pytest
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
from wirecap.inspect.detectors import CODES, Thresholds, detect, detect_all, model_family

_counter = iter(range(10**6))


def make_exchange(
    *,
    path: str = "/v1/chat/completions",
    request: dict | bytes | None = None,
    status: int = 200,
    content_type: str = "application/json",
    body: list[bytes] | bytes = b"",
    extra_headers: str = "",
    outcome: str = "ok",
    by: str = "upstream",
    gaps_ms: list[float] | None = None,
    request_head_extra: str = "",
    wall_ns: int = 1_795_000_000_000_000_000,
) -> Exchange:
    x = f"x{next(_counter):011d}"
    req_body = (
        request
        if isinstance(request, bytes)
        else json.dumps(request or {"model": "gpt-4o-mini"}).encode()
    )
    ex = Exchange(x)
    head = f"POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n{request_head_extra}Content-Length: {len(req_body)}\r\n\r\n".encode()
    ex.add(
        RequestReceived(
            x=x,
            wall_ns=wall_ns,
            method="POST",
            target=path,
            head=head,
            route="/",
            upstream_url="https://up" + path,
        )
    )
    ex.add(UpstreamRequest(x=x, ns=10, head=head))
    ex.add(BodyChunk(x=x, dir="req", ns=20, data=req_body))
    ex.add(
        ResponseHead(
            x=x,
            ns=1_000_000,
            status=status,
            by=by,
            head=f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n{extra_headers}\r\n".encode(),
        )
    )
    chunks = body if isinstance(body, list) else [body]
    ns = 2_000_000
    for i, chunk in enumerate(chunks):
        if gaps_ms and i < len(gaps_ms):
            ns += int(gaps_ms[i] * 1e6)
        else:
            ns += 1_000_000
        ex.add(BodyChunk(x=x, dir="res", ns=ns, data=chunk))
    ex.add(
        ExchangeEnd(
            x=x,
            ns=ns + 1000,
            outcome=outcome,
            status=status,
            req_bytes=len(req_body),
            res_bytes=sum(map(len, chunks)),
            error=None if outcome == "ok" else "boom",
        )
    )
    return ex


def codes(ex: Exchange, **thresholds) -> set[str]:
    return {f.code for f in detect(analyze_exchange(ex), Thresholds(**thresholds))}


CLEAN_CHAT = json.dumps(samples.CHAT_JSON).encode()


def chat_json(**changes) -> bytes:
    body = json.loads(CLEAN_CHAT)
    choice = body["choices"][0]
    for key, value in changes.items():
        if key in ("content", "tool_calls"):
            choice["message"][key] = value
        elif key == "finish_reason":
            choice["finish_reason"] = value
        else:
            body[key] = value
    return json.dumps(body).encode()


def test_clean_exchanges_have_no_findings():
    assert codes(make_exchange(body=CLEAN_CHAT)) == set()
    assert (
        codes(make_exchange(content_type="text/event-stream", body=samples.chat_stream())) == set()
    )
    assert (
        codes(
            make_exchange(
                path="/v1/messages",
                request=samples.MESSAGES_REQUEST,
                content_type="text/event-stream",
                body=samples.message_stream(),
            )
        )
        == set()
    )
    assert (
        codes(
            make_exchange(
                path="/api/chat",
                request=samples.OLLAMA_CHAT_REQUEST,
                content_type="application/x-ndjson",
                body=samples.ollama_chat_stream(),
            )
        )
        == set()
    )
    assert (
        codes(
            make_exchange(
                path="/v1/responses",
                request=samples.RESPONSES_REQUEST,
                content_type="text/event-stream",
                body=samples.responses_stream(),
            )
        )
        == set()
    )


@pytest.mark.parametrize(
    ("code", "bad", "good"),
    [
        (
            "http-error",
            {"status": 500, "body": b'{"error": {"message": "overloaded"}}'},
            {"body": CLEAN_CHAT},
        ),
        (
            "http-error",
            {"status": 400, "body": b'{"error": {"message": "bad param"}}'},
            {"status": 429, "body": b"{}"},
        ),
        (
            "rate-limited",
            {"status": 429, "extra_headers": "Retry-After: 7\r\n", "body": b'{"error": {}}'},
            {"status": 200, "body": CLEAN_CHAT},
        ),
        (
            "upstream-failure",
            {"status": 502, "by": "proxy", "outcome": "upstream_error", "body": b'{"error": {}}'},
            {"status": 502, "body": b'{"error": {"message": "bad gateway"}}'},
        ),
        (
            "upstream-failure",
            {
                "outcome": "timeout",
                "content_type": "text/event-stream",
                "body": samples.chat_stream(done=False)[:2],
            },
            {"content_type": "text/event-stream", "body": samples.chat_stream()},
        ),
        (
            "truncated-stream",
            {"content_type": "text/event-stream", "body": samples.chat_stream(done=False)},
            {"content_type": "text/event-stream", "body": samples.chat_stream()},
        ),
        (
            "truncated-stream",
            {
                "path": "/v1/messages",
                "content_type": "text/event-stream",
                "body": samples.message_stream(stop=False),
            },
            {
                "path": "/v1/messages",
                "content_type": "text/event-stream",
                "body": samples.message_stream(),
            },
        ),
        (
            "truncated-stream",
            {
                "path": "/api/chat",
                "content_type": "application/x-ndjson",
                "body": samples.ollama_chat_stream(done=False),
            },
            {
                "path": "/api/chat",
                "content_type": "application/x-ndjson",
                "body": samples.ollama_chat_stream(),
            },
        ),
        (
            "malformed-sse",
            {
                "content_type": "text/event-stream",
                "body": [*samples.chat_stream(), b'data: {"half": '],
            },
            {"content_type": "text/event-stream", "body": samples.chat_stream()},
        ),
        ("malformed-json", {"body": b'{"choices": [}'}, {"body": CLEAN_CHAT}),
        (
            "malformed-json",
            {
                "content_type": "text/event-stream",
                "body": [b"data: {oops}\n\n", b"data: [DONE]\n\n"],
            },
            {"content_type": "text/event-stream", "body": samples.chat_stream()},
        ),
        (
            "invalid-tool-arguments",
            {
                "body": chat_json(
                    content=None,
                    finish_reason="tool_calls",
                    tool_calls=[
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"city": "Par'},
                        }
                    ],
                )
            },
            {
                "body": chat_json(
                    content=None,
                    finish_reason="tool_calls",
                    tool_calls=[
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                )
            },
        ),
        (
            "invalid-tool-arguments",
            {
                "content_type": "text/event-stream",
                "body": samples.chat_stream(tool=("c1", "f", ['{"a": ', "1"]), finish="tool_calls"),
            },
            {
                "content_type": "text/event-stream",
                "body": samples.chat_stream(
                    tool=("c1", "f", ['{"a": ', "1}"]), finish="tool_calls"
                ),
            },
        ),
        ("output-truncated", {"body": chat_json(finish_reason="length")}, {"body": CLEAN_CHAT}),
        (
            "output-truncated",
            {
                "path": "/v1/messages",
                "content_type": "text/event-stream",
                "body": samples.message_stream(stop_reason="max_tokens"),
            },
            {
                "path": "/v1/messages",
                "content_type": "text/event-stream",
                "body": samples.message_stream(),
            },
        ),
        (
            "content-filtered",
            {"body": chat_json(finish_reason="content_filter")},
            {"body": CLEAN_CHAT},
        ),
        ("empty-completion", {"body": chat_json(content="")}, {"body": CLEAN_CHAT}),
        (
            "usage-missing",
            {"content_type": "text/event-stream", "body": samples.chat_stream(usage=False)},
            {"content_type": "text/event-stream", "body": samples.chat_stream()},
        ),
        (
            "usage-inconsistent",
            {
                "body": chat_json(
                    usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 15}
                )
            },
            {"body": CLEAN_CHAT},
        ),
        (
            "model-mismatch",
            {"request": {"model": "gpt-4o"}, "body": CLEAN_CHAT},
            {"request": {"model": "gpt-4o-mini"}, "body": CLEAN_CHAT},
        ),
        (
            "slow-ttft",
            {"content_type": "text/event-stream", "body": samples.chat_stream(), "gaps_ms": [2000]},
            {"content_type": "text/event-stream", "body": samples.chat_stream(), "gaps_ms": [500]},
        ),
        (
            "stream-stall",
            {
                "content_type": "text/event-stream",
                "body": samples.chat_stream(),
                "gaps_ms": [1, 1, 1500],
            },
            {
                "content_type": "text/event-stream",
                "body": samples.chat_stream(),
                "gaps_ms": [1, 1, 500],
            },
        ),
        (
            "client-abort",
            {
                "outcome": "client_abort",
                "content_type": "text/event-stream",
                "body": samples.chat_stream()[:2],
            },
            {"content_type": "text/event-stream", "body": samples.chat_stream()},
        ),
        (
            "secret-in-capture",
            {
                "request": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "user", "content": "key sk-proj-abcdefghijklmnopqrstuvwx"}
                    ],
                },
                "body": CLEAN_CHAT,
            },
            {
                "request": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "key [redacted sha256:12345678]"}],
                },
                "body": CLEAN_CHAT,
            },
        ),
        (
            "secret-in-capture",
            {
                "request_head_extra": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz\r\n",
                "body": CLEAN_CHAT,
            },
            {
                "request_head_extra": "Authorization: Bearer [redacted sha256:12345678]\r\n",
                "body": CLEAN_CHAT,
            },
        ),
    ],
)
def test_detector_fires_on_bad_and_not_on_good(code, bad, good):
    thresholds = {"slow_ttft_s": 1.0, "stall_s": 1.0}
    assert code in codes(make_exchange(**bad), **thresholds)
    assert code not in codes(make_exchange(**good), **thresholds)


def test_duplicate_request_detects_retry_storms_within_the_window():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "same"}]}
    base = 1_795_000_000_000_000_000
    storm = [
        make_exchange(request=body, body=CLEAN_CHAT, wall_ns=base + i * 1_000_000_000)
        for i in range(4)
    ]
    spread = [
        make_exchange(request=body, body=CLEAN_CHAT, wall_ns=base + i * 60_000_000_000)
        for i in range(4)
    ]
    varied = [
        make_exchange(request={**body, "n": i}, body=CLEAN_CHAT, wall_ns=base + i) for i in range(4)
    ]
    thresholds = Thresholds(duplicate_window_s=30, duplicate_count=3)

    def dups(exchanges):
        return [
            f
            for f in detect_all([analyze_exchange(e) for e in exchanges], thresholds)
            if f.code == "duplicate-request"
        ]

    found = dups(storm)
    assert [f.id for f in found] == [storm[2].id, storm[3].id]
    assert found[0].severity == "warning" and "3 times" in found[0].message
    assert dups(spread) == [] and dups(varied) == []


def test_every_code_is_covered_and_severities_are_stable():
    assert set(CODES) == {
        "http-error",
        "rate-limited",
        "upstream-failure",
        "truncated-stream",
        "malformed-sse",
        "malformed-json",
        "invalid-tool-arguments",
        "output-truncated",
        "content-filtered",
        "empty-completion",
        "analysis-stopped",
        "usage-missing",
        "usage-inconsistent",
        "model-mismatch",
        "slow-ttft",
        "stream-stall",
        "duplicate-request",
        "client-abort",
        "secret-in-capture",
        "session-error",
    }
    five = detect(analyze_exchange(make_exchange(status=503, body=b"{}")), Thresholds())
    four = detect(analyze_exchange(make_exchange(status=404, body=b"{}")), Thresholds())
    assert [f.severity for f in five if f.code == "http-error"] == ["error"]
    assert [f.severity for f in four if f.code == "http-error"] == ["warning"]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", True),
        ("gpt-4o", "gpt-4o-mini-2024-07-18", False),
        ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", True),
        ("openai/gpt-4o", "gpt-4o-2024-08-06", True),
        ("llama3.2", "llama3.2:latest", True),
        ("llama3.2", "qwen2.5", False),
        ("gpt-4", "gpt-4-0613", True),
        ("gpt-3.5-turbo", "gpt-3.5-turbo-0125", True),
        ("gpt-4", "gpt-4o-2024-08-06", False),
    ],
)
def test_model_family(a, b, same):
    assert (model_family(a) == model_family(b)) is same


def test_malformed_sse_is_named_when_the_client_hung_up_because_of_it():
    """A client that fails on bytes that are not SSE and hangs up: the bytes are still named; the
    cut alone (a stream ending inside an event) is not a malformation."""
    bad = [*samples.chat_stream()[:2], b"data: \xff\xfe not text\n\n"]
    aborted = make_exchange(content_type="text/event-stream", body=bad, outcome="client_abort")
    assert "malformed-sse" in codes(aborted)
    cut = [*samples.chat_stream()[:2], b'data: {"half": ']
    only_cut = make_exchange(content_type="text/event-stream", body=cut, outcome="client_abort")
    assert "malformed-sse" not in codes(only_cut)
