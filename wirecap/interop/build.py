"""Exchanges read from other formats, made into the records the proxy writes. Sans-IO.

An importer (HAR, VCR cassette, mitmproxy flow) turns each entry of its source into an
:class:`Imported`: method, URL, headers, payload bodies, status and whatever timing the source
kept. :func:`exchange_records` makes the ``request``, ``upstream``, ``body``, ``response``,
``body``, ``note`` and ``end`` records of docs/FORMAT.md from it, so that every reader of captures
(inspect, the LLM adapters, detectors, replay, serve, the web inspector) reads an imported
exchange like a recorded one.

No source holds the exact bytes of a head, so heads are rebuilt as HTTP/1.1 from the header
list, and the stored body bytes are made to agree with the head written: a chunked head gets a
chunked body (one chunk per piece), any other a ``Content-Length`` that counts the payload. A
content coding the body does not have (a HAR viewer stores bodies decoded, the header stays)
is dropped. Everything made up is listed in the ``note`` record's ``approximate``, in short
phrases, so a reader knows which facts came from the source and which from the importer.
"""

from __future__ import annotations

import dataclasses
import http
import re
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import h11

from wirecap.capture.payload import request_payload, response_payload
from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    ExchangeNote,
    ExchangeRecord,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
    proxy_path_line,
)
from wirecap.llm import DecodeError, decode_content

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from wirecap.capture.redact import Redactor

#: One body record holds at most this much, as one read from an upstream would (FORMAT.md 3.5).
PIECE_BYTES: Final = 256 * 1024
#: Headers that ask for another protocol on the connection: an imported exchange is plain HTTP,
#: so they are left out of its head (with a Connection header that names them).
_UPGRADE_HEADERS: Final = frozenset({"upgrade", "http2-settings"})
_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: A header value h11 accepts: visible characters, spaces and tabs inside, none at the ends.
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Content types whose payload is a sequence of events: cut at event ends when no reads are known.
_EVENT_TYPES: Final = {
    "text/event-stream": b"\n\n",
    "application/x-ndjson": b"\n",
    "application/jsonl": b"\n",
    "application/json-seq": b"\n",
}


class EntryError(ValueError):
    """An entry that cannot be made into an exchange (the importer skips it and says why)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where an imported exchange came from: the format, the file and its place in the file."""

    format: str  # "har", "vcr", "mitmproxy"
    file: str
    entry: int  # 0-based position among the file's entries


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """An entry of a source that is not imported, and why (e.g. "websocket flow")."""

    source: Source
    reason: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timings:
    """What the source knew of an exchange's times, in ns since its first request byte."""

    request_end_ns: int = 0  # the last request byte
    response_ns: int = 0  # the response head
    end_ns: int = 0  # the last response byte


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Imported:
    """One exchange as a source format holds it. Bodies are payload (no transfer coding); a
    content coding named in the headers is applied to them, as on the wire."""

    source: Source
    method: str
    url: str  # absolute
    request_headers: Sequence[tuple[str, str]]
    request_body: bytes = b""
    status: int
    reason: str = ""
    response_headers: Sequence[tuple[str, str]]
    response_body: bytes = b""
    #: The response payload as the reads it arrived in, with their times (ns since the exchange
    #: began), when the source kept them; else None. An empty last read is when the body ended.
    response_reads: Sequence[tuple[int, bytes]] | None = None
    wall_ns: int  # wall clock at the first request byte, ns since the Unix epoch
    timings: Timings | None = None
    http_version: str = "HTTP/1.1"
    #: What the importer of the source format already made up (added to the builder's own).
    approximate: Sequence[str] = ()


@dataclasses.dataclass(slots=True)
class _Head:
    """A head being rebuilt: its header lines and what was changed to make them."""

    headers: list[tuple[str, str]]
    notes: list[str]
    chunked: bool = False
    length: str | None = None
    coding: str | None = None


def _clean(headers: Iterable[tuple[str, str]], notes: list[str]) -> _Head:
    """Headers fit for an HTTP/1.1 head: HTTP/2 pseudo-headers, connection headers and lines h11
    would refuse are left out; the framing headers are taken aside."""
    head = _Head([], notes)
    dropped = 0
    for name, value in headers:
        low = name.lower()
        if low.startswith(":") or low in _UPGRADE_HEADERS:
            continue
        if low == "connection" and "upgrade" in value.lower():
            continue
        value = value.strip(" \t")
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            dropped += 1
        elif low == "transfer-encoding":
            head.chunked = head.chunked or "chunked" in value.lower()
        elif low == "content-length":
            head.length = value
        else:
            if low == "content-encoding":
                head.coding = value
            head.headers.append((name, value))
    if dropped:
        notes.append(f"{dropped} unusable header line{'s' if dropped > 1 else ''} left out")
    return head


