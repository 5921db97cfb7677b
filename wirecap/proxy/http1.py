"""HTTP/1.1 message framing for the relay: heads parsed, bodies delimited, bytes left as they are. Sans-IO.

The proxy forwards what it receives: a body's bytes go on exactly as they arrived (chunked stays
chunked, chunk extensions and trailers included), and a head keeps its header lines (order, casing,
values) minus what a proxy must change (Host, hop-by-hop headers). So the relay needs only three
things from a parser, all here: where a head ends and what it says (:func:`parse_request_head`,
:func:`parse_response_head`), and where a body ends (:class:`LengthBody`, :class:`ChunkedBody`,
:class:`UntilClose`), with the payload bytes for the capture.

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
from typing import Final

Headers = list[tuple[bytes, bytes]]

_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
# field-value: visible characters and obs-text, with spaces and tabs only inside; no CR, LF or NUL.
_VALUE: Final = rb"(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?"
#: A header block of CRLF lines, each ``name: value`` with no control character in the value (the
#: usual case, checked in one pass; the value's surrounding whitespace is stripped afterwards).
_CRLF_FIELDS: Final = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_HEADER_LINE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*")
_HEAD_END: Final = re.compile(rb"\n\r?\n")
_LINE_BREAK: Final = re.compile(rb"\r?\n")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_DIGITS: Final = re.compile(rb"[0-9]{1,19}")

#: Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and are never forwarded.
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
_TRANSFER_ENCODING: Final = frozenset({b"transfer-encoding"})
#: The header fields the framing reads; the others are skipped after one set lookup.
_FRAMING_FIELDS: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"}
)
#: Longest chunk-size line (with extensions) or trailer section accepted.
MAX_CHUNK_LINE: Final = 4096


class ProtocolError(Exception):
    """A message the proxy will not relay; ``status`` is the answer a client deserves (400, 431)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RequestHead:
    """A parsed request head. ``raw`` is the exact bytes received; ``headers`` keep order and case."""

    __slots__ = (
        "body_length",
        "chunked",
        "expect_continue",
        "framing_problem",
        "headers",
        "hop_by_hop",
        "host",
        "keep_alive",
        "method",
        "raw",
        "target",
        "version",
    )

    def __init__(
        self, raw: bytes, method: bytes, target: bytes, minor: bytes, headers: Headers
    ) -> None:
        self.raw = raw
        self.method = method
        self.target = target
        self.version = b"1." + minor
        self.headers = headers
        f = _FramingFields(headers)
        if len(f.hosts) > 1:
            raise ProtocolError("request has more than one Host header")
        if not f.hosts and minor == b"1":
            raise ProtocolError("HTTP/1.1 request without a Host header")
        self.host = f.hosts[0] if f.hosts else None
        #: Why the body's framing is unsafe to forward (the exchange is recorded, then answered 400):
        #: the request-smuggling shapes, where the proxy and the upstream could disagree on where
        #: the body ends (RFC 9112 6.1, 6.3).
        self.framing_problem = f.problem("request")
        if self.framing_problem is None and f.codings and minor == b"0":
            self.framing_problem = "HTTP/1.0 request with Transfer-Encoding"
        self.chunked = bool(f.codings) and self.framing_problem is None
        self.body_length = (
            int(next(iter(f.lengths))) if f.lengths and self.framing_problem is None else 0
        )
        self.keep_alive = minor == b"1" and b"close" not in f.connection
        self.hop_by_hop = f.hop_by_hop()
        self.expect_continue = minor == b"1" and f.expect == b"100-continue"

    def body(self) -> LengthBody | ChunkedBody:
        """A reader for this request's body (a zero-length one when it has none)."""
        return ChunkedBody() if self.chunked else LengthBody(self.body_length)


class ResponseHead:
    """A parsed response head (final or 1xx). ``raw`` is the exact bytes received."""

    __slots__ = (
        "chunked",
        "headers",
        "hop_by_hop",
        "keep_alive",
        "length",
        "raw",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        raw: bytes,
        minor: bytes,
        status: int,
        reason: bytes,
        headers: Headers,
        request_method: bytes,
    ) -> None:
        self.raw = raw
        self.version = b"1." + minor
        self.status = status
        self.reason = reason
        self.headers = headers
        f = _FramingFields(headers)
        self.keep_alive = minor == b"1" and b"close" not in f.connection
        self.hop_by_hop = f.hop_by_hop()
        # Framing headers are checked even where they do not apply (1xx, 204, 304, HEAD), as h11
        # does: a response that lies about its framing is not relayed. (RFC 9112 6.3 would read
        # codings other than chunked to the close; like h11, the relay refuses them.)
        problem = f.problem("response")
        if problem is not None:
            raise ProtocolError(problem)
        self.chunked = bool(f.codings)
        #: None: delimited by the connection closing.
        self.length: int | None = int(next(iter(f.lengths))) if f.lengths else None
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


