"""HTTP/1.1 messages as the relay sees them: h11 events with the raw bytes behind them, the head edits
a proxy must make, and the answers the proxy makes itself. Sans-IO.

h11 parses every message; it does not keep the bytes it parsed. :class:`RawTap` keeps them: the raw
bytes behind the events h11 returned since the last call are what was fed minus what h11 still
holds (``Connection.trailing_data``). So the relay forwards and records exactly what crossed the
wire, chunk-size lines, extensions and trailers included, and only what h11 accepted.

Heads are forwarded line by line as received, except the lines a proxy must edit: Host (set to the
upstream's), the hop-by-hop headers (not forwarded), and X-Proxy-Path (see FORMAT.md). Line ends
become CRLF and an obsolete line folding becomes one space (RFC 9112 section 5.2).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import h11

from wirecap.capture.records import proxy_path_line

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Headers that describe one connection, not the message: never forwarded (RFC 9110 section 7.6.1).
#: (Trailer is not among them: it announces trailer fields, which go on with the body.)
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"}
)
#: Headers the relay frames and routes by: kept even when a Connection header names them.
FRAMING: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})


class RawTap:
    """An h11 connection and the bytes fed to it that no returned event has accounted for yet."""

    __slots__ = ("_raw", "conn")

    def __init__(self, conn: h11.Connection, data: bytes = b"") -> None:
        self.conn = conn
        self._raw = b""
        if data:
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Give h11 the bytes of one read (``b""``: the peer closed its side)."""
        self.conn.receive_data(data)
        self._raw = self._raw + data if self._raw else data

    @property
    def unaccounted(self) -> bytes:
        """The bytes fed since the last :meth:`take` (all of a head h11 rejected)."""
        return self._raw

    def take(self) -> bytes:
        """The raw bytes behind the events h11 returned since the last call."""
        pending = len(self.conn.trailing_data[0])
        raw = self._raw
        if not pending:
            self._raw = b""
            return raw
        cut = len(raw) - pending
        self._raw = raw[cut:]
        return raw[:cut]


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the last ``name`` header in h11's (lower-cased) headers, or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The lower-cased tokens of every Connection header."""
    return frozenset(
        token.strip().lower()
        for key, value in headers
        if key == b"connection"
        for token in value.split(b",")
        if token.strip()
    )


def not_forwarded(
    headers: Iterable[tuple[bytes, bytes]], *, upgrade: bool = False
) -> frozenset[bytes]:
    """Names of the headers a proxy drops: the hop-by-hop ones and those Connection names. With
    ``upgrade`` (a request to switch protocols, or the 101 that accepts it), Connection and
    Upgrade go on: the switch is end to end (RFC 9110 section 7.8)."""
    dropped = HOP_BY_HOP | (connection_tokens(headers) - FRAMING)
    return dropped - _SWITCH if upgrade else dropped


#: The headers that carry a protocol switch through the proxy.
_SWITCH: Final = frozenset({b"connection", b"upgrade"})


