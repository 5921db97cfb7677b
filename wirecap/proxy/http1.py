"""HTTP/1.1 message framing for the relay: heads parsed, bodies delimited, bytes left as they are. Sans-IO.

The proxy forwards what it receives: a body's bytes go on exactly as they arrived (chunked stays
chunked, chunk extensions and trailers included), and a head keeps its header lines byte for byte
minus what a proxy must change (Host, hop-by-hop headers). So the relay needs only three things
from a parser, all here: where a head ends and what it says (:func:`parse_request_head`,
:func:`parse_response_head`), and where a body ends (:class:`LengthBody`, :class:`ChunkedBody`,
:class:`UntilClose`), with the payload bytes for the capture.

Heads are not split into fields on the way through. A head whose lines all end in CRLF (what
clients and servers send) is checked by a few scans of its bytes in C, and one regular expression
over its lower-cased copy finds the lines the relay reads or edits (framing, Host, hop-by-hop);
the head that goes on is the received one with those lines cut or replaced
(:meth:`RequestHead.upstream_head`, :meth:`ResponseHead.client_head`), usually the received bytes
as they are on the way back. The other lines are never looked at one by one: a head costs about
the same with 3 header lines or with the 16 an SDK sends. A head with bare-LF line ends is
checked line by line and forwarded rewritten with CRLFs.

Why not h11 here: h11 drives a full state machine per event, which costs about 100 us per message
side on the benchmark machine, more than the whole per-request budget of the proxy (see
docs/PERFORMANCE.md). This module does the same checks where they matter for a proxy: the request
line, status line and header lines against RFC 9110/9112 grammar, one Host for HTTP/1.1, and
rejection of every ambiguous framing (Content-Length with Transfer-Encoding, conflicting lengths,
codings other than chunked, malformed chunk sizes), so that the proxy and the upstream can never
disagree on where a message ends. tests/proxy/test_http1.py checks it against h11 on the same inputs.
h11 stays the HTTP engine of the replay client, the mock server and the tests' upstream.
"""

from __future__ import annotations

import re
from typing import Final, TypeVar

from wirecap.capture.records import proxy_path_line

Headers = list[tuple[bytes, bytes]]

#: What a body of plain payload (a length, or until close) is fed: bytes, or a view of the capture
#: ring the relay received them into.
_Bytes = TypeVar("_Bytes", bytes, memoryview)
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
# field-value: visible characters and obs-text, with spaces and tabs only inside; no CR, LF or NUL.
_VALUE: Final = rb"(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?"
#: Every byte allowed in a head but CR and LF, which may only come as CRLF: all but the control
#: characters other than tab (``head.replace(b"\r\n", b"").translate(None, _FIELD_BYTES)`` is
#: empty for a good one).
_FIELD_BYTES: Final = bytes(b for b in range(256) if b == 9 or 0x20 <= b != 0x7F)
#: A line break not followed by ``name:`` (a malformed line, or obsolete line folding).
_BAD_LINE_START: Final = re.compile(rb"\n(?!" + _TOKEN + rb":|\Z)")
_HEADER_LINE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*")
_HEAD_END: Final = re.compile(rb"\n\r?\n")
_LINE_BREAK: Final = re.compile(rb"\r?\n")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_DIGITS: Final = re.compile(rb"[0-9]{1,19}")

#: Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and are never forwarded.
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
#: Names a Connection header may not take off a forwarded head: the relay frames and routes by them.
_NEVER_CONNECTION_LISTED: Final = HOP_BY_HOP | {b"host", b"content-length", b"transfer-encoding"}
#: A header line the relay reads or edits, in a lower-cased head with CRLF lines: the CRLF before
#: it, its name, and its value up to the end of the line (trailing whitespace included).
_NOTABLE_LINE: Final = re.compile(
    rb"\r\n(host|content-length|transfer-encoding|expect|x-proxy-path|"
    + b"|".join(sorted(HOP_BY_HOP))
    + rb"):[ \t]*([^\r]*)"
)
#: Longest chunk-size line (with extensions) or trailer section accepted.
MAX_CHUNK_LINE: Final = 4096


