"""Export to HAR 1.2 (browser devtools, HAR viewers) and JSON Lines.

HAR timings come from the recorded times: ``send`` is the request (head to the last request body
chunk), ``wait`` from there to the first response byte, ``receive`` from there to the end; ``time`` is
their sum. ``blocked``, ``dns``, ``connect`` and ``ssl`` are -1 (not measured per exchange). The chunk
timeline goes in the custom field ``_chunks`` (each read's direction, time, stored size and payload
size: enough for ``wirecap import`` to give a stream its reads back); bodies that are not UTF-8
text are base64.

Memory stays bounded whatever the bodies' size: an entry's large parts (bodies, the reassembled
answer, the chunk timeline) are written piece by piece as they are read from the capture, never
built as one string. ``max_body`` leaves bodies (and answers) over that many bytes out; the entry
says so in a ``comment`` and in ``_wirecap.left_out``.
"""

from __future__ import annotations

import base64
import codecs
import json
import os
import re
from datetime import UTC
from typing import IO, TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit

from wirecap import __version__
from wirecap.capture.payload import iter_request_payload, iter_response_payload
from wirecap.llm import TimedChunks, parse_head

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from wirecap.capture import BodyChunk, Exchange
    from wirecap.capture.records import Direction
    from wirecap.llm import Head, LLMFacts
    from wirecap.llm.websocket import WsSession


class Analyzed(Protocol):
    """What an export reads of an exchange and its analysis (``wirecap.inspect.analysis``
    gives it; stated here so that interop does not import inspect)."""

    @property
    def exchange(self) -> Exchange: ...
    @property
    def request_head(self) -> Head | None: ...
    @property
    def response_head(self) -> Head | None: ...
    @property
    def request_body(self) -> bytes: ...  # decoded
    @property
    def response_chunks(self) -> TimedChunks: ...  # decoded
    @property
    def request_payload(self) -> TimedChunks: ...  # as on the wire, without transfer coding
    @property
    def response_payload(self) -> TimedChunks: ...
    @property
    def facts(self) -> LLMFacts: ...
    @property
    def session(self) -> WsSession | None: ...  # a WebSocket session after a 101, decoded
    @property
    def outcome(self) -> str: ...  # the end record's, or the reader's judgement of a session
    def row(self) -> dict[str, Any]: ...


def plural(n: int, noun: str) -> str:
    """``1 byte``, ``2 bytes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


#: A body or text up to this size is put in the document as it is; a larger one is streamed.
STREAM_OVER: Final = 1024 * 1024
#: Bytes of body base64-encoded at a time (a multiple of 3: no padding inside the text).
_BASE64_PIECE: Final = 3 * 256 * 1024


class Document:
    """A JSON document written to a text stream, whose large values are streamed into place.

    :meth:`later` stands a placeholder in the document for a value written by a function (raw
    JSON, piece by piece); :meth:`write` serializes the document and writes each streamed value
    where its placeholder is. Placeholders carry a random nonce, so no text of the capture can
    pose as one.
    """

    def __init__(self) -> None:
        self._nonce = os.urandom(8).hex()
        self._later: list[Callable[[], Iterator[str]]] = []
        self._placeholder = re.compile(r'"\\u0000' + self._nonce + r':(\d+)\\u0000"')
        self.left_out: list[str] = []

    def later(self, pieces: Callable[[], Iterator[str]]) -> str:
        self._later.append(pieces)
        return f"\x00{self._nonce}:{len(self._later) - 1}\x00"

    def write(self, out: IO[str], value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False)
        pos = 0
        for match in self._placeholder.finditer(text):
            out.write(text[pos : match.start()])
            for piece in self._later[int(match.group(1))]():
                out.write(piece)
            pos = match.end()
        out.write(text[pos:])
        self._later.clear()


def _escaped(text: str) -> str:
    """``text`` as the inside of a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _is_utf8(chunks: Iterable[bytes]) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _text_pieces(body: TimedChunks) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    yield '"'
    for _, chunk in body:
        yield _escaped(decoder.decode(chunk))
    yield _escaped(decoder.decode(b"", final=True)) + '"'