def upgrade_request(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The protocol a request with ``headers`` asks to switch to (its Upgrade header, when its
    Connection header names ``upgrade``, as RFC 9110 section 7.8 requires), or None."""
    upgrade = header_value(headers, b"upgrade")
    if upgrade is None or b"upgrade" not in connection_tokens(headers):
        return None
    return upgrade


#: Lengths and chunk sizes from this size up are refused: an upstream that keeps them in a signed
#: 64-bit integer would read a different one (and with it, a different end of the message).
MAX_LENGTH: Final = 2**63


def smuggling_problem(headers: Sequence[tuple[bytes, bytes]], http_version: bytes) -> str | None:
    """Why a request that h11 accepted (its ``headers`` and version) must still not be forwarded,
    or None.

    h11 follows RFC 9112 and lets Transfer-Encoding override Content-Length, and reads lengths of
    any size; a proxy must not pass such requests on, because an upstream that reads them another
    way sees a different end of the message.
    """
    names = [key for key, _ in headers]
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            return "both Content-Length and Transfer-Encoding"
        if http_version == b"1.0":
            return "Transfer-Encoding in an HTTP/1.0 request"
    length = header_value(headers, b"content-length")
    if length is not None and int(length) >= MAX_LENGTH:
        return f"Content-Length {length.decode()} is too large"
    return None


class ChunkSizeGuard:
    """Refuses chunk sizes of :data:`MAX_LENGTH` or more in a chunked body, however the reads cut
    its size lines: fed the raw bytes behind each h11 event (with the event), it gathers the bytes
    from the end of one chunk's data to the end of the next size line, which h11 has checked the
    grammar of, and looks only at its value."""

    __slots__ = ("_line", "_wanted")

    def __init__(self) -> None:
        self._line = b""
        self._wanted = True  # a size line comes next (the body starts with one)

    def consumed(self, raw: bytes, event: object) -> str | None:
        """Why the body must not go on, or None."""
        if self._wanted and raw:
            self._line += raw
            line = self._line.lstrip(b"\r\n")  # the CRLF that ended the previous chunk's data
            end = line.find(b"\r\n")
            if end != -1:
                self._wanted, self._line = False, b""
                size = line[:end].partition(b";")[0].strip(b" \t").lstrip(b"0") or b"0"
                if len(size) > 16 or int(size, 16) >= MAX_LENGTH:
                    return f"chunk size {size[:32].decode('ascii', 'replace')} is too large"
        if isinstance(event, h11.Data) and event.chunk_end:
            self._wanted = True
        return None


def head_lines(raw: bytes) -> tuple[bytes, list[bytes]]:
    """The start line and header lines of a head h11 accepted: line ends without CR or LF, each
    obsolete folding joined to its line by one space (any blank lines before it skipped)."""
    if (
        raw.endswith(b"\r\n\r\n")
        and raw[:1] not in (b"\r", b"\n")
        and raw.count(b"\n") == raw.count(b"\r\n")
        and b"\n " not in raw
        and b"\n\t" not in raw
    ):  # the usual head: CRLF line ends, no folding, no blank lines before it
        first, *usual = raw[:-4].split(b"\r\n")
        return first, usual
    lines = raw.split(b"\n")
    start = 0
    while start < len(lines) and not lines[start].rstrip(b"\r"):
        start += 1
    start_line = lines[start].rstrip(b"\r")
    fields: list[bytes] = []
    for line in lines[start + 1 :]:
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = fields[-1].rstrip(b" \t") + b" " + line.lstrip(b" \t")
        else:
            fields.append(line)
    return start_line, fields


def field_name(line: bytes) -> bytes:
    """The lower-cased name of a header line (h11 allows no space before the colon)."""
    return line[: line.find(b":")].lower()


def edit_head(
    raw: bytes,
    *,
    drop: frozenset[bytes],
    start_line: bytes | None = None,
    host: bytes | None = None,
    add: Iterable[bytes] = (),
) -> bytes:
    """``raw`` (a head h11 accepted) as it is forwarded: lines named in ``drop`` left out, the Host
    line's value replaced by ``host``, the start line replaced by ``start_line``, and the ``add``
    lines (each with its CRLF) appended."""
    first, fields = head_lines(raw)
    out = [start_line if start_line is not None else first]
    for line in fields:
        name = field_name(line)
        if name in drop:
            continue
        if host is not None and name == b"host":
            line = line[: line.find(b":") + 1] + b" " + host
            host = None
        out.append(line)
    if host is not None:  # an HTTP/1.0 request may come without one
        out.append(b"Host: " + host)
    return b"\r\n".join(out) + b"\r\n" + b"".join(add) + b"\r\n"


def add_proxy_path_line(head: bytes, proxy_url: bytes) -> bytes:
    """Insert ``X-Proxy-Path: URL`` as the last header line of a serialized head (see FORMAT.md)."""
    if not head.endswith(b"\r\n\r\n"):
        raise ValueError("not a complete HTTP head")
    return head[:-2] + proxy_path_line(proxy_url) + b"\r\n"


def proxy_url(listen_host: str, listen_port: int, host_header: bytes | None, target: str) -> str:
    """The full URL the client asked the proxy for: what X-Proxy-Path records.

    Uses the proxy's listen address; for a wildcard listen address (0.0.0.0, ::) the client's Host
    header says which address it used.
    """
    if not target.startswith("/"):
        return target  # absolute-form: the client already sent a full URL
    if listen_host in ("0.0.0.0", "::", "") and host_header:
        authority = host_header.decode("latin-1")
    else:
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        authority = f"{host}:{listen_port}"
    return f"http://{authority}{target}"


def error_answer(
    status: int, kind: str, message: str, *, close: bool, **extra: object
) -> tuple[bytes, bytes]:
    """Head and JSON body of a response the proxy makes itself (400, 404, 431, 502, 504...).

    The shape follows the OpenAI-style ``{"error": {...}}`` that LLM clients already know how to print.
    """
    body = json.dumps(
        {
            "error": {
                "type": kind,
                "message": message,
                "status": status,
                "source": "wirecap",
                **extra,
            }
        },
        separators=(",", ":"),
    ).encode()
    lines = [
        b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode()),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"X-Wirecap-Error: " + kind.encode(),
    ]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n", body
