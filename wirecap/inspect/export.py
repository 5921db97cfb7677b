"""Export to HAR 1.2 (browser devtools, HAR viewers) and JSON Lines.

HAR timings come from the recorded times: ``send`` is the request (head to the last request body
chunk), ``wait`` from there to the first response byte, ``receive`` from there to the end; ``time`` is
their sum. ``blocked``, ``dns``, ``connect`` and ``ssl`` are -1 (not measured per exchange). The chunk
timeline goes in the custom field ``_chunks``; bodies that are not UTF-8 text are base64.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from wirecap import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from wirecap.inspect.analysis import Analyzed


def _headers(head: Any) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in head.headers] if head is not None else []


def _content(body: bytes, mime: str) -> dict[str, Any]:
    try:
        return {"size": len(body), "mimeType": mime, "text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "size": len(body),
            "mimeType": mime,
            "text": base64.b64encode(body).decode(),
            "encoding": "base64",
        }


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def har_entry(a: Analyzed) -> dict[str, Any]:
    ex = a.exchange
    url = ex.upstream_url or (ex.request.proxy_url if ex.request else "") or (ex.target or "")
    req_head, res_head = a.request_head, a.response_head
    req_chunks = ex.request_chunks
    res_chunks = ex.response_chunks
    duration = ex.duration_ns or 0
    send_end = req_chunks[-1].ns if req_chunks else 0
    first = ex.ttfb_ns if ex.ttfb_ns is not None else (res_chunks[0].ns if res_chunks else duration)
    first = max(first, send_end)
    send, wait, receive = send_end, first - send_end, max(duration - first, 0)
    http_version = (
        req_head.start_line.rsplit(" ", 1)[-1] if req_head else "HTTP/1.1"
    ) or "HTTP/1.1"
    status_line = res_head.start_line.split(" ", 2) if res_head else []
    response_body = b"".join(c for _, c in a.response_chunks)
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
            "bodySize": len(ex.request_body),
        },
        "response": {
            "status": ex.status or 0,
            "statusText": status_line[2] if len(status_line) > 2 else "",
            "httpVersion": status_line[0] if status_line else "HTTP/1.1",
            "cookies": [],
            "headers": _headers(res_head),
            "content": _content(
                response_body, (res_head.get("content-type") or "") if res_head else ""
            ),
            "redirectURL": (res_head.get("location") or "") if res_head else "",
            "headersSize": len(ex.response.head) if ex.response else -1,
            "bodySize": len(ex.response_body),
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
        "_outcome": ex.outcome,
        "_chunks": [{"dir": c.dir, "ms": _ms(c.ns), "bytes": len(c.data)} for c in ex.chunks],
    }
    if ex.request_body:
        mime = (req_head.get("content-type") if req_head else None) or "application/octet-stream"
        content = _content(a.request_body, mime)
        entry["request"]["postData"] = {
            "mimeType": mime,
            "text": content["text"],
            **({"encoding": "base64"} if "encoding" in content else {}),
        }
    if a.facts.api != "http":
        entry["_llm"] = a.facts.to_json()
    return entry


def _iso_ms(wall_ns: int | None) -> str:
    from datetime import datetime

    moment = datetime.fromtimestamp((wall_ns or 0) / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_private(path: str | os.PathLike[str]) -> IO[str]:
    """``path`` opened for writing text, mode 0600 (an existing file is truncated and made 0600):
    an export holds the same bodies as the capture it comes from, which is 0600 too."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_har(analyzed: Iterable[Analyzed], out: IO[str]) -> int:
    """Write a HAR 1.2 document, streaming entries (memory stays bounded); returns the entry count."""
    out.write('{"log": {"version": "1.2", "creator": {"name": "wirecap", "version": ')
    out.write(json.dumps(__version__))
    out.write('}, "pages": [], "entries": [\n')
    count = 0
    for a in analyzed:
        if count:
            out.write(",\n")
        out.write(json.dumps(har_entry(a), ensure_ascii=False))
        count += 1
    out.write("\n]}}\n")
    return count


def jsonl_records(analyzed: Iterable[Analyzed]) -> Iterator[dict[str, Any]]:
    """One JSON object per exchange: the inspect row, heads, bodies (text or base64) and LLM facts."""
    for a in analyzed:
        ex = a.exchange
        row = a.row()
        row["request_head"] = ex.request.head.decode("latin-1") if ex.request else None
        row["response_head"] = ex.response.head.decode("latin-1") if ex.response else None
        row["request_body"] = _content(a.request_body, "")
        row["response_body"] = _content(b"".join(c for _, c in a.response_chunks), "")
        row["llm"] = a.facts.to_json()
        row["chunks"] = [{"dir": c.dir, "ms": _ms(c.ns), "bytes": len(c.data)} for c in ex.chunks]
        yield row