def _base64_pieces(body: TimedChunks) -> Iterator[str]:
    yield '"'
    carry = b""
    for _, chunk in body:
        data = carry + chunk
        cut = len(data) - len(data) % 3
        for start in range(0, cut, _BASE64_PIECE):
            yield base64.b64encode(data[start : min(start + _BASE64_PIECE, cut)]).decode()
        carry = data[cut:]
    yield base64.b64encode(carry).decode() + '"'


def _content(
    body: TimedChunks, mime: str, doc: Document, max_body: int | None, what: str
) -> dict[str, Any]:
    """A HAR content object (``size``, ``mimeType``, ``text``, ``encoding`` for base64) for a
    body, or without ``text`` and with a ``comment`` when it is over ``max_body``."""
    content: dict[str, Any] = {"size": body.size, "mimeType": mime}
    if max_body is not None and body.size > max_body:
        content["comment"] = (
            f"{what} of {plural(body.size, 'byte')} left out (over --max-body {max_body})"
        )
        doc.left_out.append(what)
        return content
    if body.size <= STREAM_OVER:
        data = body.join()
        try:
            content["text"] = data.decode("utf-8")
        except UnicodeDecodeError:
            content["text"] = base64.b64encode(data).decode()
            content["encoding"] = "base64"
        return content
    if _is_utf8(c for _, c in body):
        content["text"] = doc.later(lambda: _text_pieces(body))
    else:
        content["text"] = doc.later(lambda: _base64_pieces(body))
        content["encoding"] = "base64"
    return content


def _llm(a: Analyzed, doc: Document, max_body: int | None) -> dict[str, Any]:
    """The LLM facts, the reassembled text streamed when large or left out over ``max_body``."""
    facts = a.facts.to_json()
    text: str = facts["text"]
    if max_body is not None and _utf8_longer(text, max_body):
        facts["text"] = ""
        facts["comment"] = f"answer text of {plural(len(text), 'character')} left out"
        doc.left_out.append("answer text")
    elif len(text) > STREAM_OVER:
        facts["text"] = doc.later(lambda: _string_pieces(text))
    return facts