class _FramingFields:
    """The header fields that decide a message's framing, gathered in one pass over the headers."""

    __slots__ = ("codings", "connection", "expect", "hosts", "lengths")

    def __init__(self, headers: Headers) -> None:
        self.lengths: set[bytes] = set()  # every Content-Length value (a set: repeats agree)
        self.codings: list[bytes] = []  # Transfer-Encoding codings, lower case, in order
        self.connection: list[bytes] = []  # Connection tokens, lower case
        self.hosts: list[bytes] = []
        self.expect = b""
        for name, value in headers:
            lower = name.lower()
            if lower not in _FRAMING_FIELDS:
                continue
            if lower == b"host":
                self.hosts.append(value)
            elif lower == b"content-length":
                self.lengths.update(v.strip() for v in value.split(b","))
            elif lower == b"transfer-encoding":
                # Empty items are kept: "chunked," is not exactly chunked, and is refused.
                self.codings.extend(v.strip().lower() for v in value.split(b","))
            elif lower == b"connection":
                self.connection.extend(_tokens(value))
            elif lower == b"expect":
                self.expect = value.lower()

    def hop_by_hop(self) -> frozenset[bytes]:
        """The header names (lower case) not to forward: the standard hop-by-hop ones and those
        the Connection header lists."""
        return HOP_BY_HOP.union(self.connection) if self.connection else HOP_BY_HOP

    def problem(self, what: str) -> str | None:
        """Why the framing is ambiguous (``what`` names the message), or None when it is sound."""
        lengths, codings = self.lengths, self.codings
        if lengths and codings:
            return f"{what} has both Content-Length and Transfer-Encoding"
        if len(lengths) > 1:
            return f"{what} has conflicting Content-Length values"
        if lengths and not _DIGITS.fullmatch(next(iter(lengths))):
            return f"{what} has a malformed Content-Length"
        if codings and codings != [b"chunked"]:
            return f"{what} Transfer-Encoding must be exactly 'chunked'"
        return None


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


def _split_head(raw: bytes) -> tuple[bytes, Headers]:
    """The start line and the header fields of a complete head.

    The usual head (CRLF lines) is checked by one regular expression over the whole header block and
    then split; a head with bare-LF lines, or a malformed one, goes line by line.
    """
    first_break = raw.find(b"\n")
    start = raw[:first_break]
    if start.endswith(b"\r"):
        start = start[:-1]
    block = raw[first_break + 1 : -2 if raw.endswith(b"\r\n") else -1]
    if _CRLF_FIELDS.fullmatch(block) is not None:
        headers: Headers = []
        if block:
            for line in block[:-2].split(b"\r\n"):
                name, _, value = line.partition(b":")
                headers.append((name, value.strip(b" \t")))
        return start, headers
    headers = []
    for line in _LINE_BREAK.split(block):
        if not line:
            continue
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("obsolete line folding in a header")
            raise ProtocolError(f"malformed header line {line[:60]!r}")
        headers.append((match[1], match[2]))
    return start, headers


def skip_empty_lines(buf: bytearray) -> None:
    """Drop CRLFs before a request line (RFC 9112 2.2: a server should ignore at least one)."""
    while buf[:2] == b"\r\n":
        del buf[:2]
    while buf[:1] == b"\n":
        del buf[:1]


def _read_head(
    buf: bytes | bytearray, max_head: int, start_line: re.Pattern[bytes], what: str
) -> tuple[bytes, re.Match[bytes], Headers] | None:
    """The raw bytes, start-line match and header fields of the head at the start of ``buf``; None
    when it is not complete yet."""
    size = _find_head(buf, max_head)
    if not size:
        return None
    raw = bytes(buf[:size])
    start, headers = _split_head(raw)
    match = start_line.fullmatch(start)
    if match is None:
        raise ProtocolError(f"malformed {what} {start[:80]!r}")
    return raw, match, headers


def parse_request_head(buf: bytes | bytearray, max_head: int) -> RequestHead | None:
    """The request head at the start of ``buf``, or None when it is not complete yet.

    Raises :class:`ProtocolError` (400, or 431 past ``max_head`` bytes) for a malformed head.
    The caller removes ``len(head.raw)`` bytes from its buffer.
    """
    head = _read_head(buf, max_head, _REQUEST_LINE, "request line")
    if head is None:
        return None
    raw, match, headers = head
    return RequestHead(raw, match[1], match[2], match[3], headers)


def parse_response_head(
    buf: bytes | bytearray, request_method: bytes, max_head: int
) -> ResponseHead | None:
    """The response head at the start of ``buf``, or None when it is not complete yet.

    Raises :class:`ProtocolError` for a malformed or oversize head.
    """
    head = _read_head(buf, max_head, _STATUS_LINE, "status line")
    if head is None:
        return None
    raw, match, headers = head
    return ResponseHead(raw, match[1], int(match[2]), match[3] or b"", headers, request_method)


# -- bodies ------------------------------------------------------------------------------------------


class LengthBody:
    """A body of a known length."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def feed(self, data: bytes) -> tuple[int, bytes]:
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

    def feed(self, data: bytes) -> tuple[int, bytes]:
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


def client_response_head(head: ResponseHead, *, close: bool, dechunk: bool = False) -> bytes:
    """The upstream's response head as the proxy sends it to its client.

    Same status, reason and header lines in the same order and case, minus hop-by-hop headers; the
    status line says HTTP/1.1 (the proxy's own version on this connection), and ``Connection: close``
    is added when the proxy will close the client connection after this response. ``dechunk`` drops
    Transfer-Encoding for an HTTP/1.0 client, which gets the payload delimited by the close.
    """
    drop = head.hop_by_hop | _TRANSFER_ENCODING if dechunk else head.hop_by_hop
    headers = [(n, v) for n, v in head.headers if n.lower() not in drop]
    if close and not head.informational:
        headers.append((b"Connection", b"close"))
    status = b"%d" % head.status
    start = b"HTTP/1.1 " + status + (b" " + head.reason if head.reason else b" ")
    return serialize_head(start, headers)
