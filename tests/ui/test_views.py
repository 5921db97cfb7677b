"""The sans-IO parts of the inspector: escaping, conversations, thinking, commands, the table."""

from __future__ import annotations

import dataclasses

import pytest
import samples
from captures import Spec
from test_layout import PACKAGE, trio_chain

from wirecap.capture import Exchange
from wirecap.inspect.analysis import analyze_exchange
from wirecap.ui.commands import curl_command, replay_command
from wirecap.ui.conversation import conversation, thinking_of
from wirecap.ui.detail import escaped_text, hex_dump, timeline
from wirecap.ui.search import SearchText
from wirecap.ui.table import Query, QueryError, Row, Table, select


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET / HTTP/1.1\\r\\n\nHost: x\\r\\n\n\\r\\n\n"),
        (b"caf\xc3\xa9 \xe2\x9c\x93", "café ✓"),  # UTF-8 as itself
        (b"\xff\xfe\x00", "\\xff\\xfe\\x00"),  # not UTF-8, and NUL
        (b"a\\b\tc\x1b[31m", "a\\\\b\\tc\\x1b[31m"),  # backslash, tab, an escape sequence
        ("left\u202eright".encode(), "left\\u202eright"),  # a bidi override is shown, not obeyed
        (
            b"<script>alert(1)</script>",
            "<script>alert(1)</script>",
        ),  # text: the page never parses it
    ],
)
def test_raw_text_says_every_byte(data, shown):
    assert escaped_text(data) == shown


def test_hex_dump():
    assert hex_dump(b"HTTP/1.1 200 OK\r\n\x00") == (
        "00000000  48 54 54 50 2f 31 2e 31  20 32 30 30 20 4f 4b 0d  |HTTP/1.1 200 OK.|\n"
        "00000010  0a 00                                             |..|"
    )


def test_conversations_of_each_provider():
    chat = conversation(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "get", "arguments": '{"city":"Paris"}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ]
        }
    )
    assert [m.role for m in chat] == ["system", "user", "assistant", "tool"]
    call = chat[2].parts[0].to_json()
    assert call["kind"] == "tool_call" and call["parsed"] == {"city": "Paris"}
    assert chat[3].parts[0].id == "c1"
    anthropic = conversation(
        {
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm"}]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
                },
            ],
        }
    )
    assert [p.kind for m in anthropic for p in m.parts] == ["text", "thinking", "tool_result"]
    responses = conversation(
        {
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call", "name": "get", "arguments": "{}", "call_id": "x"},
                {"type": "function_call_output", "call_id": "x", "output": "ok"},
            ],
        }
    )
    assert [(m.role, m.parts[0].kind) for m in responses] == [
        ("system", "text"),
        ("user", "text"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
    ]
    assert conversation({"model": "llama3", "prompt": "Why?"})[0].parts[0].text == "Why?"
    assert conversation([1, 2]) == [] and conversation({"model": "x"}) == []


def analyzed(spec: Spec):
    exchange = Exchange(spec.id)
    for record in spec.records(0):
        exchange.add(record)
    return analyze_exchange(exchange)


def test_thinking_is_reassembled_from_a_stream():
    events = [
        samples.sse({"type": "message_start", "message": {"model": "claude", "usage": {}}}),
        samples.sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}}
        ),
        samples.sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Let me "},
            }
        ),
        samples.sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "think."},
            }
        ),
        samples.sse({"type": "message_stop"}),
    ]
    spec = Spec(
        "aaaaaaaaaaaa", chunks=events, content_type="text/event-stream", path="/v1/messages"
    )
    assert thinking_of(analyzed(spec)) == "Let me think."
    deepseek = Spec(
        "bbbbbbbbbbbb",
        chunks=[
            samples.sse({"choices": [{"delta": {"reasoning_content": "Hm"}}]}),
            samples.sse({"choices": [{"delta": {"reasoning_content": "m."}}]}),
            b"data: [DONE]\n\n",
        ],
        content_type="text/event-stream",
    )
    assert thinking_of(analyzed(deepseek)) == "Hmm."


def test_commands_never_hold_a_credential():
    spec = Spec("cccccccccccc")
    exchange = Exchange(spec.id)
    for record in spec.records(0):
        if getattr(record, "head", b"").startswith(b"POST"):
            head = record.head.replace(
                b"Host: up\r\n",
                b"Host: up\r\nAuthorization: Bearer sk-live-secret-0123456789\r\n"
                b"X-Api-Key: sk-ant-secret-0123456789\r\n",
            )
            record = dataclasses.replace(record, head=head)
        exchange.add(record)
    a = analyze_exchange(exchange)
    curl = curl_command(a)
    assert "secret" not in curl
    assert '-H "Authorization: Bearer $API_KEY"' in curl
    assert '-H "X-Api-Key: $API_KEY"' in curl
    assert '--data-binary \'{"model": "gpt-4o-mini"' in curl
    assert curl.startswith("curl -sS -X POST http://up/v1/chat/completions ")
    replay = replay_command(a)
    assert replay == (
        'wirecap replay cccccccccccc.cbor.zst --target http://up/ --header "Authorization: '
        'Bearer $API_KEY" --header "X-Api-Key: $API_KEY"'
    )


