"""Replaying a recorded WebSocket session against a target and comparing what its server sends
(trio + wsproto).

The handshake is made again from the recorded request (headers as for HTTP replay, ``--header``
putting redacted credentials back; permessage-deflate and the subprotocol offered as recorded).
Then the recorded client messages go out in order, each once the target has sent as many data
messages as the recorded server had before it (at the recorded pace with ``--pace``); after the
last, the target's messages are read until it has sent as many as were recorded, or closes, or
goes quiet for the read timeout. Mode ``json`` compares the server's messages as normalized JSON
(volatile fields dropped, see sessions.py); ``exact`` as text and bytes; ``schema`` by shape;
``status`` only that the target switched protocols.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.events import Request as WsRequest
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import RemoteProtocolError

from wirecap.llm.websocket import WsMessage, deflate_params
from wirecap.replay.client import build_request
from wirecap.replay.compare import Verdict, _verdict
from wirecap.replay.normalize import shape
from wirecap.replay.sessions import DATA, RecordedSession, comparable, session_from
from wirecap.replay.wsserve import SessionEnded, WsPeer, pause

if TYPE_CHECKING:
    from wsproto.extensions import Extension

    from wirecap.capture import Exchange
    from wirecap.proxy.upstream import ConnectionPool
    from wirecap.replay.runner import ReplayOptions

#: Headers the WebSocket handshake makes itself: never copied from the recording.
_HANDSHAKE = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
    }
)


class HandshakeRefused(Exception):
    """The target answered the handshake with something other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the target refused the WebSocket handshake with HTTP {status}")
        self.status = status


async def replay_session(
    pool: ConnectionPool, exchange: Exchange, options: ReplayOptions
) -> tuple[int | None, Verdict, int, str | None]:
    """Replay ``exchange``'s session; returns (the target's status, verdict, duration in ns,
    error). Raises the pool's connect errors, like HTTP replay."""
    recorded = session_from(exchange)
    request = build_request(
        exchange, options.target, via_proxy=options.via_proxy, extra_headers=options.headers
    )
    if recorded is None or request is None:
        return None, Verdict(False, "", "no session recorded"), 0, "no session recorded"
    t0 = time.perf_counter_ns()
    conn = await pool.acquire(options.target)
    try:
        with trio.fail_after(options.read_timeout):
            peer = await _connect(conn.stream, request.target, request.headers, recorded, options)
        live = await _drive(peer, recorded, options)
    except HandshakeRefused as exc:
        verdict = _verdict({"status": 101}, {"status": exc.status}, force_fail=str(exc))
        return exc.status, verdict, time.perf_counter_ns() - t0, str(exc)
    except (trio.TooSlowError, SessionEnded) as exc:
        error = f"handshake failed: {exc or 'no answer in time'}"
        return None, Verdict(False, "", error), time.perf_counter_ns() - t0, error
    finally:
        await conn.aclose()
    verdict = _verdict(_comparable(recorded.server_messages, options), _comparable(live, options))
    return 101, verdict, time.perf_counter_ns() - t0, None


async def _connect(
    stream: trio.abc.Stream,
    target: str,
    headers: tuple[tuple[bytes, bytes], ...],
    recorded: RecordedSession,
    options: ReplayOptions,
) -> WsPeer:
    """Open the session: the handshake from the recorded request, as recorded."""
    conn = WSConnection(ConnectionType.CLIENT)
    extensions: list[Extension] = (
        [PerMessageDeflate()] if deflate_params(recorded.extensions) else []
    )
    extra = [(n, v) for n, v in headers if n.lower() not in _HANDSHAKE]
    subprotocols = [recorded.subprotocol] if recorded.subprotocol else []
    handshake = WsRequest(
        host=options.target.host_header,
        target=target,
        extensions=extensions,
        extra_headers=extra,
        subprotocols=subprotocols,
    )
    peer = WsPeer(stream, conn, time.perf_counter_ns(), "res")
    await peer._write(conn.send(handshake))
    while True:
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return peer
            if isinstance(event, RejectConnection | RejectData):
                raise HandshakeRefused(getattr(event, "status_code", 0))
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SessionEnded(
                f"the target broke the connection in the handshake ({exc})"
            ) from None
        if not data:
            raise SessionEnded("the target closed the connection during the handshake")
        try:
            conn.receive_data(bytes(data))
        except RemoteProtocolError as exc:
            raise SessionEnded(f"the target's handshake answer is not one: {exc}") from None


async def _drive(
    peer: WsPeer, recorded: RecordedSession, options: ReplayOptions
) -> list[WsMessage]:
    """Send the recorded client messages in their order against the server's; return the data
    messages the target sent."""
    live: list[WsMessage] = []
    expected = 0  # server data messages recorded so far
    previous = recorded.start_ns
    try:
        for message in recorded.messages:
            if message.dir == "res":
                expected += message.opcode in DATA
                continue
            if message.opcode not in DATA:
                continue
            if not await _receive_until(peer, live, expected, options.read_timeout):
                return live
            await pause(message.ns - previous, options.pace)
            previous = message.ns
            await peer.send(message)
        await _receive_until(peer, live, expected, options.read_timeout)
    except SessionEnded:
        return live
    finally:
        await peer.aclose()
    return live


async def _receive_until(peer: WsPeer, live: list[WsMessage], count: int, timeout: float) -> bool:
    """Read the target's data messages until there are ``count``; False when it closed or went
    quiet for ``timeout`` seconds first."""
    while len(live) < count:
        with trio.move_on_after(timeout):
            message = await peer.receive()
            if message is None or message.opcode == "close":
                return False
            live.append(message)
            continue
        return False
    return True


def _comparable(messages: list[WsMessage], options: ReplayOptions) -> Any:
    """The server's messages as ``options.mode`` compares them."""
    if options.mode == "status":
        return {"status": 101}
    if options.mode == "exact":
        return [m.text if m.text is not None else m.data.hex() for m in messages]
    data = [comparable(m, options.ignore) for m in messages]
    return shape(data) if options.mode == "schema" else data