class ProtocolError(Exception):
    """A message the proxy will not relay; ``status`` is the answer a client deserves (400, 431)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Head:
    """What request and response heads share: the bytes received and their canonical form."""

    __slots__ = ("_connection", "_cut", "_lower", "_start_end", "canonical", "raw")

    raw: bytes  #: the exact bytes received (what the capture records)
    #: ``raw`` when its lines end in CRLF (the usual case), else the same head rewritten with CRLF
    #: lines: what header edits cut and splice.
    canonical: bytes
    _lower: bytes  # ``canonical`` in lower case, where lines are searched by name
    _start_end: int  # where the start line's CRLF is in ``canonical``
    _cut: list[bytes]  # names of lines not forwarded (hop-by-hop, a client's X-Proxy-Path)
    _connection: list[bytes]  # the Connection header's tokens, lower case

    @property
    def headers(self) -> Headers:
        """The header fields, in order and case, values without surrounding whitespace. Built on
        demand: the relay edits the canonical bytes instead."""
        block = self.canonical[self._start_end + 2 : -4]
        if not block:
            return []
        fields = (line.partition(b":") for line in block.split(b"\r\n"))
        return [(name, value.strip(b" \t")) for name, _, value in fields]

    def _cut_spans(self, *more: bytes) -> list[tuple[int, int]]:
        """Where the lines not to forward are, in order: those in :attr:`_cut`, those Connection
        lists, and those named ``more``. A span goes from the CRLF before its line to the CRLF
        after it, so that cutting it removes the whole line."""
        lower, start_end = self._lower, self._start_end
        names = {*self._cut, *more}
        names.update(t for t in self._connection if t not in _NEVER_CONNECTION_LISTED)
        spans = []
        for name in names:
            needle = b"\r\n" + name + b":"
            at = lower.find(needle, start_end)
            while at >= 0:
                end = lower.find(b"\r", at + len(needle))
                spans.append((at, end))
                at = lower.find(needle, end)
        spans.sort()
        return spans


class RequestHead(_Head):
    """A parsed request head."""

    __slots__ = (
        "_host_span",
        "body_length",
        "chunked",
        "expect_continue",
        "framing_problem",
        "host",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, raw: bytes, canonical: bytes, start: re.Match[bytes]) -> None:
        self.raw = raw
        self.canonical = canonical
        self._start_end = start_end = start.end()
        self.method, self.target, minor = start.groups()
        self.version = b"1." + minor
        self._lower = lower = canonical.lower()
        hosts = 0
        lengths: list[bytes] = []
        codings: list[bytes] = []
        connection: list[bytes] = []
        expect = b""
        cut: list[bytes] = []
        for name, value in _NOTABLE_LINE.findall(lower, start_end, len(canonical) - 2):
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"expect":
                expect = value.rstrip(b" \t")
            else:
                cut.append(name)
                if name == b"connection":
                    connection += _tokens(value)
        if hosts > 1:
            raise ProtocolError("request has more than one Host header")
        if not hosts and minor == b"1":
            raise ProtocolError("HTTP/1.1 request without a Host header")
        self.host: bytes | None = None
        self._host_span: tuple[int, int] | None = None
        if hosts:  # its value as received (lower case is for finding it)
            at = lower.find(b"\r\nhost:", start_end)
            end = lower.find(b"\r", at + 7)
            self.host = canonical[at + 7 : end].strip(b" \t")
            self._host_span = (at, end)
        self._cut = cut
        self._connection = connection
        #: Why the body's framing is unsafe to forward (the exchange is recorded, then answered 400):
        #: the request-smuggling shapes, where the proxy and the upstream could disagree on where
        #: the body ends (RFC 9112 6.1, 6.3).
        self.framing_problem, length, chunked = _framing("request", lengths, codings)
        if self.framing_problem is None and chunked and minor == b"0":
            self.framing_problem = "HTTP/1.0 request with Transfer-Encoding"
        self.chunked = chunked and self.framing_problem is None
        self.body_length = length if length is not None and self.framing_problem is None else 0
        self.keep_alive = minor == b"1" and b"close" not in connection
        self.expect_continue = minor == b"1" and expect == b"100-continue"

    def body(self) -> LengthBody | ChunkedBody:
        """A reader for this request's body (a zero-length one when it has none)."""
        return ChunkedBody() if self.chunked else LengthBody(self.body_length)

    def upstream_head(self, target: bytes, host: bytes, proxy_url: bytes | None = None) -> bytes:
        """This head as it goes upstream: the request line for ``target`` in HTTP/1.1, the Host
        line's value replaced by ``host`` (a Host line is added first if there was none), every
        other line as received except the hop-by-hop ones and a client's own ``X-Proxy-Path``,
        and ``X-Proxy-Path: proxy_url`` last when ``proxy_url`` is given."""
        host_line = b"\r\nHost: " + host
        host_span = self._host_span
        edits: list[tuple[int, int, bytes]] = []
        if self._cut:  # (never the Host line: see _NEVER_CONNECTION_LISTED)
            edits = [(s, e, b"") for s, e in self._cut_spans()]
        if host_span is None:
            edits.insert(0, (self._start_end, self._start_end, host_line))
        else:
            edits.append((*host_span, host_line))
            if len(edits) > 1:
                edits.sort()
        start = self.method + b" " + target + b" HTTP/1.1"
        last = b"" if proxy_url is None else proxy_path_line(proxy_url)
        return _spliced(self.canonical, start, self._start_end, edits, last)


