"""The bytes of one exchange ``wirecap serve`` answered, sorted for its capture. Sans-IO.

``serve --out`` records what crossed the client's connection, as the proxy does.
:class:`RequestWire` holds the request as the client sent it: the head and each read of the body
(transfer coding included), cut out of the connection's reads by
:class:`~wirecap.proxy.messages.RawTap`. :class:`AnswerWire` sorts the bytes serve wrote into the
response head and the body, and counts the body's payload (h11 reads it as the client did). Times
are passed in; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses

import h11

from wirecap.proxy.messages import RawTap


@dataclasses.dataclass(slots=True, kw_only=True)
class RequestWire:
    """A request as the client sent it: its head, and its body's reads with their times (ns since
    ``t0_ns``, the clock reading when the head was in); and the interim answer serve wrote before
    the body (``100 Continue``, to a client that asked for it), with its time."""

    head: bytes
    wall_ns: int  # when the head was in, ns since the Unix epoch
    t0_ns: int  # time.perf_counter_ns() then
    body: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    interim: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    payload_bytes: int = 0

    def read(self, ns: int, wire: bytes, payload: int) -> None:
        """Body bytes of one read (``wire``, as sent) holding ``payload`` bytes of payload."""
        if wire:
            self.body.append((ns, wire))
        self.payload_bytes += payload


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """A response head as written: its status and exact bytes."""

    status: int
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Body:
    """Response body bytes as written (transfer coding included)."""

    data: bytes


class AnswerWire:
    """The writes of one answer, in order: :meth:`sent` returns the heads (interim 1xx ones first,
    then the final one) and the body bytes each write holds. h11 reads the writes as the client
    does: each head is the bytes behind h11's head event (:class:`RawTap`), a head cut across
    writes comes out with the write that ends it, and the body's payload is counted from h11's
    data events."""

    def __init__(self, method: bytes) -> None:
        """``method``: the request's (the answer to a HEAD has no body)."""
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"serve")]))
        reader.send(h11.EndOfMessage())
        self._tap = RawTap(reader)
        self.status: int | None = None  # the final head's, once it is written
        self.payload_bytes = 0
        self.complete = False  # the message ended as its framing says
        self._unread = False  # h11 could not read the answer: later writes are body as they are

    def sent(self, data: bytes) -> list[Head | Body]:
        """What the write of ``data`` held."""
        if self.status is not None or self._unread:
            self._read(data)
            return [Body(data)] if data else []
        return self._read(data)

    def _read(self, data: bytes) -> list[Head | Body]:
        """Feed h11 ``data``: the heads it completes, then the body bytes after the final one."""
        if self.complete or self._unread:
            return []
        parts: list[Head | Body] = []
        head_pending = self.status is None
        try:
            self._tap.feed(data)
            while (event := self._tap.conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.InformationalResponse | h11.Response):
                    parts.append(Head(event.status_code, self._tap.take()))
                    if isinstance(event, h11.Response):
                        self.status = event.status_code
                        body = self._tap.conn.trailing_data[0]
                        if body:
                            parts.append(Body(body))
                elif isinstance(event, h11.Data):
                    self.payload_bytes += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.complete = True
                    break
                else:  # PAUSED, ConnectionClosed
                    break
        except h11.ProtocolError:
            self._unread = True  # serve writes with h11; anything else is kept as body
            if head_pending and self.status is None:
                parts.append(Body(self._tap.unaccounted))
        return parts if head_pending else []
