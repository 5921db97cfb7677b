"""Whether a WebSocket Close frame has gone by in one direction of a relayed session. Sans-IO.

The relay forwards a WebSocket session as raw bytes and never decodes it (the reader does that,
with wsproto). To tell a session that ended with the closing handshake from a peer that dropped
the connection mid-session, it needs one fact per direction: did this side send a Close frame?
:class:`CloseWatch` learns it from the frame headers alone (RFC 6455 section 5.2): it reads the 2 to
14 header bytes of each frame, skips the payload by its length without looking at it (no
unmasking, no inflating, no copy), and stops for good at the first Close frame. It runs after each
read has been forwarded.
"""

from __future__ import annotations

from typing import Final

#: The opcode of a Close frame (RFC 6455 section 5.5.1).
CLOSE_OPCODE: Final = 0x8
#: The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte masking key.
MAX_HEADER: Final = 14


def header_size(head: bytes | bytearray) -> int:
    """The size of the frame header that starts with ``head`` (2 until its second byte is known)."""
    if len(head) < 2:
        return 2
    second = head[1]
    extended = {126: 2, 127: 8}.get(second & 0x7F, 0)
    return 2 + extended + (4 if second & 0x80 else 0)


def payload_length(head: bytes | bytearray) -> int:
    """The payload length a complete frame header states."""
    short = head[1] & 0x7F
    if short == 126:
        return int.from_bytes(head[2:4], "big")
    if short == 127:
        return int.from_bytes(head[2:10], "big")
    return short


class CloseWatch:
    """Follows the frame headers of one direction's bytes; :attr:`close_seen` once a Close frame
    header has arrived. Holds at most :data:`MAX_HEADER` bytes."""

    __slots__ = ("_head", "_skip", "close_seen")

    def __init__(self) -> None:
        self._head = bytearray()  # the header of the frame being read, so far
        self._skip = 0  # payload bytes of the current frame still to pass over
        self.close_seen = False

    def feed(self, data: bytes) -> None:
        """Follow the frames through the bytes of one read."""
        pos, end = 0, len(data)
        while pos < end and not self.close_seen:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(header_size(self._head) - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) < 2 or len(self._head) < header_size(self._head):
                continue
            self.close_seen = self._head[0] & 0x0F == CLOSE_OPCODE
            self._skip = payload_length(self._head)
            self._head.clear()
