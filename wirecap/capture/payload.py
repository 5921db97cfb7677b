"""The payload of stored bodies: what h11 reads out of the bytes that crossed the wire. Sans-IO.

A capture stores each body as the bytes of each read, transfer coding included. Analysis wants the
payload: the same chunks with chunk-size lines, extensions and trailers removed, each keeping the
arrival time of the read it came in. h11 parses the stored head and bytes as it parsed them on the
wire; a body it cannot read to the end (a redaction that changed a framed length, a file written
by hand) keeps the payload read so far.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Final

import h11

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wirecap.capture.records import BodyChunk

#: Room for a stored head beyond the proxy's own limit: h11 must never refuse one it stored.
_HEAD_ROOM: Final = 64 * 1024


def request_payload(head: bytes, chunks: Sequence[BodyChunk]) -> list[BodyChunk]:
    """``chunks`` of a request body (wire bytes) as payload, read against the request ``head``."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + _HEAD_ROOM)
    return _payload(conn, head, chunks)


def response_payload(method: bytes, head: bytes, chunks: Sequence[BodyChunk]) -> list[BodyChunk]:
    """``chunks`` of a response body (wire bytes) as payload, read against the final response
    ``head`` of a request with ``method`` (a HEAD request's response has no body)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=len(head) + _HEAD_ROOM)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"capture")]))
    conn.send(h11.EndOfMessage())
    return _payload(conn, head, chunks, until_close=True)


def _payload(
    conn: h11.Connection, head: bytes, chunks: Sequence[BodyChunk], *, until_close: bool = False
) -> list[BodyChunk]:
    out: list[BodyChunk] = []
    try:
        conn.receive_data(head)
        events = _events(conn)
        if not events or not isinstance(events[0], h11.Request | h11.Response):
            return out
        for chunk in chunks:
            conn.receive_data(chunk.data)
            data = b"".join(bytes(e.data) for e in _events(conn) if isinstance(e, h11.Data))
            if data:
                out.append(dataclasses.replace(chunk, data=data))
        if until_close and conn.their_state is h11.SEND_BODY:
            conn.receive_data(b"")  # a body delimited by the connection's end
            _events(conn)
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        pass  # the payload read so far
    return out


def _events(conn: h11.Connection) -> list[h11.Event]:
    """The events h11 can make of what it was fed so far."""
    events: list[h11.Event] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        events.append(event)  # type: ignore[arg-type]
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return events
