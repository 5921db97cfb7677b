"""Recorded WebSocket sessions, ready to serve and to replay: matching and comparing. Sans-IO.

A session is matched on its path (as the client sent it, or as it went upstream) and its first
client data message; the messages the server sent before that first client message come from the
first recorded session on the path (a Realtime server speaks first: ``session.created``). Text
messages compare as JSON with volatile fields dropped (ids, timestamps and the event ids and
expiry times of Realtime events), like HTTP bodies; other messages compare by opcode and bytes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from wirecap.llm.websocket import WsMessage, decode_session, header_of
from wirecap.replay.normalize import VOLATILE_KEYS, canonical, decode_tool_arguments, drop_path
from wirecap.replay.normalize import drop_volatile as _drop_volatile

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from wirecap.capture import Exchange
    from wirecap.llm import EventAllowance

#: Keys of session events that change on every run, beside the HTTP ones.
SESSION_VOLATILE: Final = VOLATILE_KEYS | frozenset(
    {"event_id", "response_id", "previous_item_id", "expires_at", "audio_start_ms", "audio_end_ms"}
)
#: Opcodes that carry the application's messages (control frames are the transport's).
DATA: Final = frozenset({"text", "binary"})


def comparable(message: WsMessage, ignore: Sequence[list[str | int | None]] = ()) -> Any:
    """What of ``message`` a comparison looks at: a text message as normalized JSON (or its text),
    another as its opcode and bytes (hex)."""
    if message.text is not None:
        try:
            value = json.loads(message.text)
        except ValueError:
            return message.text
        value = _drop_volatile(decode_tool_arguments(value), SESSION_VOLATILE)
        for steps in ignore:
            value = drop_path(value, steps)
        return value
    return {"opcode": message.opcode, "hex": message.data.hex()}


def key_of(message: WsMessage | None, ignore: Sequence[list[str | int | None]] = ()) -> str:
    """The text a first client message is matched by."""
    return "" if message is None else canonical(comparable(message, ignore))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecordedSession:
    """One recorded session: where it was opened, what the 101 agreed, and its messages."""

    id: str
    paths: tuple[str, ...]  # the path as the client sent it, and as sent upstream
    subprotocol: str | None
    extensions: str | None
    messages: tuple[WsMessage, ...]  # data and close messages of both sides, in arrival order
    start_ns: int  # when the 101 arrived: the server's first message is timed from here

    @property
    def client_messages(self) -> list[WsMessage]:
        return [m for m in self.messages if m.dir == "req" and m.opcode in DATA]

    @property
    def server_messages(self) -> list[WsMessage]:
        return [m for m in self.messages if m.dir == "res" and m.opcode in DATA]

    def first_client(self) -> WsMessage | None:
        return next(iter(self.client_messages), None)


def session_from(
    exchange: Exchange, allowance: EventAllowance | None = None
) -> RecordedSession | None:
    """A servable session from a captured exchange the upstream answered with 101, or None; its
    frames spend ``allowance`` (a session past it keeps the messages decoded before)."""
    switch = next((h for h in exchange.responses if h.status == 101), None)
    if switch is None or exchange.request is None:
        return None
    reads = ((c.dir, c.ns, c.data) for c in exchange.iter_wire())
    session = decode_session(switch.head, reads, allowance)
    paths = [urlsplit(exchange.request.target).path or "/"]
    if exchange.upstream_wire_head:
        start = exchange.upstream_wire_head.split(b"\r\n", 1)[0].split(b" ")
        if len(start) >= 2:
            paths.append(urlsplit(start[1].decode("latin-1")).path or "/")
    kept = [m for m in session.messages if m.opcode in DATA or m.opcode == "close"]
    return RecordedSession(
        id=exchange.id,
        paths=tuple(dict.fromkeys(paths)),
        subprotocol=header_of(switch.head, b"sec-websocket-protocol"),
        extensions=session.extensions,
        messages=tuple(kept),
        start_ns=switch.ns,
    )


class SessionCatalog:
    """Recorded sessions by path; :meth:`opening` and :meth:`match` pick the one to serve."""

    def __init__(
        self, sessions: Iterable[RecordedSession], ignore: Sequence[list[str | int | None]] = ()
    ) -> None:
        self.sessions = list(sessions)
        self.ignore = ignore

    def __bool__(self) -> bool:
        return bool(self.sessions)

    def on_path(self, path: str) -> list[RecordedSession]:
        return [s for s in self.sessions if path in s.paths]

    def match(self, path: str, first: WsMessage | None) -> RecordedSession | None:
        """The first session on ``path`` whose first client message is ``first`` (compared as
        :func:`comparable`), or None."""
        wanted = key_of(first, self.ignore)
        for session in self.on_path(path):
            if key_of(session.first_client(), self.ignore) == wanted:
                return session
        return None

    def paths(self) -> list[str]:
        return list(dict.fromkeys(s.paths[0] for s in self.sessions))


def opening(session: RecordedSession) -> list[WsMessage]:
    """The server messages a session sent before its client's first data message."""
    out = []
    for message in session.messages:
        if message.dir == "req" and message.opcode in DATA:
            break
        if message.dir == "res":
            out.append(message)
    return out
