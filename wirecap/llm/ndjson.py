"""Newline-delimited JSON (Ollama streams). Sans-IO."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class NDJSONLine:
    value: Any  # the decoded JSON value, or None when ``error`` is set
    ns: int | None
    error: str | None = None
    raw: bytes = b""


class NDJSONParser:
    """Incremental NDJSON parser: lines split anywhere across chunks; blank lines are skipped."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes, ns: int | None = None) -> list[NDJSONLine]:
        buf = self._buf
        buf += data
        out: list[NDJSONLine] = []
        pos = 0
        end = buf.find(b"\n", len(buf) - len(data))  # what was buffered before holds no newline
        while end != -1:
            raw = bytes(buf[pos:end]).rstrip(b"\r")
            if raw.strip():
                out.append(parse_line(raw, ns))
            pos = end + 1
            end = buf.find(b"\n", pos)
        del buf[:pos]  # once per chunk: deleting per line would move the rest of it each time
        return out

    def close(self) -> NDJSONLine | None:
        """The unterminated last line, if any (parsed, so a caller can tell a cut from a missing \\n)."""
        raw = bytes(self._buf).strip()
        self._buf.clear()
        return parse_line(raw, None) if raw else None


def parse_line(raw: bytes, ns: int | None) -> NDJSONLine:
    try:
        return NDJSONLine(json.loads(raw), ns, raw=raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return NDJSONLine(None, ns, f"invalid JSON line: {exc}", raw)
