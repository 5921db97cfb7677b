"""HAR 1.2 files (browser devtools, mitmproxy's HAR export, wirecap's own) read into
:class:`Imported` exchanges.

An entry gives the method, URL, header lists, ``postData`` (text, or form ``params``),
``response.content`` (text, base64 when ``encoding`` says so), ``startedDateTime`` and
``timings`` (``send``, ``wait``, ``receive`` in ms; -1 when unknown). Browsers store bodies
decoded while keeping the Content-Encoding header; the builder drops a coding the body does not
have. wirecap's HAR export adds ``_chunks`` (each read's time and size), which gives an imported
stream its chunk timing back. WebSocket messages (``_webSocketMessages``) and other custom fields
are ignored, and a WebSocket entry (a 101) is skipped: its session is not in the entry.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from wirecap.interop.build import Imported, Skipped, Source, Timings

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

#: Content types whose body is cut at event ends (as :mod:`wirecap.interop.build` does).
_EVENT_ENDS: Final = {"text/event-stream": b"\n\n", "application/x-ndjson": b"\n"}


class HarError(ValueError):
    """A file that is not a HAR document this reader understands."""


def har_entries(document: Any) -> list[Any]:
    """The ``log.entries`` of a HAR document; raises :class:`HarError`."""
    log = document.get("log") if isinstance(document, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    if not isinstance(entries, list):
        raise HarError("no log.entries list: not a HAR file")
    return entries


def har_exchanges(document: Any, file: str) -> Iterator[Imported | Skipped]:
    """The exchanges of the HAR ``document`` read from ``file``."""
    for i, entry in enumerate(har_entries(document)):
        source = Source(format="har", file=file, entry=i)
        try:
            yield _exchange(source, entry)
        except (HarError, KeyError, TypeError, ValueError) as exc:
            reason = exc.args[0] if isinstance(exc, HarError) else "an entry of another shape"
            yield Skipped(source=source, reason=reason)


def _headers(items: Any) -> list[tuple[str, str]]:
    return [(str(h["name"]), str(h["value"])) for h in items or [] if isinstance(h, dict)]


def _decoded(text: Any, encoding: Any, size: Any = None) -> bytes:
    """A HAR body as bytes: base64 when ``encoding`` says so, else the text in UTF-8, or in
    Latin-1 when that, and not UTF-8, gives the ``size`` the file recorded (tools that save
    binary bodies as text map each byte to one character)."""
    if text is None:
        return b""
    if encoding == "base64":
        try:
            return base64.b64decode(str(text), validate=True)
        except binascii.Error:
            raise HarError("a base64 body that is not base64") from None
    data = str(text).encode("utf-8", "surrogateescape")
    if isinstance(size, int) and size != len(data) and size == len(str(text)):
        try:
            return str(text).encode("latin-1")
        except UnicodeEncodeError:
            pass
    return data


def _request_body(request: Mapping[str, Any], notes: list[str]) -> bytes:
    post = request.get("postData")
    if not isinstance(post, dict):
        return b""
    if post.get("text") is None and post.get("params"):
        notes.append("request body rebuilt from form params")
        return urlencode([(p["name"], p.get("value", "")) for p in post["params"]]).encode()
    size = request.get("bodySize")
    return _decoded(post.get("text"), post.get("encoding"), size)


def _wall_ns(text: Any) -> int:
    try:
        moment = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        raise HarError(f"startedDateTime {str(text)[:40]!r} is not a date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


def _ms_ns(value: Any) -> int:
    """A HAR time in ms as ns; -1 (unknown) and anything not a number are 0."""
    return int(float(value) * 1e6) if isinstance(value, int | float) and value > 0 else 0


def _timings(entry: Mapping[str, Any]) -> Timings | None:
    t = entry.get("timings")
    if not isinstance(t, dict) or not any(_ms_ns(t.get(k)) for k in ("send", "wait", "receive")):
        return None
    send = _ms_ns(t.get("send"))
    wait = send + _ms_ns(t.get("wait"))
    return Timings(request_end_ns=send, response_ns=wait, end_ns=wait + _ms_ns(t.get("receive")))


def _reads(
    entry: Mapping[str, Any], body: bytes, content_type: str, notes: list[str]
) -> list[tuple[int, bytes]] | None:
    """The response body as timed reads, from wirecap's ``_chunks``: cut by each read's payload
    size (or stored size, when those count the payload), else one event per read."""
    chunks = [
        c for c in entry.get("_chunks") or [] if isinstance(c, dict) and c.get("dir") == "res"
    ]
    if not chunks or not body:
        return None
    for key in ("payload", "bytes"):
        marks = [(_ms_ns(c.get("ms")), c.get(key)) for c in chunks]
        sizes = [n for _, n in marks if isinstance(n, int) and n >= 0]
        if len(sizes) == len(marks) and sum(sizes) == len(body):
            return _cut(body, marks)
    end = _EVENT_ENDS.get(content_type)
    if end is None:
        return None
    pieces = [p + end for p in body.split(end)[:-1]]
    if b"".join(pieces) != body or len(pieces) > len(chunks):
        return None
    notes.append("chunk times matched to events")
    return [(_ms_ns(chunks[i].get("ms")), piece) for i, piece in enumerate(pieces)]


def _cut(body: bytes, marks: list[tuple[int, Any]]) -> list[tuple[int, bytes]]:
    reads, at = [], 0
    for ns, size in marks:
        reads.append((ns, body[at : at + size]))
        at += size
    return reads


def _exchange(source: Source, entry: Mapping[str, Any]) -> Imported:
    request, response = entry.get("request"), entry.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise HarError("an entry without request and response")
    notes: list[str] = []
    content = response.get("content") or {}
    body = _decoded(content.get("text"), content.get("encoding"), content.get("size"))
    if content.get("text") is None and int(content.get("size") or 0) > 0:
        notes.append("response body not in the file")
    response_headers = _headers(response.get("headers"))
    content_type = next((v for n, v in response_headers if n.lower() == "content-type"), "")
    reads = _reads(entry, body, content_type.split(";")[0].strip().lower(), notes)
    if entry.get("_webSocketMessages"):
        notes.append("WebSocket messages left out")
    return Imported(
        source=source,
        method=str(request.get("method") or ""),
        url=str(request.get("url") or ""),
        request_headers=_headers(request.get("headers")),
        request_body=_request_body(request, notes),
        status=int(response.get("status") or 0),
        reason=str(response.get("statusText") or ""),
        response_headers=response_headers,
        response_body=body,
        response_reads=reads,
        wall_ns=_wall_ns(entry.get("startedDateTime")),
        timings=_timings(entry),
        http_version=_version(request.get("httpVersion")),
        approximate=notes,
    )


def _version(text: Any) -> str:
    """``HTTP/1.1``, ``HTTP/2``... from HAR's spellings (``h2``, ``http/2.0``, empty)."""
    value = str(text or "").strip().upper()
    if value in ("H2", "HTTP/2.0", "HTTP/2"):
        return "HTTP/2"
    if value in ("H3", "HTTP/3.0", "HTTP/3"):
        return "HTTP/3"
    return value if value.startswith("HTTP/") else "HTTP/1.1"
