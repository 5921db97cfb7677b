"""A server-sent events parser (WHATWG HTML, "event stream interpretation"). Sans-IO.

Feed it body bytes as they arrived, in pieces split anywhere (inside a line, inside a CRLF, inside a
UTF-8 sequence); it returns each event when its terminating blank line arrives. ``event:`` and ``id:``
are kept on every event. :meth:`SSEParser.close` says whether the stream stopped mid-event.
"""

from __future__ import annotations

import dataclasses
from typing import Final, NamedTuple

_BOM: Final = b"\xef\xbb\xbf"
#: Longest line the parser buffers before calling the stream malformed: a guard for non-SSE bodies
#: that happen to be labelled text/event-stream. LLM events are a few KiB; base64 images can be MBs.
MAX_LINE: Final = 64 * 1024 * 1024


class SSEEvent(NamedTuple):
    """One dispatched event (a named tuple: a stream can have millions)."""

    event: str = "message"
    data: str = ""
    id: str | None = None  # the last event id in force when this event was dispatched
    retry: int | None = None  # a retry field that came with this event
    ns: int | None = None  # arrival time of the chunk that completed the event


@dataclasses.dataclass(frozen=True, slots=True)
class SSEClose:
    """How a stream ended: cleanly on an event boundary, or mid-event / mid-line."""

    pending_event: bool  # fields were buffered but no blank line dispatched them
    pending_line: bool  # bytes after the last line ending

    @property
    def clean(self) -> bool:
        return not (self.pending_event or self.pending_line)


class SSEParser:
    """Incremental SSE parser: ``feed(bytes, ns)`` -> events; ``close()`` -> how it ended."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._has_fields = False
        self._retry: int | None = None
        self.last_id: str | None = None
        self.comments = 0
        self.invalid_utf8 = 0
        self.overlong = False

    def feed(self, data: bytes, ns: int | None = None) -> list[SSEEvent]:
        """Parse ``data``; returns the events it completes, in order."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        buf = self._buf
        buf += data
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(bytes(buf)):
                return []
            if buf.startswith(_BOM):
                del buf[:3]
            self._started = True
        # Complete lines end at the last CR or LF; bytes.splitlines() splits at exactly SSE's line
        # endings (CRLF, LF, CR), in one pass over the chunk. What was buffered before holds no line
        # ending, so only the new bytes are searched (a long line fed in small reads stays linear).
        new = max(len(buf) - len(data), 0)
        cut = max(buf.rfind(b"\n", new), buf.rfind(b"\r", new)) + 1
        if cut == len(buf) and buf.endswith(b"\r"):  # the line ends at CR: an LF may come next
            self._skip_lf = True
        lines = bytes(buf[:cut]).splitlines()
        del buf[:cut]
        events: list[SSEEvent] = []
        for raw in lines:
            if raw:
                self._line(raw)
            elif (event := self._dispatch(ns)) is not None:
                events.append(event)
        if len(buf) > MAX_LINE:
            self.overlong = True
            buf.clear()
        return events

    def _line(self, raw: bytes) -> None:
        """Take one field line (not blank) of the event being read."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.invalid_utf8 += 1
            line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            self.comments += 1
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self.last_id = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        else:
            return  # unknown fields are ignored
        self._has_fields = True

    def _dispatch(self, ns: int | None) -> SSEEvent | None:
        # The standard drops events without data; an event with only ``event:`` or ``id:`` is still
        # kept here, because inspection wants to see everything the server sent.
        if not self._has_fields:
            return None
        data = self._data
        event = SSEEvent(
            self._event or "message",
            data[0] if len(data) == 1 else "\n".join(data),
            self.last_id,
            self._retry,
            ns,
        )
        data.clear()
        self._event, self._retry, self._has_fields = "", None, False
        return event

    def close(self) -> SSEClose:
        """The body is over: report whether it stopped inside an event or a line."""
        return SSEClose(pending_event=self._has_fields, pending_line=bool(self._buf))
