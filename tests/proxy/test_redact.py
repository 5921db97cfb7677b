"""The body-pattern prefilter: a substring search must never hide a match from the redactor."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecap.proxy.config import DEFAULT_REDACT_BODY
from wirecap.proxy.redact import Rules, literal_prefix, rarest_byte


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


@pytest.mark.parametrize(
    ("prefix", "byte"),
    [(b"sk-", b"-"), (b"sk-ant-", b"-"), (b"AKIA", b"A"), (b"ghp_", b"_"), (b"xy", b"y")],
)
def test_the_first_search_is_for_a_byte_that_plain_text_and_base64_rarely_hold(prefix, byte):
    assert bytes([rarest_byte(prefix)]) == byte
