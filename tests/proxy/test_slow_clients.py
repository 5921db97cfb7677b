"""Clients that stop reading or go away mid-response, on real sockets: the relay's sends that the
client's socket does not take at once still run under the write timeout, and every such exchange
ends as a client abort with the upstream connection dropped."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

CHUNK = b"x" * 65536
RESET = b"\x01\x00\x00\x00" * 2  # SO_LINGER on, 0 s: close() resets the connection


def _endless(head: list[tuple[str, str]], piece: bytes, dropped: trio.Event):
    """An upstream answer far larger than every socket buffer between it and the client."""

    async def handler(ex) -> None:
        await ex.read_body()
        await ex.send_head(200, head)
        try:
            for _ in range(100_000):
                await ex.send_data(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            dropped.set()

    return handler


def _slow_client(port: int, request: bytes) -> socket.socket:
    """A client with a tiny receive buffer that sends ``request`` and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


@pytest.mark.parametrize(
    ("version", "head", "piece"),
    [
        (b"1.1", [("Content-Type", "application/octet-stream")], CHUNK),
        (b"1.0", [("Transfer-Encoding", "chunked")], CHUNK),  # de-chunked for the client
        (b"1.1", [("Content-Type", "text/event-stream")], b"data: " + b"z" * 200 + b"\n\n"),
    ],
    ids=["big-body", "http10-dechunked", "sse-events"],
)
async def test_a_client_that_stops_reading_is_cut_off_by_the_write_timeout(
    start_upstream, start_proxy, version, head, piece
):
    dropped = trio.Event()
    upstream = await start_upstream(_endless(head, piece, dropped))
    proxy = await start_proxy(upstream=upstream.url, timeouts={"write": 0.3})
    sock = _slow_client(proxy.port, b"GET /v1/big HTTP/%s\r\nHost: x\r\n\r\n" % version)
    try:
        with trio.fail_after(30):  # hang guard
            await dropped.wait()  # the proxy dropped the upstream connection
    finally:
        sock.close()
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "client_abort"
    assert exchange.end is not None
    assert exchange.end.error == "client stopped reading for 0.3s"


async def test_a_client_that_resets_while_the_proxy_waits_to_write_is_a_client_abort(
    start_upstream, start_proxy
):
    dropped = trio.Event()
    upstream = await start_upstream(_endless([], CHUNK, dropped))
    proxy = await start_proxy(upstream=upstream.url)  # the default write timeout: a minute
    sock = _slow_client(proxy.port, b"GET /v1/big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await trio.to_thread.run_sync(sock.recv, 100)  # the answer has begun
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    sock.close()
    with trio.fail_after(30):
        await dropped.wait()
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "client_abort"


async def test_many_clients_leaving_mid_stream_each_end_with_a_record(start_upstream, start_proxy):
    async def events(ex) -> None:
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        try:
            for i in range(2000):
                await ex.send_data(b"data: %d %s\n\n" % (i, b"q" * (i % 700)))
                if i % 7 == 0:
                    await trio.sleep(0)
            await ex.end()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    upstream = await start_upstream(events)
    proxy = await start_proxy(upstream=upstream.url)

    async def client(n: int) -> None:
        """Reads ``n * 5000`` bytes of the stream (or all of it), then hangs up."""
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
            await stream.send_all(b"GET /s%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            got = 0
            while got < n * 5000 and (data := await stream.receive_some(4096)):
                got += len(data)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(client, n)
        while proxy.server.stats.active:
            await trio.sleep(0.01)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{proxy.url}/s999")).status_code == 200
    with await proxy.capture() as capture:
        outcomes = {e.target: e.outcome for e in capture.exchanges()}
    assert len(outcomes) == 41
    assert set(outcomes.values()) <= {"ok", "client_abort"}
    assert outcomes["/s999"] == "ok"