def _frame(head: _Head, body: bytes, *, may_have_body: bool, what: str) -> None:
    """Put the framing header back, as it agrees with ``body``: chunked if the source said so,
    else a Content-Length (corrected, or added, when the source's did not count ``body``). A
    response always gets one (an unframed answer would end only with its connection); a request
    only with a body."""
    if not may_have_body:
        if head.length is not None:
            head.headers.append(("Content-Length", head.length))
        return
    if head.chunked:
        head.headers.append(("Transfer-Encoding", "chunked"))
        return
    size = str(len(body))
    if head.length is None and not body and what == "request":
        return
    if head.length is None:
        head.notes.append(f"{what} Content-Length added")
    elif head.length != size:
        head.notes.append(f"{what} Content-Length corrected")
    head.headers.append(("Content-Length", size))


def _check_coding(head: _Head, body: bytes, what: str) -> None:
    """Drop a Content-Encoding that ``body`` does not have (the source stored it decoded)."""
    if not head.coding or not body:
        return
    try:
        decode_content(body, head.coding)
    except DecodeError:
        head.headers = [(n, v) for n, v in head.headers if n.lower() != "content-encoding"]
        head.notes.append(f"{what} Content-Encoding {head.coding} dropped (body stored decoded)")


def _encode_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [start_line, *(f"{n}: {v}" for n, v in headers), "", ""]
    return "\r\n".join(lines).encode("utf-8")


def _pieces(body: bytes, content_type: str) -> list[bytes]:
    """``body`` cut into reads: at event ends for an event stream, else in
    :data:`PIECE_BYTES` pieces."""
    if not body:
        return []
    end = _EVENT_TYPES.get(content_type)
    pieces: list[bytes] = []
    if end is not None:
        start = 0
        while start < len(body):
            at = body.find(end, start)
            stop = len(body) if at < 0 else at + len(end)
            pieces.append(body[start:stop])
            start = stop
    else:
        pieces = [body]
    return [p[i : i + PIECE_BYTES] for p in pieces for i in range(0, len(p), PIECE_BYTES)]


