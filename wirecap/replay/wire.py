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
from typing import Final

import h11

#: Where a head ends; the bytes after it in the same write are body.
_HEAD_END: Final = b"\r\n\r\n"


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
    then the final one) and the body bytes each write holds. A head cut across writes comes out
    with the write that ends it."""

    def __init__(self, method: bytes) -> None:
        """``method``: the request's (the answer to a HEAD has no body)."""
        self._reader = h11.Connection(h11.CLIENT)
        self._reader.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"serve")]))
        self._reader.send(h11.EndOfMessage())
        self._head = b""  # a head begun and not yet ended
        self.status: int | None = None  # the final head's, once it is written
        self.payload_bytes = 0
        self.complete = False  # the message ended as its framing says

    def sent(self, data: bytes) -> list[Head | Body]:
        """What the write of ``data`` held."""
        self._count(data)
        parts: list[Head | Body] = []
        while data and self.status is None:
            pending = self._head + data
            end = pending.find(_HEAD_END) + len(_HEAD_END)
            if end < len(_HEAD_END):
                self._head = pending
                return parts
            head, data, self._head = pending[:end], pending[end:], b""
            status = _status(head)
            parts.append(Head(status, head))
            if not 100 <= status < 200 or status == 101:  # the final head (or a switch)
                self.status = status
        if data:
            parts.append(Body(data))
        return parts

    def _count(self, data: bytes) -> None:
        """Feed h11, which reads the payload out of the body's framing."""
        if self.complete:
            return
        try:
            self._reader.receive_data(data)
            while (event := self._reader.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Data):
                    self.payload_bytes += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.complete = True
                    return
                elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return
        except h11.ProtocolError:
            self.complete = True  # not HTTP h11 reads: stop counting (serve writes with h11)


def _status(head: bytes) -> int:
    """The status code of a response head (0 when the status line has none)."""
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
