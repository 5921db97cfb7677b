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
    from collections.abc import Iterable, Iterator

    from wirecap.capture.records import BodyChunk

#: Room for a stored head beyond the proxy's own limit: h11 must never refuse one it stored.
_HEAD_ROOM: Final = 64 * 1024


def request_payload(head: bytes, chunks: Iterable[BodyChunk]) -> list[BodyChunk]:
    """``chunks`` of a request body (wire bytes) as payload, read against the request ``head``."""
    return list(iter_request_payload(head, chunks))


def response_payload(method: bytes, head: bytes, chunks: Iterable[BodyChunk]) -> list[BodyChunk]:
    """``chunks`` of a response body (wire bytes) as payload, read against the final response
    ``head`` of a request with ``method`` (a HEAD request's response has no body)."""
    return list(iter_response_payload(method, head, chunks))


def iter_request_payload(head: bytes, chunks: Iterable[BodyChunk]) -> Iterator[BodyChunk]:
    """:func:`request_payload`, one chunk at a time: only the chunk at hand is held, so a body of
    any size streams through in the memory of one read."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + _HEAD_ROOM)
    return _payload(conn, head, chunks)


def iter_response_payload(
    method: bytes, head: bytes, chunks: Iterable[BodyChunk]
) -> Iterator[BodyChunk]:
    """:func:`response_payload`, one chunk at a time (see :func:`iter_request_payload`)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=len(head) + _HEAD_ROOM)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"capture")]))
    conn.send(h11.EndOfMessage())
    return _payload(conn, head, chunks, until_close=True)


def _payload(
    conn: h11.Connection, head: bytes, chunks: Iterable[BodyChunk], *, until_close: bool = False
) -> Iterator[BodyChunk]:
    try:
        conn.receive_data(head)
        events = _events(conn)
        if not events or not isinstance(events[0], h11.Request | h11.Response):
            return
        for chunk in chunks:
            conn.receive_data(chunk.data)
            data = b"".join(bytes(e.data) for e in _events(conn) if isinstance(e, h11.Data))
            if data:
                yield dataclasses.replace(chunk, data=data)
        if until_close and conn.their_state is h11.SEND_BODY:
            conn.receive_data(b"")  # a body delimited by the connection's end
            _events(conn)
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        return  # the payload read so far


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
