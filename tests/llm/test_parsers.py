"""SSE, NDJSON and content-coding parsers: spec cases and splits at every byte."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from wirecap.llm.http import DecodeError, decode_content, parse_head
from wirecap.llm.ndjson import NDJSONParser
from wirecap.llm.sse import SSEEvent, SSEParser


def parse_all(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i, chunk in enumerate(chunks):
        events += parser.feed(chunk, i)
    return events, parser


def summary(events: list[SSEEvent]) -> list[tuple[str, str, str | None, int | None]]:
    return [(e.event, e.data, e.id, e.retry) for e in events]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: hello\n\n", [("message", "hello", None, None)]),
        (b"data:no space\n\n", [("message", "no space", None, None)]),
        (b"data:  two spaces\n\n", [("message", " two spaces", None, None)]),
        (b"data: a\ndata: b\n\n", [("message", "a\nb", None, None)]),
        (b"event: delta\ndata: x\n\n", [("delta", "x", None, None)]),
        (
            b"id: 7\ndata: x\n\ndata: y\n\n",
            [("message", "x", "7", None), ("message", "y", "7", None)],
        ),
        (b"retry: 3000\ndata: x\n\n", [("message", "x", None, 3000)]),
        (b"retry: soon\ndata: x\n\n", [("message", "x", None, None)]),
        (b": keep-alive\n\ndata: x\n\n", [("message", "x", None, None)]),
        (
            b"data: crlf\r\n\r\ndata: cr\r\rdata: lf\n\n",
            [
                ("message", "crlf", None, None),
                ("message", "cr", None, None),
                ("message", "lf", None, None),
            ],
        ),
        (b"\xef\xbb\xbfdata: bom\n\n", [("message", "bom", None, None)]),
        (b"data\n\n", [("message", "", None, None)]),
        (
            b"event: ping\n\n",
            [("ping", "", None, None)],
        ),  # kept, unlike a browser: inspection sees it
        (b"unknown: field\ndata: x\n\n", [("message", "x", None, None)]),
        (b"data: \xc3\xa9t\xc3\xa9\n\n", [("message", "été", None, None)]),
    ],
)
def test_sse_spec_cases(stream, expected):
    events, parser = parse_all([stream])
    assert summary(events) == expected
    assert parser.close().clean


@pytest.mark.parametrize(
    "stream",
    [
        b'event: message_start\r\ndata: {"a": 1}\r\n\r\n: ping\r\nid: 42\r\nevent: delta\r\ndata: \xc3\xa9\r\ndata: two\r\n\r\n',
        b"data: one\r\rdata: two\r\r",
        b"\xef\xbb\xbfretry: 10\nevent: e\ndata: x\n\n",
    ],
)
def test_sse_split_at_every_byte_gives_the_same_events(stream):
    whole, _ = parse_all([stream])
    for cut in range(len(stream) + 1):
        events, parser = parse_all([stream[:cut], stream[cut:]])
        assert summary(events) == summary(whole), cut
        assert parser.close().clean
    one_by_one, _ = parse_all([bytes([b]) for b in stream])
    assert summary(one_by_one) == summary(whole)


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_sse_any_chunking(cuts):
    stream = b"event: a\r\ndata: 1\r\n\r\nid: x\ndata: 2\ndata: 3\n\n:c\r\rdata: 4\r\r"
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    events, _ = parse_all(chunks)
    assert summary(events) == [
        ("a", "1", None, None),
        ("message", "2\n3", "x", None),
        ("message", "4", "x", None),
    ]


def test_sse_close_reports_a_cut_mid_event():
    _, parser = parse_all([b"data: one\n\ndata: tw"])
    end = parser.close()
    assert end.pending_line and not end.clean
    _, parser = parse_all([b"data: one\n\ndata: two\n"])
    end = parser.close()
    assert end.pending_event and not end.pending_line


def test_ndjson_split_anywhere_and_bad_lines():
    stream = b'{"a": 1}\n\n{"b": 2}\r\nnot json\n{"c": 3}'
    for cut in range(len(stream) + 1):
        parser = NDJSONParser()
        lines = parser.feed(stream[:cut], 1) + parser.feed(stream[cut:], 2)
        assert [ln.value for ln in lines if not ln.error] == [{"a": 1}, {"b": 2}]
        assert [ln.raw for ln in lines if ln.error] == [b"not json"]
        tail = parser.close()
        assert tail is not None and tail.value == {"c": 3}


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("br", brotli.compress),
        ("gzip, zstd", lambda b: zstandard.ZstdCompressor().compress(gzip.compress(b))),
        ("identity", lambda b: b),
    ],
)
def test_content_codings_are_decoded(encoding, encode):
    body = b'{"text": "' + b"hello " * 1000 + b'"}'
    assert decode_content(encode(body), encoding) == body


def test_decoding_is_bounded_and_errors_are_clear():
    bomb = gzip.compress(b"\0" * (10 * 1024 * 1024))
    with pytest.raises(DecodeError, match="past"):
        decode_content(bomb, "gzip", limit=1024 * 1024)
    with pytest.raises(DecodeError, match="corrupt"):
        decode_content(b"not gzip", "gzip")
    with pytest.raises(DecodeError, match="unknown content coding"):
        decode_content(b"x", "compress")


def test_parse_head():
    head = parse_head(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\ncontent-type: application/json; charset=utf-8\r\n\r\n"
    )
    assert (
        head.status == 429
        and head.get("retry-after") == "7"
        and head.content_type == "application/json"
    )


class SearchCounting(bytearray):
    """A parser buffer that counts the bytes its searches for line endings go over."""

    searched = 0

    def find(self, sub, start=0, *args):
        self.searched += len(self) - start
        return super().find(sub, start, *args)

    def rfind(self, sub, start=0, *args):
        self.searched += len(self) - start
        return super().rfind(sub, start, *args)


@pytest.mark.parametrize("parser_type", [SSEParser, NDJSONParser])
def test_a_long_line_in_small_reads_is_searched_once(parser_type):
    """A line of 4 MiB arriving 1 KiB at a time: each read's bytes are searched for a line end
    once, not the whole buffered line again at every read (quadratic: 8 GiB here)."""
    parser = parser_type()
    parser._buf = buf = SearchCounting()
    read = b"a" * 1024
    for _ in range(4096):
        assert parser.feed(read, 1) == []
    ended = parser.feed(b"\n\n", 2)  # an unknown SSE field; a line that is not JSON
    if parser_type is SSEParser:
        assert ended == []
    else:
        assert [line.raw for line in ended] == [read * 4096]
    assert buf.searched <= 4 * (4096 * 1024 + 2)
