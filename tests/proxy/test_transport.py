"""The relay's socket transport on real connected sockets (a socketpair)."""

from __future__ import annotations

import socket

import pytest
import trio

from wirecap.proxy.transport import SocketTransport


def _pair() -> tuple[SocketTransport, socket.socket]:
    ours, peer = socket.socketpair()
    return SocketTransport(ours), peer


async def test_receive_later_returns_bytes_sent_before_or_after_it_waits():
    transport, peer = _pair()
    with peer:
        peer.sendall(b"already here")  # a pipelined request: readable before the wait
        assert await transport.receive_later(100) == b"already here"
        got: list[bytes] = []

        async def receive() -> None:
            got.append(await transport.receive_later(100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.sleep(0.01)
            assert got == []  # parked: nothing was sent yet
            peer.sendall(b"later")
        assert got == [b"later"]
    transport.close()


async def test_receive_later_sees_the_end_of_stream_and_a_close():
    transport, peer = _pair()
    peer.close()
    assert await transport.receive_later(100) == b""
    transport.close()
    with pytest.raises(trio.ClosedResourceError):
        await transport.receive_later(100)  # closed before the call

    transport, peer = _pair()
    with peer:

        async def close_soon() -> None:
            await trio.sleep(0.01)
            transport.close()  # what the watchdog does when a deadline passes

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            with pytest.raises(trio.ClosedResourceError):
                await transport.receive_later(100)  # closed while parked
