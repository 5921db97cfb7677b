"""Redaction of records before they are stored: what it replaces, and what it must keep intact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wirecap.capture.payload import request_payload
from wirecap.capture.records import BodyChunk, RequestReceived
from wirecap.capture.redact import (
    Redactor,
    Rules,
    redact_head,
    redact_patterns,
    same_length_placeholder,
)
from wirecap.proxy.config import DEFAULT_REDACT_BODY

KEY = b"sk-proj-" + b"A1b2C3d4" * 5
PATTERNS = [DEFAULT_REDACT_BODY[0], "AKIA[0-9A-Z]{4}", "ab|cd", "(?i)tok_[0-9]{3}"]
PIECES = [b"sk-", b"sk-ant-", b"A" * 25, b"AKIA", b"1234", b"ab", b"cd", b"TOK_", b"123", b"-"]


@given(
    st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=5), max_size=20),
)
def test_may_match_agrees_with_each_pattern(patterns, pieces):
    rules = Rules.compile([], patterns)
    data = b"".join(pieces)
    assert rules.may_match(data) == any(p.search(data) for p in rules.patterns)


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_credential_headers_lose_their_value_whatever_the_line_ends(ending):
    head = ending.join(
        [b"POST /v1 HTTP/1.1", b"Authorization: Bearer " + KEY, b"x-api-key:\tk1 ", b"X-Model: m"]
    )
    rules = Rules.compile(["authorization", "x-api-key"], [])
    out, found = redact_head(head + ending * 2, rules)
    assert KEY not in out and b"k1" not in out
    assert b"Authorization: Bearer [redacted sha256:" in out
    assert b"X-Model: m" in out
    assert [r.name for r in found] == ["authorization", "x-api-key"]


def test_a_head_redacted_once_is_left_as_it_is_the_second_time():
    head = b"POST /v1 HTTP/1.1\r\nAuthorization: Bearer " + KEY + b"\r\nX-Api-Key: k1\r\n\r\n"
    rules = Rules.compile(["authorization", "x-api-key"], [])
    once, _ = redact_head(head, rules)
    assert redact_head(once, rules) == (once, [])  # an imported capture keeps its fingerprints


@pytest.mark.parametrize("size", [1, 5, 16, 17, 25, 26, 27, 60, 200])
def test_a_body_placeholder_is_exactly_as_long_as_the_secret(size):
    secret = bytes(range(65, 65 + 26)) * 8
    replacement, fp = same_length_placeholder(secret[:size])
    assert len(replacement) == size and len(fp) == 8


def test_a_redacted_chunked_body_still_reads_back_as_its_payload():
    """Chunk sizes keep describing the stored bytes: the placeholder has the key's length."""
    payload = b'{"key": "' + KEY + b'"}'
    wire = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    redactor = Redactor(Rules.compile([], DEFAULT_REDACT_BODY))
    stored = redactor(BodyChunk(x="a", dir="req", ns=1, data=wire))
    assert isinstance(stored, BodyChunk) and KEY not in stored.data
    assert len(stored.data) == len(wire) and stored.redactions
    [chunk] = request_payload(head, [stored])
    assert chunk.data.startswith(b'{"key": "[redacted sha256:') and len(chunk.data) == len(payload)


def test_route_rules_apply_to_their_exchanges_only():
    base = Rules.compile([], [])
    redactor = Redactor(base, {"/team": base.merged([], ["team-[0-9]+"])})

    def request(x: str, route: str) -> RequestReceived:
        return RequestReceived(
            x=x, wall_ns=0, method="POST", target="/", head=b"POST / HTTP/1.1\r\n\r\n", route=route
        )

    redactor(request("a", "/team"))
    redactor(request("b", "/other"))
    body = b"id team-42"
    team = redactor(BodyChunk(x="a", dir="req", ns=1, data=body))
    other = redactor(BodyChunk(x="b", dir="req", ns=1, data=body))
    assert isinstance(team, BodyChunk) and b"team-42" not in team.data
    assert isinstance(other, BodyChunk) and other.data == body


def test_targets_lose_pattern_matches():
    rules = Rules.compile([], DEFAULT_REDACT_BODY)
    out, found = redact_patterns(b"/v1?key=" + KEY, rules, "target", same_length=False)
    assert KEY not in out and found[0].where == "target"


def test_a_folded_credential_header_loses_its_whole_value():
    rules = Rules.compile(["authorization", "x-api-key"], [])
    head = (
        b"POST / HTTP/1.1\r\nX-Api-Key:\r\n  my-team-secret-123\r\n"
        b"Authorization: Bearer\r\n\tsk-folded-secret\r\nX-Model: m\r\n\r\n"
    )
    out, found = redact_head(head, rules)
    assert b"my-team-secret-123" not in out and b"sk-folded-secret" not in out
    assert b"Authorization: Bearer [redacted sha256:" in out and b"X-Model: m" in out
    assert [r.name for r in found] == ["x-api-key", "authorization"]