class ResponseHead(_Head):
    """A parsed response head (final or 1xx)."""

    __slots__ = ("chunked", "keep_alive", "length", "reason", "status", "version")

    def __init__(
        self, raw: bytes, canonical: bytes, start: re.Match[bytes], request_method: bytes
    ) -> None:
        self.raw = raw
        self.canonical = canonical
        self._start_end = start_end = start.end()
        minor, status, reason = start.groups()
        self.version = b"1." + minor
        self.status = status = int(status)
        self.reason = reason or b""
        self._lower = lower = canonical.lower()
        lengths: list[bytes] = []
        codings: list[bytes] = []
        connection: list[bytes] = []
        cut: list[bytes] = []
        for name, value in _NOTABLE_LINE.findall(lower, start_end, len(canonical) - 2):
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name in HOP_BY_HOP:
                cut.append(name)
                if name == b"connection":
                    connection += _tokens(value)
        self._cut = cut
        self._connection = connection
        self.keep_alive = minor == b"1" and b"close" not in connection
        # Framing headers are checked even where they do not apply (1xx, 204, 304, HEAD), as h11
        # does: a response that lies about its framing is not relayed. (RFC 9112 6.3 would read
        # codings other than chunked to the close; like h11, the relay refuses them.)
        problem, length, chunked = _framing("response", lengths, codings)
        if problem is not None:
            raise ProtocolError(problem)
        self.chunked = chunked
        #: None: delimited by the connection closing.
        self.length: int | None = length
        if status < 200 or status in (204, 304) or request_method == b"HEAD":
            self.length, self.chunked = 0, False
        if self.length is None and not self.chunked:
            self.keep_alive = False

    @property
    def informational(self) -> bool:
        return self.status < 200

    def body(self) -> LengthBody | ChunkedBody | UntilClose:
        if self.chunked:
            return ChunkedBody()
        if self.length is None:
            return UntilClose()
        return LengthBody(self.length)

    def client_head(self, *, close: bool, dechunk: bool = False) -> bytes:
        """This head as the proxy sends it to its client: every line as received except the
        hop-by-hop ones, the status line in HTTP/1.1 (the proxy's version on this connection), and
        ``Connection: close`` last when the proxy will close the client connection after this
        response. ``dechunk`` drops Transfer-Encoding for an HTTP/1.0 client, which gets the payload
        delimited by the close. Usually the received bytes as they are."""
        last = b"Connection: close\r\n" if close and self.status >= 200 else b""
        canonical = self.canonical
        if not self._cut and not dechunk and not last and self.version == b"1.1":
            return canonical
        cut = self._cut_spans(b"transfer-encoding") if dechunk else self._cut_spans()
        edits = [(s, e, b"") for s, e in cut]
        start = b"HTTP/1.1" + canonical[8 : self._start_end]
        return _spliced(canonical, start, self._start_end, edits, last)


def _framing(
    what: str, length_values: list[bytes], coding_values: list[bytes]
) -> tuple[str | None, int | None, bool]:
    """From a message's Content-Length and Transfer-Encoding values (lower case): why its framing
    is ambiguous (or None when it is sound), its length and whether it is chunked."""
    if not coding_values:
        if not length_values:
            return None, None, False
        if len(length_values) == 1:  # the usual case
            value = length_values[0].strip()
            if value.isdigit() and len(value) <= 19:
                return None, int(value), False
    lengths = {v.strip() for value in length_values for v in value.split(b",")}
    # Empty items are kept: "chunked," is not exactly chunked, and is refused.
    codings = [v.strip() for value in coding_values for v in value.split(b",")]
    length = next(iter(lengths)) if lengths else None
    problem = None
    if lengths and codings:
        problem = f"{what} has both Content-Length and Transfer-Encoding"
    elif len(lengths) > 1:
        problem = f"{what} has conflicting Content-Length values"
    elif length is not None and not _DIGITS.fullmatch(length):
        problem = f"{what} has a malformed Content-Length"
    elif codings and codings != [b"chunked"]:
        problem = f"{what} Transfer-Encoding must be exactly 'chunked'"
    if problem is not None:
        return problem, None, bool(codings)
    return None, int(length) if length is not None else None, bool(codings)


