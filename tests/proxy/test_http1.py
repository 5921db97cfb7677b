"""The relay's HTTP/1.1 framing, checked against h11 on the same bytes.

h11 is the reference: every head h11 rejects, http1 rejects too (it may reject more: obsolete line
folding, Transfer-Encoding on HTTP/1.0), and for every head both accept they agree on the method,
target, status, header fields and body framing. Bodies are compared the same way, split at every
byte.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wirecap.proxy import http1

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
values = st.binary(max_size=30).filter(lambda v: b"\r" not in v and b"\n" not in v)
# Mostly well-formed heads, with a byte changed now and then to hit the error paths.
fields = st.lists(st.tuples(tokens, values), max_size=6)


def _h11_request(raw: bytes) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request), event
    return event


def _h11_response(raw: bytes, method: bytes = b"GET") -> h11.Response | None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"x")]))
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Response | h11.InformationalResponse), event
    return event


def _ours_request(raw: bytes) -> http1.RequestHead | None:
    try:
        head = http1.parse_request_head(raw, 1 << 20)
    except http1.ProtocolError:
        return None
    assert head is not None and raw.startswith(head.raw)
    return head


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    if data.draw(st.booleans()):
        return raw
    at = data.draw(st.integers(0, max(len(raw) - 5, 0)))
    byte = data.draw(st.sampled_from([0, 9, 13, 10, 32, 58, 127, 200, 65]))
    return raw[:at] + bytes([byte]) + raw[at + 1 :]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"X-CUSTOM"]),
    target=st.sampled_from([b"/", b"/v1/chat/completions?x=1", b"/a%20b", b"*"]),
    extra=fields,
    body=st.sampled_from(["none", "length", "chunked"]),
    data=st.data(),
)
def test_request_heads_agree_with_h11(method, target, extra, body, data):
    headers = [(b"Host", b"example.test"), *extra]
    if body == "length":
        headers.append((b"Content-Length", b"12"))
    elif body == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    raw = http1.serialize_head(method + b" " + target + b" HTTP/1.1", headers)
    raw = _mutate(raw, data)
    theirs = _h11_request(raw)
    ours = _ours_request(raw)
    if ours is not None and ours.framing_problem is not None:
        ours = None  # answered 400 without being forwarded: a rejection
    if theirs is None:
        assert ours is None, f"accepted what h11 rejects: {raw!r}"
        return
    if ours is None:
        return  # stricter than h11 is allowed
    assert (ours.method, ours.target) == (theirs.method, theirs.target)
    assert [(n.lower(), v) for n, v in ours.headers] == [
        (n.lower(), v) for n, v in theirs.headers.raw_items()
    ]
    te = [v.lower() for n, v in theirs.headers if n == b"transfer-encoding"]
    assert ours.chunked == (te == [b"chunked"])
    lengths = [v for n, v in theirs.headers if n == b"content-length"]
    assert ours.body_length == (int(lengths[0]) if lengths and not te else 0)


@settings(max_examples=300)
@given(
    status=st.sampled_from([100, 103, 200, 204, 304, 404, 500]),
    reason=st.sampled_from([b"OK", b"", b"Not Found", b"weird reason \xe9"]),
    extra=fields,
    framing=st.sampled_from(["length", "chunked", "close"]),
    method=st.sampled_from([b"GET", b"HEAD"]),
    data=st.data(),
)
def test_response_heads_agree_with_h11(status, reason, extra, framing, method, data):
    headers = list(extra)
    if framing == "length":
        headers.append((b"Content-Length", b"7"))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    start = b"HTTP/1.1 %d" % status + (b" " + reason if reason else b"")
    raw = _mutate(http1.serialize_head(start, headers), data)
    theirs = _h11_response(raw, method)
    try:
        ours = http1.parse_response_head(raw, method, 1 << 20)
    except http1.ProtocolError:
        ours = None
    if theirs is None:
        assert ours is None, f"accepted what h11 rejects: {raw!r}"
        return
    if ours is None:
        return
    assert ours.status == theirs.status_code
    assert ours.reason == theirs.reason
    assert [(n.lower(), v) for n, v in ours.headers] == [
        (n.lower(), v) for n, v in theirs.headers.raw_items()
    ]


def test_heads_wait_for_the_empty_line_and_respect_the_limit():
    assert http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 1024) is None
    with pytest.raises(http1.ProtocolError) as exc:
        http1.parse_request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000, 1024)
    assert exc.value.status == 431
    with pytest.raises(http1.ProtocolError) as exc:
        http1.parse_request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 1024)
    assert exc.value.status == 431
    with pytest.raises(http1.ProtocolError, match="Host"):
        http1.parse_request_head(b"GET / HTTP/1.1\r\n\r\n", 1024)
    with pytest.raises(http1.ProtocolError, match="folding"):
        http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 1024)
    lf_only = http1.parse_request_head(b"GET / HTTP/1.0\nA: b\n\nrest", 1024)
    assert lf_only is not None and lf_only.raw == b"GET / HTTP/1.0\nA: b\n\n"
    assert not lf_only.keep_alive  # HTTP/1.0: one request per connection, as h11 does


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], "both"),
        ([(b"Content-Length", b"5"), (b"Content-Length", b"6")], "conflicting"),
        ([(b"Content-Length", b"5, 6")], "conflicting"),
        ([(b"Content-Length", b"-1")], "malformed"),
        ([(b"Content-Length", b"0x10")], "malformed"),
        ([(b"Transfer-Encoding", b"gzip, chunked")], "exactly"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], "exactly"),
        ([(b"Content-Length", b"5"), (b"Content-Length", b"5")], None),
        ([(b"Transfer-Encoding", b"Chunked")], None),
    ],
)
def test_request_smuggling_shapes_are_framing_problems(headers, problem):
    raw = http1.serialize_head(b"POST / HTTP/1.1", [(b"Host", b"a"), *headers])
    head = http1.parse_request_head(raw, 1 << 16)
    assert head is not None
    if problem is None:
        assert head.framing_problem is None
    else:
        assert head.framing_problem is not None and problem in head.framing_problem


def test_response_framing():
    def parse(raw: bytes, method: bytes = b"GET") -> http1.ResponseHead:
        head = http1.parse_response_head(raw, method, 1 << 16)
        assert head is not None
        return head

    assert parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").length == 3
    assert parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").chunked
    close = parse(b"HTTP/1.1 200 OK\r\n\r\n")
    assert close.length is None and not close.chunked and not close.keep_alive
    assert parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"HEAD").length == 0
    assert parse(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n").length == 0
    assert parse(b"HTTP/1.1 100 Continue\r\n\r\n").informational
    assert not parse(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ).keep_alive
    with pytest.raises(http1.ProtocolError):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(http1.ProtocolError):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")


def test_client_response_head_drops_hop_by_hop_and_says_when_it_closes():
    head = http1.parse_response_head(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
        b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET",
        1 << 16,
    )
    assert head is not None
    assert head.client_head(close=False) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert head.client_head(close=True, dechunk=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    )


def _h11_chunked_payload(raw: bytes) -> tuple[bytes, bool] | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + raw)
    payload = b""
    try:
        assert isinstance(conn.next_event(), h11.Request)
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                return payload, True
            else:
                return payload, False
    except h11.RemoteProtocolError:
        return None


chunks = st.lists(st.binary(min_size=1, max_size=40), max_size=5)


@settings(max_examples=300)
@given(
    parts=chunks,
    extension=st.sampled_from([b"", b";name=value", b"; x"]),
    trailer=st.sampled_from([b"", b"Trailer-Field: 1\r\n"]),
    cut=st.integers(0, 400),
    data=st.data(),
)
def test_chunked_bodies_agree_with_h11_split_anywhere(parts, extension, trailer, cut, data):
    raw = b"".join(b"%x%b\r\n%b\r\n" % (len(p), extension, p) for p in parts)
    raw += b"0\r\n" + trailer + b"\r\n"
    raw = _mutate(raw, data) + b"NEXT"
    expected = _h11_chunked_payload(raw)
    body = http1.ChunkedBody()
    payload, used_total = b"", 0
    try:
        for piece in (raw[:cut], raw[cut:]):
            used, got = body.feed(piece)
            payload += got
            used_total += used
            if body.done:
                break
    except http1.ProtocolError:
        return  # stricter than h11 is allowed
    if body.error is not None:
        assert not body.done
        return  # rejected after reporting a valid prefix: also allowed
    if expected is None:
        assert not body.done, f"accepted a chunked body h11 rejects: {raw!r}"
    elif expected[1]:
        assert body.done, f"h11 found the end of {raw!r}, http1 did not"
        assert payload == expected[0]
        assert raw[used_total:] == b"NEXT"  # exactly the body's bytes were taken


def test_chunked_body_one_byte_at_a_time():
    raw = b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\nNEXT"
    body = http1.ChunkedBody()
    payload = b""
    for i in range(len(raw)):
        _used, got = body.feed(raw[i : i + 1])
        payload += got
        if body.done:
            assert raw[i + 1 :] == b"NEXT"
            break
    assert payload == b"helloabc"
    with pytest.raises(http1.ProtocolError):
        http1.ChunkedBody().feed(b"zz\r\n")
    # Bad framing after good bytes: the good prefix is reported first, the error on the next call.
    broken = http1.ChunkedBody()
    assert broken.feed(b"3\r\nabcXY") == (6, b"abc")
    assert broken.error is not None and not broken.done
    with pytest.raises(http1.ProtocolError):
        broken.feed(b"more")
    assert http1.ChunkedBody().eof() is not None


def test_length_and_close_delimited_bodies():
    body = http1.LengthBody(5)
    assert body.feed(b"hel") == (3, b"hel")
    assert body.feed(b"loNEXT") == (2, b"lo")
    assert body.done and body.eof() is None
    short = http1.LengthBody(5)
    short.feed(b"he")
    assert short.eof() == "3 body bytes never arrived"
    until = http1.UntilClose()
    assert until.feed(b"abc") == (3, b"abc") and not until.done
    assert until.eof() is None and until.done


# Header names that the edits care about, mixed with ordinary ones, in any case.
_NOTABLE = [b"Connection", b"keep-alive", b"TE", b"Trailer", b"Upgrade", b"Proxy-Connection"]
_NOTABLE += [b"X-Proxy-Path", b"x-private", b"Content-Type", b"Authorization"]
edited_fields = st.lists(
    st.tuples(
        st.sampled_from(_NOTABLE) | tokens,
        st.sampled_from([b"1", b"keep-alive", b"close, X-Private", b"", b" padded \t"]) | values,
    ),
    max_size=8,
)


def _line_name(line: bytes) -> bytes:
    return line.partition(b":")[0].lower()


def _dropped(lines: list[bytes], standard: frozenset[bytes]) -> set[bytes]:
    """The reference rule: hop-by-hop names, plus what Connection lists (but framing fields)."""
    listed = {
        token.strip().lower()
        for line in lines
        if _line_name(line) == b"connection"
        for token in line.partition(b":")[2].split(b",")
    }
    return standard | (listed - {b"", b"host", b"content-length", b"transfer-encoding"})


@settings(max_examples=300)
@given(fields=edited_fields, host_first=st.booleans(), proxy_path=st.booleans())
def test_upstream_head_cuts_lines_and_keeps_the_others_byte_for_byte(
    fields, host_first, proxy_path
):
    lines = [name + b":" + value for name, value in fields]
    lines.insert(0 if host_first else len(lines), b"HOST:  client.test ")
    raw = b"POST /a HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    try:
        head = http1.parse_request_head(raw, 1 << 16)
    except http1.ProtocolError:
        return  # e.g. a value with a control character: not this test's subject
    assert head is not None
    drop = _dropped(lines, http1.HOP_BY_HOP | {b"x-proxy-path"})
    expected = [
        b"Host: up.test" if _line_name(line) == b"host" else line
        for line in lines
        if _line_name(line) not in drop or _line_name(line) == b"host"
    ]
    if proxy_path:
        expected.append(b"X-Proxy-Path: http://proxy/a")
    out = head.upstream_head(b"/b", b"up.test", b"http://proxy/a" if proxy_path else None)
    assert out == b"POST /b HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in expected) + b"\r\n"
    assert _h11_request(out) is not None


@settings(max_examples=300)
@given(
    fields=edited_fields, close=st.booleans(), dechunk=st.booleans(), minor=st.sampled_from("01")
)
def test_client_head_cuts_lines_and_keeps_the_others_byte_for_byte(fields, close, dechunk, minor):
    lines = [name + b":" + value for name, value in fields] + [b"Transfer-Encoding: chunked"]
    raw = b"HTTP/1.%s 200 OK\r\n" % minor.encode()
    raw += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    try:
        head = http1.parse_response_head(raw, b"GET", 1 << 16)
    except http1.ProtocolError:
        return
    assert head is not None
    drop = _dropped(lines, http1.HOP_BY_HOP | ({b"transfer-encoding"} if dechunk else set()))
    expected = [line for line in lines if _line_name(line) not in drop]
    if close:
        expected.append(b"Connection: close")
    out = head.client_head(close=close, dechunk=dechunk)
    assert out == b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in expected) + b"\r\n"
    if out == raw:
        assert out is head.raw  # nothing to change: the received bytes themselves go on


def test_bare_lf_heads_are_forwarded_with_crlf_lines():
    head = http1.parse_request_head(b"GET /x HTTP/1.1\nHost: a\nX-A:  1 \n\n", 1024)
    assert head is not None and head.raw == b"GET /x HTTP/1.1\nHost: a\nX-A:  1 \n\n"
    assert head.upstream_head(b"/x", b"b") == b"GET /x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n"
    assert head.headers == [(b"Host", b"a"), (b"X-A", b"1")]
    # A CRLF empty line after a bare LF one: the head ends at the first.
    head = http1.parse_request_head(b"GET / HTTP/1.0\n\nGET / HTTP/1.0\r\n\r\n", 1024)
    assert head is not None and head.raw == b"GET / HTTP/1.0\n\n"


def test_connection_cannot_take_framing_lines_off_a_forwarded_head():
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host\r\nContent-Length: 2\r\n\r\n"
    head = http1.parse_request_head(raw, 1024)
    assert head is not None and head.body_length == 2
    assert (
        head.upstream_head(b"/", b"b") == b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\n"
    )
