"""Redaction's searches: a faster search (a prefilter, records searched together) must never hide a
match from the redactor."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecap.capture.ring import BodyRing
from wirecap.proxy.config import DEFAULT_REDACT_BODY
from wirecap.proxy.redact import (
    Rules,
    context_free,
    literal_prefix,
    rarest_byte,
    redact_header_lines,
    redact_header_lines_joined,
)


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        (DEFAULT_REDACT_BODY[0], b"sk-"),
        ("AKIA[0-9A-Z]{16}", b"AKIA"),
        ("ab*c", b"a"),  # b may be absent
        ("ab|cd", b""),  # no text common to both branches
        ("(?i)sk-x", b""),  # case-insensitive: a literal search would miss SK-X
        ("[a-z]+key", b""),
    ],
)
def test_literal_prefix_is_what_every_match_starts_with(pattern, prefix):
    assert literal_prefix(re.compile(pattern.encode())) == prefix


PATTERNS = [DEFAULT_REDACT_BODY[0], "AKIA[0-9A-Z]{4}", "ab|cd", "(?i)tok_[0-9]{3}"]
PIECES = [
    b"sk-",
    b"sk-ant-",
    b"A" * 25,
    b"AKIA",
    b"1234",
    b"ab",
    b"cd",
    b"TOK_",
    b"123",
    b"-",
    b" ",
]


@given(
    st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=5), max_size=20),
)
def test_may_match_agrees_with_the_regular_expression(patterns, pieces):
    rules = Rules.compile([], patterns)
    data = b"".join(pieces)
    assert rules.any_pattern is not None
    assert rules.may_match(data) == (rules.any_pattern.search(data) is not None)
    assert rules.may_match(bytearray(data)) == rules.may_match(data)
    ring = BodyRing.create(len(data) + 16)  # as a chunk in the capture's shared ring
    assert ring is not None
    at = ring.put(data)
    assert at is not None
    assert rules.may_match(ring.chunk(at, len(data))) == rules.may_match(data)
    ring.close()


@pytest.mark.parametrize(
    ("prefix", "byte"),
    [(b"sk-", b"-"), (b"sk-ant-", b"-"), (b"AKIA", b"A"), (b"ghp_", b"_"), (b"xy", b"y")],
)
def test_the_first_search_is_for_a_byte_that_plain_text_and_base64_rarely_hold(prefix, byte):
    assert bytes([rarest_byte(prefix)]) == byte


HEAD_PIECES = [
    b"POST /v1 HTTP/1.1",
    b"\r\n",
    b"\r",
    b"\n",
    b"Authorization: Bearer sk-a",
    b"authorization:\tBearer sk-b ",
    b"X-Api-Key: k1",
    b"Cookie: c=1",
    b"Cookie:",
    b"Authorization: [redacted sha256:00000000]",
    b"X-Model: m",
]


@given(st.lists(st.lists(st.sampled_from(HEAD_PIECES), max_size=8).map(b"".join), max_size=6))
def test_credential_lines_searched_over_joined_heads_are_those_of_each_head(heads):
    rules = Rules.compile(["authorization", "x-api-key", "cookie"], [])
    assert redact_header_lines_joined(heads, rules) == [
        redact_header_lines(head, rules) for head in heads
    ]


@pytest.mark.parametrize(
    ("pattern", "joinable"),
    [
        (DEFAULT_REDACT_BODY[0], True),
        (r"AKIA[0-9A-Z]{16}", True),
        (r"(?i)tok_(\d+)-\1", True),
        (r"^tok", False),
        (r"tok$", False),
        (r"\Atok", False),
        (r"\btok", False),
        (r"to\Bk", False),
        (r"tok(?=_)", False),
        (r"(?<!x)tok", False),
        (r"a|(?:b|^c)", False),
    ],
)
def test_patterns_that_look_past_their_match_are_not_searched_joined(pattern, joinable):
    assert context_free(re.compile(pattern.encode())) is joinable
    assert Rules.compile([], [DEFAULT_REDACT_BODY[0], pattern]).joinable is joinable
