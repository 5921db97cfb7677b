"""WebSocket sessions as messages: the stored frame bytes of both directions decoded by wsproto.
Sans-IO.

A captured session is the 101 head and the bytes of each read of each direction, frames as they
crossed the wire (client frames masked, permessage-deflate compressed when the 101 accepted it).
:func:`decode_session` runs one wsproto frame decoder per direction, in the role that receives
those frames (the client's frames are read as a server reads them), with permessage-deflate set
up from the 101's ``Sec-WebSocket-Extensions``, and returns the messages in arrival order: each
data message whole (its fragments joined, inflated, text decoded), each control frame on its own.
A message's time is the arrival of the read that completed it.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import TYPE_CHECKING, Any, Final

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, ParseFailed

from wirecap.llm.facts import EventAllowance

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from wsproto.extensions import Extension

#: The names of the opcodes a message can have.
OPCODE_NAMES: Final = {
    Opcode.TEXT: "text",
    Opcode.BINARY: "binary",
    Opcode.PING: "ping",
    Opcode.PONG: "pong",
    Opcode.CLOSE: "close",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WsMessage:
    """One WebSocket message (or control frame) as its receiver got it."""

    dir: str  # "req": client to upstream; "res": upstream to client
    ns: int  # arrival of the read that completed it, ns since the exchange began
    opcode: str  # "text", "binary", "ping", "pong" or "close"
    data: bytes  # the payload, inflated; a text message's UTF-8 bytes; a close frame's reason
    text: str | None = None  # a text message's text
    close_code: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dir": self.dir,
            "ms": round(self.ns / 1e6, 3),
            "opcode": self.opcode,
            "size": self.size,
        }
        if self.text is not None:
            out["text"] = self.text
        if self.close_code is not None:
            out["close_code"] = self.close_code
            out["reason"] = self.data.decode("utf-8", "replace")
        return out


@dataclasses.dataclass(slots=True, kw_only=True)
class WsSession:
    """A decoded session: its messages in arrival order, the extensions the 101 accepted, and what
    could not be decoded (per direction: the decoder stops there)."""

    messages: list[WsMessage] = dataclasses.field(default_factory=list)
    extensions: str | None = None
    problems: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Why decoding stopped before the end (the pass's event allowance ran out), or None.
    stopped: str | None = None

    def closed_by(self, direction: str) -> bool:
        """Whether ``direction`` sent a Close frame."""
        return any(m.opcode == "close" and m.dir == direction for m in self.messages)

    def of(self, direction: str, opcode: str | None = None) -> list[WsMessage]:
        return [m for m in self.messages if m.dir == direction and opcode in (None, m.opcode)]


def header_of(head: bytes, name: bytes) -> str | None:
    """The value of header ``name`` (case-insensitive) in a raw HTTP head, all its lines joined."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            values.append(value.strip().decode("latin-1"))
    return ", ".join(values) if values else None


def deflate_params(extensions: str | None) -> str | None:
    """The permessage-deflate parameters the 101 accepted (``"permessage-deflate; ..."``), or None."""
    for offer in (extensions or "").split(","):
        if offer.split(";")[0].strip().lower() == PerMessageDeflate.name:
            return offer.strip()
    return None


#: A session decodes to at most this many bytes of messages (its messages are held together); past
#: it, decoding stops and the session names the problem. Each message counts MESSAGE_COST bytes
#: beyond its payload, what holding it costs, so that millions of empty frames stop as soon. One
#: read inflates to at most :data:`MAX_INFLATED_READ`, so a few bytes of deflate bomb cost no more.
MAX_SESSION_DECODED: Final = 64 * 1024 * 1024
MESSAGE_COST: Final = 256
MAX_INFLATED_READ: Final = 16 * 1024 * 1024


class BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate, inflating at most :data:`MAX_INFLATED_READ` bytes from the
    compressed bytes of one read (wsproto inflates without a bound); more is a message too big,
    which ends the direction's decoding like any undecodable frame."""

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        try:
            out = self._decompressor.decompress(bytes(data), MAX_INFLATED_READ)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return CloseReason.MESSAGE_TOO_BIG if self._decompressor.unconsumed_tail else out


