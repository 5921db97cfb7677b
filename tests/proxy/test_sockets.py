"""TcpStream: trio's stream contract on real TCP connections, and the one thing it does differently
(a send that completes at once need not yield)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trio.testing

from wirecap.proxy.exchange import UpstreamTimeout
from wirecap.proxy.relay import DEADLINE_SLACK, Watchdog
from wirecap.proxy.sockets import TcpStream


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


async def _stream_pair() -> tuple[TcpStream, TcpStream]:
    a, b = _tcp_pair()
    return TcpStream(a), TcpStream(b)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TcpStream, TcpStream]]:
    left, right = await _stream_pair()
    async with left, right:
        yield left, right


async def _clogged_pair() -> tuple[TcpStream, TcpStream]:
    """A pair that cannot send either way until the other side reads: every buffer is full."""
    a, b = _tcp_pair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    left, right = TcpStream(a), TcpStream(b)
    for stream in (left, right):
        while stream.send_nowait(b"x" * 65536):
            pass
    return left, right


async def test_tcp_streams_keep_trios_half_closeable_stream_contract() -> None:
    await trio.testing.check_half_closeable_stream(_stream_pair, _clogged_pair)


async def test_adopting_a_trio_socket_stream_keeps_its_connection() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo_once, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        trio_stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream = TcpStream.adopt(trio_stream)
        assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await stream.send_all(b"ping")
        assert await stream.receive_some(100) == b"ping"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def _echo_once(stream: trio.SocketStream) -> None:
    await stream.send_all(await stream.receive_some(100))


async def test_send_nowait_sends_what_the_socket_takes_and_no_more(
    pair: tuple[TcpStream, TcpStream],
) -> None:
    left, right = pair
    while left.send_nowait(b"x" * 65536):
        pass
    assert left.send_nowait(b"more") == 0  # full: nothing goes, nothing waits
    drained = 0
    while drained < 65536:
        drained += len(await right.receive_some(65536))
    sent = left.send_nowait(b"y" * 10_000_000)
    assert 0 < sent < 10_000_000


async def test_send_nowait_is_no_checkpoint_and_send_all_is(
    pair: tuple[TcpStream, TcpStream],
) -> None:
    left, right = pair
    with trio.testing.assert_no_checkpoints():
        for _ in range(10):
            left.send_nowait(b"x")
    with trio.testing.assert_checkpoints():
        await left.send_all(b"x")
    received = b""
    while len(received) < 11:
        received += await right.receive_some(100)
    assert received == b"x" * 11


async def test_a_read_that_finds_data_waiting_is_still_a_checkpoint(
    pair: tuple[TcpStream, TcpStream],
) -> None:
    left, right = pair
    await left.send_all(b"z" * 100)  # on loopback, in the peer's buffer once sent
    for _ in range(100):
        with trio.testing.assert_checkpoints():
            assert await right.receive_some(1) == b"z"


async def test_a_cancelled_read_loses_no_bytes(pair: tuple[TcpStream, TcpStream]) -> None:
    left, right = pair
    await left.send_all(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await right.receive_some(100)
    assert scope.cancelled_caught
    assert await right.receive_some(100) == b"kept"


async def test_a_reset_connection_is_broken_with_its_cause() -> None:
    a, b = _tcp_pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    a.close()  # linger 0: a reset
    async with TcpStream(b) as stream:
        with pytest.raises(trio.BrokenResourceError) as info:
            for _ in range(3):  # the reset may surface on the first read or send
                stream.send_nowait(b"x")
                await stream.receive_some(10)
    assert isinstance(info.value.__cause__, OSError)


async def test_closing_a_stream_wakes_its_reader_with_closed_resource_error(
    pair: tuple[TcpStream, TcpStream],
) -> None:
    left, _right = pair
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await left.receive_some(10)

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await left.aclose()


def test_a_watchdog_deadline_moves_only_outside_its_slack() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        watchdog = Watchdog()
        with watchdog.scope:
            watchdog.expect(64.0, UpstreamTimeout, "first")
            first = watchdog.scope.deadline
            assert first == pytest.approx(trio.current_time() + 64.0 * (1 + DEADLINE_SLACK))
            clock.jump(0.5)  # the wait's own deadline is still inside the window
            watchdog.expect(64.0, UpstreamTimeout, "second")
            assert watchdog.scope.deadline == first
            clock.jump(1.0)  # now the old deadline would fire before 64 s are up
            watchdog.expect(64.0, UpstreamTimeout, "third")
            assert watchdog.scope.deadline > first
            assert watchdog.scope.deadline >= trio.current_time() + 64.0
            watchdog.expect(1.0, UpstreamTimeout, "shorter")  # a shorter wait tightens it
            assert watchdog.scope.deadline <= trio.current_time() + 1.0 * (1 + DEADLINE_SLACK)

    trio.run(main, clock=clock)


def test_a_watchdog_fires_with_the_message_of_the_wait_that_ran_out() -> None:
    async def main() -> None:
        with (
            pytest.raises(UpstreamTimeout, match="upstream sent nothing for 5s"),
            Watchdog() as watchdog,
        ):
            watchdog.expect(5.0, UpstreamTimeout, lambda: "upstream sent nothing for 5s")
            await trio.sleep(5.0 * (1 + DEADLINE_SLACK) + 0.001)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_connection_is_idle_until_its_peer_sends_or_closes() -> None:
    for ending in ("sends", "closes", "resets"):
        a, b = _tcp_pair()
        async with TcpStream(b) as stream:
            assert stream.is_idle()
            if ending == "sends":
                a.send(b"x")
            elif ending == "resets":
                a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            if ending != "sends":
                a.close()
            with trio.fail_after(5):
                while stream.is_idle():  # the peer's bytes or FIN arrive a moment later
                    await trio.sleep(0.001)
            if ending == "sends":
                assert await stream.receive_some(10) == b"x"  # the peek took nothing
                a.close()