def _chunked(reads: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Reads of a payload as the reads of a chunked body: a chunk each, the last chunk ending the
    last read (a read of no payload carries only that)."""
    out = [(ns, b"%x\r\n%s\r\n" % (len(data), data) if data else b"") for ns, data in reads]
    if not out:
        return [(0, b"0\r\n\r\n")]
    out[-1] = (out[-1][0], out[-1][1] + b"0\r\n\r\n")
    return [(ns, data) for ns, data in out if data]


def _split_url(url: str) -> tuple[str, str]:
    """``url``'s host (with port) and request target; raises :class:`EntryError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise EntryError(f"not an absolute http(s) URL: {url[:200]!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.netloc.rpartition("@")[2], target


def _request_head(ex: Imported, notes: list[str]) -> tuple[bytes, str, list[tuple[int, bytes]]]:
    """The rebuilt request head, the target, and the body's wire bytes."""
    host, target = _split_url(ex.url)
    if not _TOKEN.match(ex.method):
        raise EntryError(f"not a request method: {ex.method[:50]!r}")
    head = _clean(ex.request_headers, notes)
    if not any(n.lower() == "host" for n, _ in head.headers):
        head.headers.insert(0, ("Host", host))
        if not ex.http_version.upper().startswith("HTTP/2"):
            notes.append("Host added")
    if head.chunked:
        head.chunked = False
        notes.append("request framing changed to Content-Length")
    _frame(head, ex.request_body, may_have_body=True, what="request")
    wire = [(0, p) for p in _pieces(ex.request_body, "")]
    return _encode_head(f"{ex.method} {target} HTTP/1.1", head.headers), target, wire


def _may_have_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def _response(
    ex: Imported, times: Timings, notes: list[str]
) -> tuple[bytes, bytes, list[tuple[int, bytes]]]:
    """The rebuilt response head, the payload it frames, and the body's wire bytes as timed
    reads."""
    if not 100 <= ex.status <= 599 or ex.status in range(101, 200):
        raise EntryError(f"no usable response (status {ex.status})")
    head = _clean(ex.response_headers, notes)
    body = ex.response_body if _may_have_body(ex.method, ex.status) else b""
    if body != ex.response_body:
        notes.append("response body of a bodiless answer left out")
    _check_coding(head, body, "response")
    _frame(head, body, may_have_body=_may_have_body(ex.method, ex.status), what="response")
    reads: list[tuple[int, bytes]]
    if ex.response_reads is not None:
        # an empty read is kept for a chunked body: it says when the last chunk came
        reads = [(ns, d) for ns, d in ex.response_reads if d or head.chunked] if body else []
    else:
        content_type = next((v for n, v in head.headers if n.lower() == "content-type"), "")
        pieces = _pieces(body, content_type.split(";")[0].strip().lower())
        reads = [(times.response_ns, p) for p in pieces]
        if body:
            notes.append("no chunk timing")
        if len(pieces) > 1 or head.chunked:
            notes.append("body re-chunked")
    if head.chunked:
        reads = _chunked(reads)
    reason = ex.reason or _phrase(ex.status)
    start = f"HTTP/1.1 {ex.status} {reason}".rstrip(" ")
    return _encode_head(start, head.headers), body, reads


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _payload_agrees(
    method: str,
    req_head: bytes,
    req: list[tuple[int, bytes]],
    res_head: bytes,
    res: list[tuple[int, bytes]],
) -> tuple[int, int]:
    """Read the rebuilt heads and wire bytes back as the capture's readers will; returns the two
    payload sizes. Raises :class:`EntryError` if h11 does not read them back."""
    for what, head, role in (("request", req_head, h11.SERVER), ("response", res_head, h11.CLIENT)):
        conn = h11.Connection(role)
        if role is h11.CLIENT:
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        try:
            conn.receive_data(head)
            event = conn.next_event()
        except h11.ProtocolError as exc:
            raise EntryError(f"the {what} head cannot be rebuilt: {exc}") from None
        if event is h11.NEED_DATA:
            raise EntryError(f"the {what} head cannot be rebuilt")
    x = "0" * 12
    req_payload = request_payload(
        req_head, [BodyChunk(x=x, dir="req", ns=0, data=d) for _, d in req]
    )
    res_payload = response_payload(
        method.encode(), res_head, [BodyChunk(x=x, dir="res", ns=0, data=d) for _, d in res]
    )
    return sum(len(c.data) for c in req_payload), sum(len(c.data) for c in res_payload)


def exchange_records(
    ex: Imported, x: str, redactor: Redactor | None = None
) -> list[ExchangeRecord]:
    """The records of ``ex`` as exchange ``x``, in the proxy's order, redacted by ``redactor``.
    Raises :class:`EntryError` for an entry that cannot be made into an exchange."""
    _check_numbers(ex)
    notes = ["head rebuilt"]
    url = _without_userinfo(ex.url, notes)
    if not ex.http_version.upper().startswith("HTTP/1"):
        notes.append(f"{ex.http_version} written as HTTP/1.1")
    times = ex.timings or Timings()
    if ex.timings is None:
        notes.append("no timing")
    req_head, target, req_wire = _request_head(ex, notes)
    res_head, res_body, res_wire = _response(ex, times, notes)
    req_bytes, res_bytes = _payload_agrees(ex.method, req_head, req_wire, res_head, res_wire)
    if req_bytes != len(ex.request_body) or res_bytes != len(res_body):
        raise EntryError("the rebuilt body does not read back as the source's")
    response_ns = max(times.response_ns, times.request_end_ns)
    if res_wire:  # a source's times are rounded: the head came no later than the first read
        response_ns = min(response_ns, res_wire[0][0])
    sent_ns = min(times.request_end_ns, response_ns)
    end_ns = max([times.end_ns, response_ns, *(ns for ns, _ in res_wire)])
    records: list[ExchangeRecord] = [
        RequestReceived(
            x=x,
            wall_ns=ex.wall_ns,
            method=ex.method,
            target=target,
            head=req_head,
            proxy_url=url,
            upstream_url=url,
        ),
        UpstreamRequest(x=x, ns=0, head=req_head[:-2] + proxy_path_line(url.encode()) + b"\r\n"),
        *(BodyChunk(x=x, dir="req", ns=sent_ns, data=d) for _, d in req_wire),
        ResponseHead(x=x, ns=response_ns, status=ex.status, head=res_head),
        *(BodyChunk(x=x, dir="res", ns=max(ns, response_ns), data=d) for ns, d in res_wire),
        ExchangeNote(x=x, kind="import", detail=_detail(ex, notes)),
        ExchangeEnd(
            x=x,
            ns=end_ns,
            outcome="ok",
            status=ex.status,
            req_bytes=req_bytes,
            res_bytes=res_bytes,
            ttfb_ns=response_ns,
        ),
    ]
    if redactor is not None:
        records = [redactor(r) for r in records]  # type: ignore[misc]
    return records


#: Times a capture can hold: CBOR integers of 64 bits (a larger one would be a tagged big number,
#: which readers refuse).
_MAX_NS: Final = 2**63 - 1


def _check_numbers(ex: Imported) -> None:
    """Refuse an entry whose times a capture cannot hold (a date in year 9999, a
    timing of 1e20 ms): :class:`EntryError`, so the entry is skipped with the reason."""
    times = ex.timings or Timings()
    values = [ex.wall_ns, times.request_end_ns, times.response_ns, times.end_ns]
    values += [ns for ns, _ in ex.response_reads or ()]
    if not all(0 <= v <= _MAX_NS for v in values) or ex.wall_ns + max(values) > _MAX_NS:
        raise EntryError("a time outside what a capture holds (before 1970 or past 2262)")


def _without_userinfo(url: str, notes: list[str]) -> str:
    """``url`` without a ``user:password@`` (a credential the capture must not keep)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    notes.append("user and password left out of the URL")
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _detail(ex: Imported, notes: Sequence[str]) -> dict[str, object]:
    return {
        "source": ex.source.format,
        "file": ex.source.file,
        "entry": ex.source.entry,
        "approximate": list(dict.fromkeys([*ex.approximate, *notes])),
    }