def _spliced(
    canonical: bytes,
    start: bytes,
    start_end: int,
    edits: list[tuple[int, int, bytes]],
    last: bytes,
) -> bytes:
    """``canonical`` with ``start`` as its start line, each ``(s, e, text)`` span (in order, not
    overlapping) replaced by ``text``, and ``last`` (whole CRLF lines) after the last header line."""
    parts = [start]
    at = start_end
    for s, e, text in edits:
        parts += (canonical[at:s], text)
        at = e
    parts += (canonical[at:-2], last, b"\r\n")
    return b"".join(parts)


def _tokens(value: bytes) -> list[bytes]:
    """The non-empty items of a comma-separated header value, stripped and in lower case."""
    return [t for t in (v.strip().lower() for v in value.split(b",")) if t]


def _find_head(buf: bytes | bytearray, max_head: int) -> int:
    """Length of the complete head at the start of ``buf``, or 0 when more bytes are needed.

    The head ends at the first empty line; lines may end in CRLF or, leniently, in a bare LF.
    """
    match = _HEAD_END.search(buf)
    if match is None:
        if len(buf) > max_head:
            raise ProtocolError(f"head is longer than {max_head} bytes", 431)
        return 0
    size = match.end()
    if size > max_head:
        raise ProtocolError(f"head is {size} bytes; the limit is {max_head}", 431)
    return size


def _canonical_head(raw: bytes) -> bytes:
    """``raw`` checked line by line and rewritten with CRLF lines, values without surrounding
    whitespace: for heads with bare LF line ends or anything the fast check did not accept, which
    this either accepts or rejects with the reason (:class:`ProtocolError`)."""
    first_break = raw.find(b"\n")
    start = raw[:first_break]
    if start.endswith(b"\r"):
        start = start[:-1]
    block = raw[first_break + 1 : -2 if raw.endswith(b"\r\n") else -1]
    headers: Headers = []
    for line in _LINE_BREAK.split(block):
        if not line:
            continue
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("obsolete line folding in a header")
            raise ProtocolError(f"malformed header line {line[:60]!r}")
        headers.append((match[1], match[2]))
    return serialize_head(start, headers)


def skip_empty_lines(buf: bytearray) -> None:
    """Drop CRLFs before a request line (RFC 9112 2.2: a server should ignore at least one)."""
    while buf[:2] == b"\r\n":
        del buf[:2]
    while buf[:1] == b"\n":
        del buf[:1]


def _read_head(
    buf: bytes | bytearray, max_head: int, start_line: re.Pattern[bytes], what: str
) -> tuple[bytes, bytes, re.Match[bytes]] | None:
    """The raw bytes, canonical form and start-line match of the head at the start of ``buf``;
    None when it is not complete yet.

    A head with CRLF lines (every client and server in practice) is checked by a few scans of its
    bytes in C (no control character and no bare CR or LF; each line a token and a colon) and kept
    as it is; any other goes line by line (:func:`_canonical_head`).
    """
    end = buf.find(b"\r\n\r\n")
    if 0 <= end <= max_head - 4:
        raw = bytes(buf[: end + 4])
        start_end = raw.find(b"\r\n")
        if (
            not raw.replace(b"\r\n", b"").translate(None, _FIELD_BYTES)
            and _BAD_LINE_START.search(raw, start_end + 1, end + 2) is None
        ):
            # No bare LF, so no earlier empty line: the head ends here.
            canonical = raw
        else:
            end = -1
    if end < 0 or end > max_head - 4:
        size = _find_head(buf, max_head)
        if not size:
            return None
        raw = bytes(buf[:size])
        canonical = _canonical_head(raw)
        start_end = canonical.find(b"\r\n")
    match = start_line.fullmatch(canonical, 0, start_end)
    if match is None:
        raise ProtocolError(f"malformed {what} {canonical[: min(start_end, 80)]!r}")
    return raw, canonical, match


def parse_request_head(buf: bytes | bytearray, max_head: int) -> RequestHead | None:
    """The request head at the start of ``buf``, or None when it is not complete yet.

    Raises :class:`ProtocolError` (400, or 431 past ``max_head`` bytes) for a malformed head.
    The caller removes ``len(head.raw)`` bytes from its buffer.
    """
    head = _read_head(buf, max_head, _REQUEST_LINE, "request line")
    return None if head is None else RequestHead(*head)


