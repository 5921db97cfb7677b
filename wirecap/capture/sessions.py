"""How each WebSocket session in a stream of records ended, judged from its Close frames. Sans-IO.

The proxy relays a session's bytes without reading a frame (proxy/tunnel.py). When a connection
ends with end of file, the transport saw nothing wrong: the proxy records the session's end as
``ok``, after a ``websocket`` note naming the side whose connection ended first. Whether that side
had said goodbye is in the frames: a side that ends its connection without having sent a Close
frame dropped the session.

:class:`SessionEnds` makes that judgement on the records' way to the file, in the writer process,
off the proxy's hot path. For each exchange the upstream answered with 101 it runs one wsproto
frame decoder per direction, in the role that receives those frames, looking for Close frames
only: data frames pass undecoded (a compressed frame is not inflated). When the session's end
record says ``ok`` but the side that ended first sent no Close frame, the end record becomes that
side's failure, ``client_abort`` or ``upstream_error``, with the reason in ``error``. A direction
whose frames cannot be parsed stops being watched and counts as having sent no Close frame.
A Close frame counts once its frame parses, whatever its code and reason, and whatever the data
frames before it carried (text that is not UTF-8, a compressed payload that does not inflate):
the side said goodbye. The reader judges a file written without this judgement with the same
watch (:func:`closes_sent`), so the two always agree.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Final, Protocol

from wsproto.extensions import Extension
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, Opcode, ParseFailed, RsvBits

from wirecap.capture.records import BodyChunk, ExchangeEnd, ExchangeNote, ResponseHead

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wirecap.capture.records import Outcome, Record

#: The outcome and reason of a session whose side ended its connection without a Close frame.
DROPPED: Final[dict[str, tuple[Outcome, str]]] = {
    "client": ("client_abort", "client ended its connection mid-session, without a Close frame"),
    "upstream": (
        "upstream_error",
        "upstream ended its connection mid-session, without a Close frame",
    ),
}


class _CompressedFramesPass(Extension):
    """Claims RSV1, so that frames compressed by permessage-deflate parse; their payload passes
    as it is (only control frames, which are never compressed, are looked at)."""

    name = "permessage-deflate"

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False  # never negotiates: it only reads what was negotiated

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> RsvBits:
        return RsvBits(not opcode.iscontrol(), False, False)


class FrameAllowance(Protocol):
    """Frames a reader may still parse, one spent a frame (an analysis pass's event allowance)."""

    def spend(self, events: int = 1) -> bool: ...


class _CloseWatch:
    """One direction of one session: whether a Close frame has gone by."""

    def __init__(self, *, from_client: bool, deflate: bool) -> None:
        extensions: list[Extension] = [_CompressedFramesPass()] if deflate else []
        # The client's frames are read as the server reads them (masked), and the other way round.
        self.decoder: FrameDecoder | None = FrameDecoder(not from_client, extensions)
        self.closed = False

    def feed(self, data: bytes, allowance: FrameAllowance | None = None) -> bool:
        """Watch the frames of ``data``; False when ``allowance`` ran out before they did."""
        if self.decoder is None:
            return True
        self.decoder.receive_bytes(data)
        try:
            while (frame := self.decoder.process_buffer()) is not None:
                if allowance is not None and not allowance.spend():
                    return False
                if frame.opcode is Opcode.CLOSE:
                    self.closed = True
                    self.decoder = None  # nothing after a Close frame matters here
                    return True
        except ParseFailed:
            self.decoder = None
        return True


def _watches(deflate: bool) -> dict[str, _CloseWatch]:
    """One Close watch per direction of a session ("req": the client's frames)."""
    return {
        "req": _CloseWatch(from_client=True, deflate=deflate),
        "res": _CloseWatch(from_client=False, deflate=deflate),
    }


def closes_sent(
    switch_head: bytes,
    reads: Iterable[tuple[str, bytes]],
    allowance: FrameAllowance | None = None,
) -> frozenset[str] | None:
    """The directions (``"req"``, ``"res"``) that sent a Close frame in a session, from its 101
    head and its stored reads ``(direction, bytes)`` in order: the judgement :class:`SessionEnds`
    makes, for a reader of a file written without it. None when ``allowance`` runs out first."""
    watches = _watches(_accepts_deflate(switch_head))
    for direction, data in reads:
        watch = watches.get(direction)
        if watch is not None and not watch.feed(data, allowance):
            return None
    return _closed(watches)


def _closed(watches: dict[str, _CloseWatch]) -> frozenset[str]:
    return frozenset(direction for direction, watch in watches.items() if watch.closed)


def dropped_by(ended_by: object, closes: frozenset[str]) -> tuple[Outcome, str] | None:
    """The outcome and reason of a session whose end was ``ok`` as far as the transport went,
    when ``ended_by`` (the ``websocket`` note's side that ended first) sent no Close frame
    (``closes``, see :func:`closes_sent`); None when it did, or when no side is named."""
    if not isinstance(ended_by, str) or ended_by not in DROPPED:
        return None
    direction = "req" if ended_by == "client" else "res"
    return None if direction in closes else DROPPED[ended_by]


@dataclasses.dataclass(slots=True)
class _Session:
    watches: dict[str, _CloseWatch]
    ended_by: object = None


#: Sessions watched at once. A session whose end record never arrives (``--on-full drop`` dropped
#: it) would be held for the writer's lifetime; past this many, the oldest is forgotten (its end,
#: if it comes, passes as it is). Far above the sessions one proxy keeps open at a time.
MAX_OPEN_SESSIONS: Final = 65_536


class SessionEnds:
    """Judges the end of each WebSocket session in a stream of records (see the module docstring).

    Call :meth:`judge` on every record in order; it returns the record, or the session's end
    record amended. Memory: one decoder's partial frame header per direction of each open session,
    for at most ``max_open`` sessions.
    """

    def __init__(self, max_open: int = MAX_OPEN_SESSIONS) -> None:
        self._open: dict[str, _Session] = {}
        self._max_open = max_open

    def judge(self, record: Record) -> Record:
        if isinstance(record, BodyChunk):
            session = self._open.get(record.x)
            if session is not None:
                session.watches[record.dir].feed(record.data)
        elif isinstance(record, ResponseHead) and record.status == 101:
            deflate = _accepts_deflate(record.head)
            self._open.pop(record.x, None)
            while len(self._open) >= self._max_open:
                del self._open[next(iter(self._open))]  # the oldest
            self._open[record.x] = _Session(_watches(deflate))
        elif isinstance(record, ExchangeNote) and record.kind == "websocket":
            session = self._open.get(record.x)
            if session is not None:
                session.ended_by = record.detail.get("ended_by")
        elif isinstance(record, ExchangeEnd):
            session = self._open.pop(record.x, None)
            if session is not None and record.outcome == "ok":
                return _judged(record, session)
        return record


def _judged(end: ExchangeEnd, session: _Session) -> ExchangeEnd:
    dropped = dropped_by(session.ended_by, _closed(session.watches))
    if dropped is None:
        return end
    outcome, error = dropped
    return dataclasses.replace(end, outcome=outcome, error=error)


def _accepts_deflate(head: bytes) -> bool:
    """Whether a 101 head accepts permessage-deflate: one of the extensions its
    ``Sec-WebSocket-Extensions`` lines name (any of them, comma-separated) is that one."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep or name.strip().lower() != b"sec-websocket-extensions":
            continue
        offers = (offer.split(b";")[0].strip().lower() for offer in value.split(b","))
        if b"permessage-deflate" in offers:
            return True
    return False