def row(i: int, **fields) -> Row:
    values = {
        "id": f"{i:012x}",
        "wall_ns": i * 1_000_000_000,
        "method": "POST",
        "route": "/openai",
        "path": "/v1/chat/completions",
        "status": 200,
        "outcome": "ok",
        "live": False,
        "model": "gpt-4o",
        "model_requested": "gpt-4o",
        "api": "openai.chat",
        "streamed": False,
        "ttft_ns": None,
        "duration_ns": i,
        "input_tokens": None,
        "output_tokens": None,
        "req_bytes": 0,
        "res_bytes": 0,
        "chunks": 1,
        "findings": (),
        "locations": (),
    }
    values.update(fields)
    return Row(**values)


def test_pages_of_a_large_table_hold_only_the_page():
    table = Table()
    for i in range(10_000):
        table.put(row(i, status=500 if i % 10 == 0 else 200, ttft_ns=None if i % 2 else i))
    page = select(table.snapshot()[1], Query(limit=100))
    assert (page.total, page.matched, len(page.rows)) == (10_000, 10_000, 100)
    assert page.rows[0].id == f"{9999:012x}"  # newest first
    errors = select(table.snapshot()[1], Query(status=">=500", offset=990, limit=100))
    assert errors.matched == 1000 and len(errors.rows) == 10
    by_ttft = select(
        table.snapshot()[1], Query(sort="ttft", descending=False, offset=4990, limit=20)
    )
    assert [r.ttft_ns for r in by_ttft.rows[:10]] == list(range(9980, 10_000, 2))
    assert all(r.ttft_ns is None for r in by_ttft.rows[10:])  # unknown values sort last


def test_a_changed_row_is_replaced_and_reported():
    table = Table()
    table.put(row(1, live=True))
    version = table.version
    table.put(row(2))
    table.put(row(1, live=False, status=201))
    assert len(table) == 2 and table.get(row(1).id).status == 201
    assert table.changed_since(version) == [row(2).id, row(1).id]
    assert table.changed_since(table.version) == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"sort": "colour"}, "unknown sort"),
        ({"limit": 0}, "a page is"),
        ({"limit": 501}, "a page is"),
        ({"status": ">=5xx"}, "use a number"),
    ],
)
def test_bad_queries(spec, error):
    with pytest.raises(QueryError, match=error):
        Query(**spec)


def test_search_finds_every_word_in_stored_and_live_text():
    search = SearchText()
    try:
        search.add("a", "Weather in Paris?\nIt is SUNNY")
        search.add("b", "sunny side up")
        search.set_live("c", "partly sunny in paris so far")
        assert search.search(["sunny"]) == {"a", "b", "c"}
        assert search.search(["PARIS", "sunny"]) == {"a", "c"}
        assert search.search(["up", "paris"]) == set()
        search.add("c", "rain in paris after all")
        assert search.search(["sunny", "paris"]) == {"a"}
    finally:
        search.close()


def test_the_timeline_marks_stalls_and_gaps_that_stand_out():
    gaps = [100_000_000] * 6 + [6_000_000_000] + [100_000_000] * 3 + [400_000_000]
    spec = Spec(
        "dddddddddddd",
        chunks=[b"data: {}\n\n"] * len(gaps),
        gap_ns=gaps,
        content_type="text/event-stream",
    )
    a = analyzed(spec)
    t = timeline(a.exchange, a.exchange.response_chunks, a.facts.ttft_ns, 5_000_000_000)
    by_after = {g["after"]: g for g in t["gaps"]}
    assert len(t["gaps"]) == 5  # the largest, in time order
    # gap_ns[i] comes before chunk i: the 6 s one follows the 6th chunk, the 0.4 s one the 10th
    assert by_after[6]["stall"] and by_after[6]["to_ns"] - by_after[6]["from_ns"] == 6_000_000_000
    assert by_after[10]["notable"] and not by_after[10]["stall"]  # 4x the usual gap
    assert not any(g["notable"] for after, g in by_after.items() if after not in (6, 10))
    assert [c[0] for c in t["chunks"]].count(1) == len(gaps)


def test_the_sans_io_parts_do_not_import_trio():
    for module in ("table", "summary", "detail", "conversation", "commands", "search"):
        assert trio_chain(PACKAGE / "ui" / f"{module}.py") is None, module
    assert trio_chain(PACKAGE / "inspect" / "follow.py") is None