class _Direction:
    """One direction's decoder: wsproto in the role that receives its frames, and the message
    being assembled."""

    def __init__(self, direction: str, deflate: str | None) -> None:
        extensions: list[Extension] = []
        self.failed: str | None = None
        if deflate is not None:
            ext = BoundedDeflate()
            try:
                ext.finalize(deflate)  # the parameters as accepted, for either role
                extensions.append(ext)
            except ValueError as exc:
                self.failed = f"{direction}: bad Sec-WebSocket-Extensions in the 101 ({exc})"
        # Client frames are read as the server reads them, and the other way round.
        self.frames = FrameProtocol(client=direction == "res", extensions=extensions)
        self.direction = direction
        self.opcode: Opcode | None = None
        self.parts: list[Any] = []
        self.pending = 0  # the cost of the message being assembled so far (see MESSAGE_COST)

    def feed(self, data: bytes, ns: int) -> Iterator[WsMessage | None]:
        """For each frame of ``data``, decoded one at a time as they are taken, the message it
        completes (None: none)."""
        if self.failed is not None:
            return
        self.frames.receive_bytes(data)
        try:
            for frame in self.frames.received_frames():
                yield self._take(frame.opcode, frame.payload, frame.message_finished, ns)
        except ParseFailed as exc:
            self.failed = f"{self.direction}: {exc}"

    def _take(self, opcode: Opcode, payload: Any, finished: bool, ns: int) -> WsMessage | None:
        if opcode is Opcode.CLOSE:
            code, reason = payload
            return WsMessage(
                dir=self.direction,
                ns=ns,
                opcode="close",
                data=(reason or "").encode(),
                close_code=int(code),
            )
        if opcode in (Opcode.PING, Opcode.PONG):
            return WsMessage(dir=self.direction, ns=ns, opcode=OPCODE_NAMES[opcode], data=payload)
        if opcode is not Opcode.CONTINUATION:
            self.opcode = opcode
        self.parts.append(payload)
        self.pending += len(payload) + MESSAGE_COST  # each part held costs as a message does
        if self.pending > MAX_SESSION_DECODED:
            raise ParseFailed(
                f"a message of over {MAX_SESSION_DECODED >> 20} MiB ({len(self.parts)} frame(s), "
                f"each counted at {MESSAGE_COST} bytes beyond its data)"
            )
        if not finished:
            return None
        parts, self.parts, self.pending = self.parts, [], 0
        if self.opcode is Opcode.TEXT:
            text = "".join(parts)
            return WsMessage(
                dir=self.direction, ns=ns, opcode="text", data=text.encode(), text=text
            )
        return WsMessage(dir=self.direction, ns=ns, opcode="binary", data=b"".join(parts))

    def unfinished(self) -> str | None:
        """Why this direction's bytes ended badly (a decode error, a message cut short), or None."""
        if self.failed is not None:
            return self.failed
        if self.parts:
            return f"{self.direction}: the bytes end inside a message"
        return None


def decode_session(
    switch_head: bytes,
    reads: Iterable[tuple[str, int, bytes]],
    allowance: EventAllowance | None = None,
) -> WsSession:
    """Decode a session: ``switch_head`` is the 101 head, ``reads`` each stored read as
    ``(direction, ns, bytes)`` in stored order. Undecodable bytes end that direction's messages
    and are named in :attr:`WsSession.problems`; nothing is raised. Each frame spends one event
    of ``allowance``; when it runs out, decoding stops and :attr:`WsSession.stopped` says so."""
    extensions = header_of(switch_head, b"sec-websocket-extensions")
    deflate = deflate_params(extensions)
    session = WsSession(extensions=extensions)
    sides = {d: _Direction(d, deflate) for d in ("req", "res")}
    decoded = 0
    for direction, ns, data in reads:
        side = sides.get(direction)
        if side is None:
            continue
        for message in side.feed(data, ns):
            if allowance is not None and not allowance.spend():
                session.stopped = EventAllowance.stopped(len(session.messages), "messages")
                return session
            if message is None:
                continue
            decoded += message.size + MESSAGE_COST
            session.messages.append(message)
            if decoded > MAX_SESSION_DECODED:
                break
        if decoded > MAX_SESSION_DECODED:
            for other in sides.values():
                other.failed = other.failed or (
                    f"{other.direction}: decoding stops past {MAX_SESSION_DECODED >> 20} MiB "
                    "of messages"
                )
            break
    for direction, side in sides.items():
        problem = side.unfinished()
        if problem is not None:
            session.problems[direction] = problem
    return session
