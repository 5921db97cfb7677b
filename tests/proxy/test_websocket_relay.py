"""End to end: a real `websockets` client -> the real proxy -> a real `websockets` upstream, all on
127.0.0.1. The session goes through after the 101, both ways, and the capture holds its bytes."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import trustme
from websockets.exceptions import ConnectionClosed
from wsupstream import in_thread, open_client, websocket_upstream

from wirecap.inspect.analysis import analyze_exchange


def ws_url(proxy, path: str = "/v1/echo?model=gpt-realtime") -> str:
    return f"ws://127.0.0.1:{proxy.port}{path}"


async def session_of(proxy):
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    return exchange


async def test_text_binary_ping_and_close_go_through_and_are_captured(start_proxy):
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("hello")
                text = ws.recv(timeout=10)
                ws.send(b"\x00\x01\x02binary")
                data = ws.recv(timeout=10)
                pong = ws.ping(b"are you there")
                answered = pong.wait(10)
                ws.close(1000, "done")
                return text, data, answered, ws.close_code

        text, data, answered, code = await in_thread(client)
    assert (text, data, answered, code) == ("hello", b"\x00\x01\x02binary", True, 1000)
    assert upstream.received == ["hello", b"\x00\x01\x02binary"]
    exchange = await session_of(proxy)
    assert exchange.status == 101
    assert exchange.outcome == "ok", exchange.end
    assert analyze_exchange(exchange).outcome == "ok", exchange.end
    assert exchange.target == "/v1/echo?model=gpt-realtime"
    [head] = exchange.responses
    assert head.head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nUpgrade: websocket\r\n" in head.head
    assert exchange.upstream is not None
    assert b"\r\nUpgrade: websocket\r\n" in exchange.upstream.head
    assert b"\r\nSec-WebSocket-Key: " in exchange.upstream.head
    directions = {chunk.dir for chunk in exchange.chunks}
    assert directions == {"req", "res"}
    times = [chunk.ns for chunk in exchange.chunks]
    assert times == sorted(times)
    assert all(chunk.ns >= head.ns for chunk in exchange.chunks)
    # Both directions end with a Close frame (decoded by wsproto from the stored bytes): the
    # closing handshake went through whole.
    session = analyze_exchange(exchange).session
    assert session is not None and session.closed_by("req") and session.closed_by("res")
    assert exchange.end is not None
    assert exchange.end.req_bytes == sum(len(c.data) for c in exchange.iter_wire("req"))
    assert exchange.end.res_bytes == sum(len(c.data) for c in exchange.iter_wire("res"))


async def test_upstream_close_code_and_reason_reach_the_client(start_proxy):
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("close 4001 bye now")
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                return closed.value.rcvd

        received = await in_thread(client)
    assert (received.code, received.reason) == (4001, "bye now")
    exchange = await session_of(proxy)
    assert exchange.outcome == "ok", exchange.end
    assert analyze_exchange(exchange).outcome == "ok", exchange.end


async def test_permessage_deflate_is_negotiated_end_to_end(start_proxy):
    text = "the same words again and again " * 200
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy), compression="deflate") as ws:
                ws.send(text)
                return ws.recv(timeout=10), ws.response.headers["Sec-WebSocket-Extensions"]

        echoed, extensions = await in_thread(client)
    assert echoed == text
    assert extensions.startswith("permessage-deflate")
    exchange = await session_of(proxy)
    assert b"permessage-deflate" in exchange.responses[0].head
    # Compressed on the wire: the stored bytes are far smaller than the text, both ways.
    for direction in ("req", "res"):
        assert sum(len(c.data) for c in exchange.iter_wire(direction)) < len(text) // 4
    # Compressed frames do not hide the closing handshake from the writer's judgement.
    assert exchange.outcome == "ok", exchange.end


async def test_a_compressed_session_the_upstream_drops_is_an_upstream_error(start_proxy):
    text = "compressible words " * 100
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy), compression="deflate") as ws:
                ws.send(text)
                echoed = ws.recv(timeout=10)
                ws.send("drop")
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=10)
                return echoed

        assert await in_thread(client) == text
    exchange = await session_of(proxy)
    assert b"permessage-deflate" in exchange.responses[0].head
    assert exchange.outcome == "upstream_error"


async def test_upstream_dropping_mid_session_is_an_upstream_error(start_proxy):
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("one")
                first = ws.recv(timeout=10)
                ws.send("drop")
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                return first, closed.value.rcvd

        first, received = await in_thread(client)
    assert first == "one"
    assert received is None  # no Close frame reached the client: the connection just ended
    exchange = await session_of(proxy)
    # The transport saw the upstream end its connection; the frames show it sent no Close, and
    # the end record (judged by the writer process) says so.
    assert exchange.notes_of("websocket") == [{"ended_by": "upstream"}]
    assert exchange.outcome == "upstream_error"
    assert "without a Close frame" in (exchange.end.error or "")
    analyzed = analyze_exchange(exchange)
    assert analyzed.outcome == "upstream_error"
    assert "mid-session" in (analyzed.error or "")


async def test_client_dropping_mid_session_is_a_client_abort(start_proxy):
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("one")
                first = ws.recv(timeout=10)
                ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a Close frame
                return first

        assert await in_thread(client) == "one"
        exchange = await session_of(proxy)
    assert exchange.notes_of("websocket") == [{"ended_by": "client"}]
    assert exchange.outcome == "client_abort"
    assert "without a Close frame" in (exchange.end.error or "")
    assert analyze_exchange(exchange).outcome == "client_abort"
    assert upstream.received == ["one"]
    assert [c.dir for c in exchange.chunks][:2] == ["req", "res"]


async def test_a_quiet_session_outlives_the_read_and_body_timeouts(start_proxy):
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url, read_timeout=0.2, body_timeout=0.2)

        def client():
            with open_client(ws_url(proxy)) as ws:
                time.sleep(0.6)  # quiet for three times both timeouts
                ws.send("still here")
                return ws.recv(timeout=10)

        assert await in_thread(client) == "still here"
    exchange = await session_of(proxy)
    assert analyze_exchange(exchange).outcome == "ok", exchange.end


async def test_wss_upstream(start_proxy, tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with websocket_upstream(server_context) as upstream:
        url = f"https://localhost:{upstream.port}"
        proxy = await start_proxy(upstream=url, upstream_ca=ca_file)

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("over tls")
                return ws.recv(timeout=10)

        assert await in_thread(client) == "over tls"
    exchange = await session_of(proxy)
    assert exchange.status == 101
    assert analyze_exchange(exchange).outcome == "ok", exchange.end
    assert exchange.upstream_url is not None and exchange.upstream_url.startswith("https://")


async def test_a_refused_upgrade_is_an_ordinary_exchange(start_upstream, start_proxy):
    async def handler(ex):
        await ex.respond(403, b'{"error": "no"}', [("Content-Type", "application/json")])

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)

    def client():
        with pytest.raises(Exception, match="403"):
            open_client(ws_url(proxy))

    await in_thread(client)
    exchange = await session_of(proxy)
    assert exchange.status == 403
    assert exchange.outcome == "ok"
    assert upstream.requests[0].header("upgrade") == b"websocket"


async def test_a_client_that_resets_its_connection_is_a_client_abort_in_the_end_record(
    start_proxy,
):
    """A connection reset is a transport failure: the proxy records it without any frame read."""
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("one")
                first = ws.recv(timeout=10)
                linger = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
                ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                ws.socket.close()  # with linger 0: a reset, not an end of file
                return first

        assert await in_thread(client) == "one"
        exchange = await session_of(proxy)
    assert exchange.outcome == "client_abort"
    assert "broke the connection" in (exchange.end.error or "")


async def test_a_session_through_a_proxy_with_a_body_fault_is_relayed_as_it_is(start_proxy):
    from wirecap.faults import parse_fault

    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url, fault=[parse_fault("stall,ms=10")])

        def client():
            with open_client(ws_url(proxy)) as ws:
                ws.send("hello")
                return ws.recv(timeout=10)

        assert await in_thread(client) == "hello"
        exchange = await session_of(proxy)
    assert exchange.status == 101 and exchange.notes_of("fault") == []