def parse_response_head(
    buf: bytes | bytearray, request_method: bytes, max_head: int
) -> ResponseHead | None:
    """The response head at the start of ``buf``, or None when it is not complete yet.

    Raises :class:`ProtocolError` for a malformed or oversize head.
    """
    head = _read_head(buf, max_head, _STATUS_LINE, "status line")
    return None if head is None else ResponseHead(*head, request_method)


# -- bodies ------------------------------------------------------------------------------------------


class LengthBody:
    """A body of a known length."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def feed(self, data: _Bytes) -> tuple[int, _Bytes]:
        """Take the prefix of ``data`` that belongs to the body: (bytes used, payload in them)."""
        if len(data) <= self.remaining:
            self.remaining -= len(data)
            return len(data), data
        used = self.remaining
        self.remaining = 0
        return used, data[:used]

    def eof(self) -> str | None:
        """The connection closed: why the body is incomplete, or None when it is not."""
        return f"{self.remaining} body bytes never arrived" if self.remaining else None


class UntilClose:
    """A response body delimited by the connection closing (HTTP/1.0 style)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def feed(self, data: _Bytes) -> tuple[int, _Bytes]:
        return len(data), data

    def eof(self) -> str | None:
        self.done = True
        return None


class ChunkedBody:
    """A chunked body, followed byte by byte so that raw bytes can be forwarded as they come.

    :meth:`feed` reports how many bytes of the input belong to the body (all of them until the last
    chunk and the trailer section end) and the chunk payload they carried. Partial chunk-size lines
    are kept between calls. Malformed framing raises :class:`ProtocolError`, but only once the bytes
    before it have been reported: ``feed`` then returns that valid prefix and sets :attr:`error`
    (the relay forwards every good byte, then fails), and raises on the next call.
    """

    __slots__ = ("_line", "_remaining", "_state", "done", "error")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""
        self.done = False
        self.error: ProtocolError | None = None

    def eof(self) -> str | None:
        return None if self.done else "the chunked body ended before its last chunk"

    def feed(self, data: bytes) -> tuple[int, bytes]:
        if self.error is not None:
            raise self.error
        payload: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end and not self.done:
            good = pos  # where the element being read starts: the valid prefix if it is malformed
            try:
                pos = self._step(data, pos, end, payload)
            except ProtocolError as exc:
                self.error = exc
                if not good:
                    raise
                pos = good
                break
        return pos, payload[0] if len(payload) == 1 else b"".join(payload)

    def _step(self, data: bytes, pos: int, end: int, payload: list[bytes]) -> int:
        """Read one element (a size line, chunk data, its CRLF, a trailer line) from ``pos``."""
        state = self._state
        if state == self._DATA:
            take = min(self._remaining, end - pos)
            payload.append(data[pos : pos + take])
            self._remaining -= take
            if not self._remaining:
                self._state = self._DATA_END
            return pos + take
        if state == self._DATA_END:
            need = 2 - len(self._line)
            self._line += data[pos : pos + need]
            if len(self._line) == 2:
                if self._line != b"\r\n":
                    raise ProtocolError("chunk data is not followed by CRLF")
                self._line = b""
                self._state = self._SIZE
            return pos + min(need, end - pos)
        newline = data.find(b"\n", pos)
        if newline < 0:
            self._line += data[pos:]
            if len(self._line) > MAX_CHUNK_LINE:
                raise ProtocolError("chunk-size line too long")
            return end
        line = self._line + data[pos : newline + 1]
        self._line = b""
        if not line.endswith(b"\r\n"):
            raise ProtocolError("chunk line does not end with CRLF")
        if state == self._SIZE:
            self._size_line(line[:-2])
        elif line == b"\r\n":
            self.done = True
        elif len(line) > MAX_CHUNK_LINE or not _HEADER_LINE.fullmatch(line[:-2]):
            raise ProtocolError("malformed trailer line")
        return newline + 1

    def _size_line(self, line: bytes) -> None:
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"malformed chunk size {line[:40]!r}")
        size = int(match[1], 16)
        if size:
            self._remaining = size
            self._state = self._DATA
        else:
            self._state = self._TRAILER


# -- heads going out ---------------------------------------------------------------------------------


def serialize_head(start_line: bytes, headers: Headers) -> bytes:
    """``start_line`` CRLF, one ``Name: value`` CRLF per header, CRLF."""
    parts = [start_line, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
