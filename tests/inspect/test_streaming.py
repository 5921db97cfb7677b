"""The pieces that let readers stream large bodies give what the whole-body versions give: the
secret scan over windows, streamed HAR/JSON Lines values, lazily read exchange bodies, and the
digest comparison of large replayed answers."""

from __future__ import annotations

import io
import json
import random
import re

import pytest
import trio
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.captures import Spec, write_capture
from wirecap.capture import open_capture
from wirecap.capture.bodies import HELD_BODY_BYTES, PACKED_BODY_BYTES
from wirecap.inspect.detectors import SECRET_PATTERNS, find_secret
from wirecap.inspect.select import analyzed_exchanges
from wirecap.interop import export
from wirecap.llm import ExchangeInput, TimedChunks
from wirecap.replay.compare import WHOLE_BODY_MAX, compare

#: The credential shapes as plain regular expressions over a whole body: what the windowed,
#: literal-led scan must agree with.
WHOLE_BODY_SHAPES = (
    ("OpenAI key", re.compile(rb"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}")),
    ("Anthropic key", re.compile(rb"sk-ant-[A-Za-z0-9_\-]{20,}")),
    ("bearer token", re.compile(rb"(?i)\bbearer\s+(?!\[redacted)[A-Za-z0-9._~+/\-]{16,}=*")),
    ("AWS access key", re.compile(rb"\bAKIA[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Google API key", re.compile(rb"\bAIza[0-9A-Za-z_\-]{35}\b")),
)


def whole_body_label(data: bytes) -> str | None:
    for label, pattern in WHOLE_BODY_SHAPES:
        if pattern.search(data):
            return label
    return None


SECRETS = [
    b"sk-proj-" + b"a1B2" * 6,
    b"sk-ant-api03-" + b"x" * 30,
    b"Bearer abcdefghijklmnop1234",
    b"AKIA" + b"ABCDEFGHIJ012345",
    b"ghp_" + b"Z" * 36,
    b"AIza" + b"q" * 35,
    b"xAKIA" + b"ABCDEFGHIJ012345",  # no word boundary: not a key
    b"bearer [redacted sha256:12345678]",
]


@settings(max_examples=200, deadline=None)
@given(
    before=st.binary(max_size=300),
    secret=st.sampled_from(SECRETS),
    after=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=6),
)
def test_secret_scan_over_any_split_agrees_with_the_whole_body(before, secret, after, cuts):
    data = before + secret + after
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    found = find_secret(pieces)
    assert (found[0] if found else None) == whole_body_label(data)


def test_secret_scan_finds_a_key_split_between_large_reads():
    filler = b"x " * 600_000
    body = filler + b"key AKIA" + b"ABCDEFGHIJ012345" + b" end" + filler
    split = len(filler) + 10  # inside the key
    assert find_secret([body[:split], body[split:]]) == (
        "AWS access key",
        b"AKIAABCDEFGHIJ012345",
    )
    assert len(SECRET_PATTERNS) == len(WHOLE_BODY_SHAPES)


@pytest.fixture
def large_capture(tmp_path):
    """One exchange whose response (about 1.5 MiB of random UTF-8 text in odd-sized reads) is more
    than an exchange holds and does not pack: its body is read again from the file."""
    rng = random.Random(7)
    text = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(600_000)).encode()
    chunks = [text[i : i + 7777] for i in range(0, len(text), 7777)]  # splits characters
    spec = Spec("large0000001", chunks=chunks, content_type="text/plain", path="/big")
    trio.run(write_capture, tmp_path, [spec])
    assert len(text) > HELD_BODY_BYTES and len(zstandard.compress(text)) > 2 * PACKED_BODY_BYTES
    return tmp_path, text


def test_exchange_reads_a_large_body_again_from_the_file_even_after_close(large_capture):
    directory, text = large_capture
    with open_capture(directory) as capture:
        [exchange] = capture.exchanges()
        by_id = capture.get(exchange.id)
    assert by_id is not None
    for ex in (exchange, by_id):
        assert not ex.holds_bodies
        assert ex.response_body == text
        assert sum(m.size for m in ex.timeline if m.dir == "res") == len(text)
        assert b"".join(ex.iter_response_bytes()) == ex.response_bytes()


@pytest.mark.parametrize("fmt", ["har", "jsonl"])
def test_streamed_export_is_the_document_built_in_memory(large_capture, monkeypatch, fmt):
    directory, _text = large_capture
    write = export.write_har if fmt == "har" else export.write_jsonl

    def exported() -> str:
        out = io.StringIO()
        with open_capture(directory) as capture:
            write(analyzed_exchanges(capture), out)
        return out.getvalue()

    in_memory = exported()
    monkeypatch.setattr(export, "STREAM_OVER", 100)  # every body and text streamed
    streamed = exported()
    # JSON Lines end at "\n" only: the text holds other characters that splitlines() splits at
    documents = [streamed] if fmt == "har" else streamed.rstrip("\n").split("\n")
    expected = [in_memory] if fmt == "har" else in_memory.rstrip("\n").split("\n")
    assert [json.loads(d) for d in documents] == [json.loads(d) for d in expected]
    assert len(expected) == 1 or fmt == "har"


def test_streamed_binary_body_is_the_same_base64(monkeypatch, tmp_path):
    body = bytes(range(256)) * 50  # not UTF-8
    spec = Spec("binary000001", chunks=[body[:1001], body[1001:]], content_type="image/png")
    trio.run(write_capture, tmp_path, [spec])

    def content() -> dict:
        out = io.StringIO()
        with open_capture(tmp_path) as capture:
            export.write_har(analyzed_exchanges(capture), out)
        return json.loads(out.getvalue())["log"]["entries"][0]["response"]["content"]

    whole = content()
    monkeypatch.setattr(export, "STREAM_OVER", 10)
    assert content() == whole
    assert whole["encoding"] == "base64"


def test_large_answers_compare_by_digest():
    big = b"z" * (WHOLE_BODY_MAX + 1)

    def answer(body: bytes, digest_only: bool = False) -> ExchangeInput:
        chunks = TimedChunks.held([(1, body)])
        if digest_only:  # as a replayed answer that was hashed and not kept
            chunks = TimedChunks(tuple, chunks.times, chunks.size, chunks.sha256())
        return ExchangeInput(
            method="GET",
            path="/big",
            request_head=None,
            request_body=b"",
            status=200,
            response_head=None,
            response_chunks=chunks,
        )

    assert compare(answer(big), answer(big, digest_only=True)).passed
    changed = compare(answer(big), answer(big[:-1] + b"y", digest_only=True))
    assert not changed.passed and "sha256" in changed.summary
    exact = compare(answer(big), answer(big[:-1] + b"y", digest_only=True), "exact")
    assert not exact.passed and exact.summary == "body bytes differ"
