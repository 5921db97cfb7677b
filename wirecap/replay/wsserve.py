"""WebSocket sessions over trio with wsproto: the peer that ``serve`` answers with and ``replay``
drives, and ``serve``'s answer to an Upgrade request.

:class:`WsPeer` owns one ``wsproto.WSConnection`` over a trio stream: it sends messages, returns the
next data message or Close that arrives, and answers pings and the closing handshake itself.
:func:`serve_session` answers a recorded session (see sessions.py for the matching): the server's
opening messages, then, message by message, each recorded client message awaited and each server
message sent after its recorded gap, scaled by ``speed`` (None: no waiting).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from wirecap.llm.websocket import WsMessage, deflate_params
from wirecap.replay.sessions import DATA, opening

if TYPE_CHECKING:
    import h11
    from wsproto.extensions import Extension

    from wirecap.replay.sessions import RecordedSession, SessionCatalog

#: The close code of a session nothing recorded matches (RFC 6455: policy violation).
NO_MATCH_CODE: Final = 1008
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class SessionEnded(Exception):
    """The other side's connection ended (or broke the protocol) before the message awaited."""


class WsPeer:
    """One side of a WebSocket session over ``stream`` (the handshake already done or to do)."""

    def __init__(
        self, stream: trio.abc.Stream, conn: WSConnection, started_ns: int, receives: str
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.receives = (
            receives  # the direction of what arrives: "req" for a server, "res" for a client
        )
        self.started_ns = started_ns  # perf_counter_ns when the session began: message times
        self._parts: list[str | bytes | bytearray] = []

    async def send(self, message: WsMessage) -> None:
        """Send a data message or a Close (then the closing handshake is the peer's to finish)."""
        if self.conn.state is not ConnectionState.OPEN:
            return
        if message.opcode == "close":
            reason = message.data.decode("utf-8", "replace")
            event: object = CloseConnection(code=message.close_code or 1000, reason=reason)
        elif message.text is not None:
            event = TextMessage(data=message.text)
        else:
            event = BytesMessage(data=message.data)
        await self._write(self.conn.send(event))  # type: ignore[arg-type]

    async def receive(self) -> WsMessage | None:
        """The next data message or Close from the other side (pings are answered on the way);
        None when the connection ended without a Close."""
        while True:
            for event in self.conn.events():
                found = await self._take(event)
                if found is not None:
                    return found
            try:
                data = await self.stream.receive_some(65536)
            except _BROKEN:
                data = b""
            try:
                self.conn.receive_data(bytes(data) if data else None)
            except RemoteProtocolError:
                return None
            if not data:
                for event in self.conn.events():
                    found = await self._take(event)
                    if found is not None:
                        return found
                return None

    async def _take(self, event: object) -> WsMessage | None:
        now, side = since(self.started_ns), self.receives
        if isinstance(event, Ping):
            await self._write(self.conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.conn.state is ConnectionState.REMOTE_CLOSING:
                await self._write(self.conn.send(event.response()))
            reason = (event.reason or "").encode()
            return WsMessage(dir=side, ns=now, opcode="close", data=reason, close_code=event.code)
        elif isinstance(event, TextMessage | BytesMessage):
            self._parts.append(event.data)
            if event.message_finished:
                parts, self._parts = self._parts, []
                if isinstance(event, TextMessage):
                    text = "".join(str(p) for p in parts)
                    return WsMessage(dir=side, ns=now, opcode="text", data=text.encode(), text=text)
                data = b"".join(bytes(p) for p in parts if isinstance(p, bytes | bytearray))
                return WsMessage(dir=side, ns=now, opcode="binary", data=data)
        return None

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except _BROKEN:
            raise SessionEnded("the connection ended") from None

    async def aclose(self) -> None:
        """End the session: a Close if none was sent, then the connection."""
        if self.conn.state is ConnectionState.OPEN:
            with contextlib.suppress(SessionEnded, LocalProtocolError):
                await self._write(self.conn.send(CloseConnection(code=1000)))
        await trio.aclose_forcefully(self.stream)


class BadHandshake(Exception):
    """An Upgrade request wsproto does not accept as a WebSocket handshake (nothing was sent)."""


def since(started_ns: int) -> int:
    return time.perf_counter_ns() - started_ns


async def pause(ns: int, speed: float | None) -> None:
    if speed and ns > 0:
        await trio.sleep(ns / 1e9 / speed)


async def accept(
    stream: trio.abc.Stream, request: h11.Request, leftover: bytes, recorded: RecordedSession
) -> WsPeer:
    """Complete the handshake of ``request`` (already parsed by h11) as ``recorded``'s 101 did:
    its subprotocol, and permessage-deflate when it was negotiated and the client offers it."""
    conn = WSConnection(ConnectionType.SERVER)
    try:
        conn.initiate_upgrade_connection(list(request.headers.raw_items()), request.target)
        if leftover:
            conn.receive_data(leftover)
        event = next(iter(conn.events()), None)
    except (RemoteProtocolError, LocalProtocolError) as exc:
        raise BadHandshake(str(exc)) from None
    offered = event.subprotocols if isinstance(event, Request) else []
    extensions: list[Extension] = (
        [PerMessageDeflate()] if deflate_params(recorded.extensions) else []
    )
    subprotocol = recorded.subprotocol if recorded.subprotocol in offered else None
    peer = WsPeer(stream, conn, time.perf_counter_ns(), "req")
    await peer._write(conn.send(AcceptConnection(subprotocol=subprotocol, extensions=extensions)))
    return peer


async def serve_session(
    stream: trio.abc.Stream,
    request: h11.Request,
    leftover: bytes,
    catalog: SessionCatalog,
    speed: float | None,
) -> RecordedSession | None:
    """Answer an Upgrade request from the sessions recorded on its path (the caller checked there
    is one); returns the session that answered, or None when the client's first message matched
    none (the session is then closed with :data:`NO_MATCH_CODE`)."""
    path = urlsplit(request.target.decode("latin-1")).path or "/"
    first_on_path = catalog.on_path(path)[0]
    peer = await accept(stream, request, leftover, first_on_path)
    try:
        previous = first_on_path.start_ns
        for message in opening(first_on_path):
            await pause(message.ns - previous, speed)
            await peer.send(message)
            previous = message.ns
        first = await peer.receive()
        if first is None or first.opcode == "close":
            return None
        session = catalog.match(path, first)
        if session is None:
            reason = "wirecap: no recorded session on this path starts with this message"
            await peer.send(
                WsMessage(
                    dir="res", ns=0, opcode="close", data=reason.encode(), close_code=NO_MATCH_CODE
                )
            )
            await peer.receive()  # the client's Close
            return None
        await _play(peer, session, speed)
        return session
    except SessionEnded:
        return None
    finally:
        await peer.aclose()


async def _play(peer: WsPeer, session: RecordedSession, speed: float | None) -> None:
    """The rest of ``session`` after its first client message: client messages awaited, server
    messages sent after their recorded gaps."""
    messages = list(session.messages)
    first = session.first_client()
    start = messages.index(first) + 1 if first is not None else 0
    previous = messages[start - 1].ns if start else session.start_ns
    for message in messages[start:]:
        if message.dir == "req":
            if message.opcode in DATA:
                got = await peer.receive()
                if got is None or got.opcode == "close":
                    return
            elif message.opcode == "close":
                await peer.receive()  # the client closes, as recorded: answer it
                return
        else:
            await pause(message.ns - previous, speed)
            await peer.send(message)
            if message.opcode == "close":
                await peer.receive()  # the client's answering Close
                return
        previous = message.ns