def _utf8_longer(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes in UTF-8, without encoding a long text
    (a character is 1 to 4 bytes)."""
    if len(text) > limit:
        return True
    return len(text) * 4 > limit and len(text.encode()) > limit


def _string_pieces(text: str, step: int = STREAM_OVER) -> Iterator[str]:
    yield '"'
    for start in range(0, len(text), step):
        yield _escaped(text[start : start + step])
    yield '"'


def _chunk_list(a: Analyzed) -> Iterator[str]:
    """The ``_chunks`` timeline as a JSON array, one read at a time: each read's direction, time,
    size as stored (``bytes``, transfer coding included) and payload size (``payload``)."""
    payload = {d: _payload_sizes(a.exchange, d) for d in ("req", "res")}
    yield "["
    for i, mark in enumerate(a.exchange.timeline):
        item = {"dir": mark.dir, "ms": _ms(mark.ns), "bytes": mark.size}
        item["payload"] = next(payload[mark.dir], 0)
        yield ("," if i else "") + json.dumps(item)
    yield "]"


def _payload_sizes(ex: Exchange, direction: Direction) -> Iterator[int]:
    """The payload size of each stored read of one direction, in stored order (0 for a read of
    framing only, such as a chunked body's last chunk), one read at a time."""
    pulled = [-1]

    def wire() -> Iterator[BodyChunk]:
        for i, chunk in enumerate(ex.iter_wire(direction)):
            pulled[0] = i
            yield chunk

    count = 0
    for chunk in _payload(ex, direction, wire()):
        while count < pulled[0]:
            yield 0
            count += 1
        yield len(chunk.data)
        count += 1
    while count <= pulled[0]:
        yield 0
        count += 1


def _payload(ex: Exchange, direction: Direction, wire: Iterator[BodyChunk]) -> Iterator[BodyChunk]:
    """``wire`` as payload (as :meth:`~wirecap.capture.Exchange.iter_payload` reads it)."""
    if not ex.wire:
        return wire
    if direction == "req":
        return wire if ex.request is None else iter_request_payload(ex.request.head, wire)
    head = ex.response
    if head is None:
        return wire
    method = (ex.method or "GET").encode("ascii", "replace")
    return iter_response_payload(method, head.head, wire)


def _headers(head: Any) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in head.headers] if head is not None else []


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def har_entry(
    a: Analyzed, doc: Document | None = None, max_body: int | None = None
) -> dict[str, Any]:
    """The HAR entry of one exchange; its large parts are placeholders of ``doc``."""
    doc = doc or Document()
    ex = a.exchange
    url = ex.upstream_url or (ex.request.proxy_url if ex.request else "") or (ex.target or "")
    req_head, res_head = a.request_head, a.response_head
    switch = next((h for h in ex.responses if h.status == 101), None)
    if a.session is not None and switch is not None:  # a WebSocket session: its 101 is the answer
        res_head = parse_head(switch.head)
        url = re.sub(r"^http", "ws", url)
    duration = ex.duration_ns or 0
    send_end = a.request_payload.last_ns or 0
    first = ex.ttfb_ns if ex.ttfb_ns is not None else a.response_payload.first_ns
    first = max(duration if first is None else first, send_end)
    send, wait, receive = send_end, first - send_end, max(duration - first, 0)
    http_version = (
        req_head.start_line.rsplit(" ", 1)[-1] if req_head else "HTTP/1.1"
    ) or "HTTP/1.1"
    status_line = res_head.start_line.split(" ", 2) if res_head else []
    response_mime = (res_head.get("content-type") or "") if res_head else ""
    entry: dict[str, Any] = {
        "startedDateTime": _iso_ms(ex.wall_ns),
        "time": _ms(send + wait + receive),
        "request": {
            "method": ex.method or "",
            "url": url,
            "httpVersion": http_version,
            "cookies": [],
            "headers": _headers(req_head),
            "queryString": [
                {"name": k, "value": v}
                for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
            ],
            "headersSize": len(ex.request.head) if ex.request else -1,
            "bodySize": a.request_payload.size,
        },
        "response": {
            "status": ex.status or 0,
            "statusText": status_line[2] if len(status_line) > 2 else "",
            "httpVersion": status_line[0] if status_line else "HTTP/1.1",
            "cookies": [],
            "headers": _headers(res_head),
            "content": _content(a.response_chunks, response_mime, doc, max_body, "response body"),
            "redirectURL": (res_head.get("location") or "") if res_head else "",
            "headersSize": len(ex.response.head) if ex.response else -1,
            "bodySize": a.response_payload.size,
        },
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": _ms(send),
            "wait": _ms(wait),
            "receive": _ms(receive),
        },
        "_id": ex.id,
        "_outcome": a.outcome,
        "_chunks": doc.later(lambda: _chunk_list(a)),
    }
    if a.request_payload.size:
        mime = (req_head.get("content-type") if req_head else None) or "application/octet-stream"
        body = TimedChunks.held([(0, a.request_body)])
        content = _content(body, mime, doc, max_body, "request body")
        entry["request"]["postData"] = {
            "mimeType": mime,
            "text": "",
            **{k: v for k, v in content.items() if k in ("text", "encoding", "comment")},
        }
    if a.facts.api != "http":
        entry["_llm"] = _llm(a, doc, max_body)
    if a.session is not None:
        entry["_webSocketMessages"] = websocket_messages(a.session, ex.wall_ns or 0)
    if doc.left_out:
        entry["comment"] = f"left out by --max-body {max_body}: {', '.join(doc.left_out)}"
        entry["_wirecap"] = {"left_out": list(doc.left_out), "max_body": max_body}
    return entry


