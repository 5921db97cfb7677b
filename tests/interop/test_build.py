"""The sans-IO builder: an imported exchange becomes the proxy's records, whose stored bytes
agree with the heads written (read back through the capture's own payload reader)."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecap.capture import assemble
from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    ExchangeNote,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.interop.build import EntryError, Imported, Source, Timings, exchange_records

SOURCE = Source(format="har", file="t.har", entry=0)


def imported(**over) -> Imported:
    fields = {
        "source": SOURCE,
        "method": "POST",
        "url": "https://api.example.com/v1/x?a=1",
        "request_headers": [("Content-Type", "application/json")],
        "request_body": b'{"q": 1}',
        "status": 200,
        "response_headers": [("Content-Type", "application/json")],
        "response_body": b'{"a": 2}',
        "wall_ns": 1_700_000_000_000_000_000,
    }
    return Imported(**{**fields, **over})


def built(ex: Imported):
    records = exchange_records(ex, "0123456789ab")
    [exchange] = assemble(records)
    return records, exchange


def test_records_come_in_the_proxy_order_with_a_note():
    records, exchange = built(imported(timings=Timings(request_end_ns=5, response_ns=9, end_ns=20)))
    assert [type(r) for r in records] == [
        RequestReceived,
        UpstreamRequest,
        BodyChunk,
        ResponseHead,
        BodyChunk,
        ExchangeNote,
        ExchangeEnd,
    ]
    assert exchange.request.head == (
        b"POST /v1/x?a=1 HTTP/1.1\r\nHost: api.example.com\r\n"
        b"Content-Type: application/json\r\nContent-Length: 8\r\n\r\n"
    )
    assert exchange.upstream.head.endswith(
        b"X-Proxy-Path: https://api.example.com/v1/x?a=1\r\n\r\n"
    )
    assert exchange.upstream_wire_head == exchange.request.head
    assert (exchange.request_body, exchange.response_body) == (b'{"q": 1}', b'{"a": 2}')
    assert (exchange.ttfb_ns, exchange.duration_ns, exchange.status) == (9, 20, 200)
    assert exchange.end.req_bytes == 8 and exchange.end.res_bytes == 8
    assert exchange.notes_of("import") == [
        {
            "source": "har",
            "file": "t.har",
            "entry": 0,
            "approximate": [
                "head rebuilt",
                "Host added",
                "request Content-Length added",
                "response Content-Length added",
                "no chunk timing",
            ],
        }
    ]


SSE = b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"


@pytest.mark.parametrize(
    ("over", "head_has", "wire", "notes"),
    [
        (  # a chunked source: chunked bytes, one chunk per event
            {
                "response_headers": [
                    ("Content-Type", "text/event-stream"),
                    ("Transfer-Encoding", "chunked"),
                ],
                "response_body": SSE,
            },
            b"Transfer-Encoding: chunked\r\n",
            b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
            {"no chunk timing", "body re-chunked"},
        ),
        (  # a Content-Length that does not count the body is corrected
            {"response_headers": [("Content-Length", "99")]},
            b"Content-Length: 8\r\n",
            b'{"a": 2}',
            {"response Content-Length corrected"},
        ),
        (  # a coding the body does not have is dropped
            {"response_headers": [("Content-Encoding", "gzip")]},
            b"Content-Length: 8\r\n",
            b'{"a": 2}',
            {"response Content-Encoding gzip dropped (body stored decoded)"},
        ),
        (  # a coded body keeps its coding
            {
                "response_headers": [("Content-Encoding", "gzip")],
                "response_body": gzip.compress(b"{}", mtime=0),
            },
            b"Content-Encoding: gzip\r\n",
            gzip.compress(b"{}", mtime=0),
            set(),
        ),
        (  # no body may follow a 204, nor the answer to HEAD
            {"status": 204, "response_body": b"x"},
            b"HTTP/1.1 204 No Content\r\n",
            b"",
            {"response body of a bodiless answer left out"},
        ),
        (  # HTTP/2 pseudo-headers and unusable lines are left out
            {
                "response_headers": [(":status", "200"), ("Bad Name", "x"), ("X-A", "a\nb")],
                "http_version": "HTTP/2",
            },
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
            b'{"a": 2}',
            {"2 unusable header lines left out", "HTTP/2 written as HTTP/1.1"},
        ),
    ],
)
def test_stored_bytes_agree_with_the_head(over, head_has, wire, notes):
    _, exchange = built(imported(**over))
    assert head_has in exchange.response.head
    assert exchange.response_bytes().removeprefix(exchange.response.head) == wire
    assert notes <= set(exchange.notes_of("import")[0]["approximate"])


def test_timed_reads_keep_their_times_and_the_end_of_a_chunked_body():
    reads = [(10, b"data: 1\n\n"), (30, b"data: [DONE]\n\n"), (45, b"")]
    _, exchange = built(
        imported(
            response_headers=[
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", "text/event-stream"),
            ],
            response_body=b"data: 1\n\ndata: [DONE]\n\n",
            response_reads=reads,
            timings=Timings(request_end_ns=2, response_ns=11, end_ns=50),
        )
    )
    assert [(c.ns, c.data) for c in exchange.iter_wire("res")] == [
        (10, b"9\r\ndata: 1\n\n\r\n"),
        (30, b"e\r\ndata: [DONE]\n\n\r\n"),
        (45, b"0\r\n\r\n"),
    ]
    assert exchange.ttfb_ns == 10  # no later than the first read
    assert "no chunk timing" not in exchange.notes_of("import")[0]["approximate"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"url": "/v1/x"}, "not an absolute http"),
        ({"status": 0}, "no usable response"),
        ({"status": 101}, "no usable response"),
        ({"method": "GE T"}, "not a request method"),
    ],
)
def test_entries_that_cannot_be_exchanges_say_why(over, message):
    with pytest.raises(EntryError, match=message):
        exchange_records(imported(**over), "0123456789ab")


header_text = (
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)


@given(
    body=st.binary(max_size=3000),
    response=st.binary(max_size=3000),
    chunked=st.booleans(),
    event_stream=st.booleans(),
    headers=st.lists(
        st.tuples(st.from_regex(r"\AX-[A-Za-z0-9-]{1,10}\Z"), header_text), max_size=4
    ),
)
def test_any_body_reads_back_as_itself(body, response, chunked, event_stream, headers):
    response_headers = [*headers, ("Content-Type", "text/event-stream" if event_stream else "x/y")]
    if chunked:
        response_headers.append(("Transfer-Encoding", "chunked"))
    _, exchange = built(
        imported(request_body=body, response_body=response, response_headers=response_headers)
    )
    assert exchange.request_body == body
    assert exchange.response_body == response
    assert (
        max(
            len(c.data)
            for c in exchange.response_chunks or [BodyChunk(x="", dir="res", ns=0, data=b"")]
        )
        <= 256 * 1024 + 16
    )