#: The opcodes of RFC 6455 by the names wsproto's decoding gives them.
_OPCODES: Final = {"text": 1, "binary": 2, "close": 8, "ping": 9, "pong": 10}


def websocket_messages(session: WsSession, wall_ns: int) -> list[dict[str, Any]]:
    """A session's messages as browser devtools write them in HAR (``_webSocketMessages``):
    ``type`` send (client to server) or receive, ``time`` in seconds since the epoch, ``opcode``,
    and ``data``: the text, a close frame's code and reason, or base64 for binary payloads."""
    out = []
    for m in session.messages:
        if m.text is not None:
            data = m.text
        elif m.opcode == "close":
            data = f"{m.close_code} {m.data.decode('utf-8', 'replace')}".strip()
        else:
            data = base64.b64encode(m.data).decode()
        out.append(
            {
                "type": "send" if m.dir == "req" else "receive",
                "time": (wall_ns + m.ns) / 1e9,
                "opcode": _OPCODES.get(m.opcode, 0),
                "data": data,
            }
        )
    return out


def _iso_ms(wall_ns: int | None) -> str:
    from datetime import datetime

    moment = datetime.fromtimestamp((wall_ns or 0) / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_private(path: str | os.PathLike[str]) -> IO[str]:
    """``path`` opened for writing text, mode 0600 (an existing file is truncated and made 0600):
    an export holds the same bodies as the capture it comes from, which is 0600 too."""
    return os.fdopen(_private_fd(path), "w", encoding="utf-8")


def open_private_bytes(path: str | os.PathLike[str]) -> IO[bytes]:
    """Like :func:`open_private`, for a binary export (Parquet)."""
    return os.fdopen(_private_fd(path), "wb")


def _private_fd(path: str | os.PathLike[str]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_har(analyzed: Iterable[Analyzed], out: IO[str], *, max_body: int | None = None) -> int:
    """Write a HAR 1.2 document, streaming entries (memory stays bounded); returns the entry count."""
    out.write('{"log": {"version": "1.2", "creator": {"name": "wirecap", "version": ')
    out.write(json.dumps(__version__))
    out.write('}, "pages": [], "entries": [\n')
    count = 0
    for a in analyzed:
        if count:
            out.write(",\n")
        doc = Document()
        doc.write(out, har_entry(a, doc, max_body))
        count += 1
    out.write("\n]}}\n")
    return count


def jsonl_record(a: Analyzed, doc: Document, max_body: int | None = None) -> dict[str, Any]:
    """The JSON Lines object of one exchange: the inspect row, heads, bodies (text or base64) and
    LLM facts; its large parts are placeholders of ``doc``."""
    ex = a.exchange
    row = a.row()
    row["request_head"] = ex.request.head.decode("latin-1") if ex.request else None
    row["response_head"] = ex.response.head.decode("latin-1") if ex.response else None
    request = TimedChunks.held([(0, a.request_body)] if a.request_body else [])
    row["request_body"] = _content(request, "", doc, max_body, "request body")
    row["response_body"] = _content(a.response_chunks, "", doc, max_body, "response body")
    row["llm"] = _llm(a, doc, max_body)
    row["chunks"] = doc.later(lambda: _chunk_list(a))
    if a.session is not None:
        row["websocket_messages"] = [m.to_json() for m in a.session.messages]
    if doc.left_out:
        row["left_out"] = list(doc.left_out)
    return row


def write_jsonl(analyzed: Iterable[Analyzed], out: IO[str], *, max_body: int | None = None) -> int:
    """Write one JSON object per line per exchange (see :func:`jsonl_record`); returns the count."""
    count = 0
    for a in analyzed:
        doc = Document()
        doc.write(out, jsonl_record(a, doc, max_body))
        out.write("\n")
        count += 1
    return count
