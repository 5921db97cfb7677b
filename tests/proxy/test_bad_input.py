"""Bad input from either side gets a clear answer and a capture record, and the proxy keeps serving."""

from __future__ import annotations

import json
import socket
import struct

import h11
import httpx
import pytest
import trio
from test_transparency import raw_request


async def ok_handler(ex):
    await ex.respond(200, b"fine")


async def assert_still_serving(proxy):
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proxy.url}/after")
    assert r.status_code == 200 and r.text == "fine"


async def read_until(port: int, request: bytes, marker: bytes) -> trio.SocketStream:
    """Send ``request`` to the proxy and read until ``marker`` arrives; the stream stays open."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    seen = b""
    while marker not in seen:
        seen += await stream.receive_some(65536)
    return stream


def json_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


async def test_malformed_request_gets_400_and_is_recorded(start_upstream, start_proxy):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(upstream=upstream.url)
    raw = await raw_request(proxy.port, b"THIS IS NOT HTTP\r\n\r\n")
    status, body = json_error(raw)
    assert status == 400 and body["error"]["type"] == "bad_request"
    await assert_still_serving(proxy)
    assert len(upstream.requests) == 1  # only the good one got through
    with await proxy.capture() as capture:
        bad = next(e for e in capture.exchanges() if e.outcome == "protocol_error")
    assert bad.request is not None and bad.request.head == b"THIS IS NOT HTTP\r\n\r\n"
    assert bad.status == 400 and bad.response is not None and bad.response.by == "proxy"


async def test_oversize_head_gets_431(start_upstream, start_proxy):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(upstream=upstream.url, max_head=4096)
    raw = await raw_request(
        proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
    )
    status, body = json_error(raw)
    assert status == 431 and "too" in body["error"]["type"]
    await assert_still_serving(proxy)


async def test_stalled_half_head_is_cut_off_without_blocking_others(start_upstream, start_proxy):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(upstream=upstream.url, timeouts={"client_head": 0.5})
    stalled = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stalled.send_all(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Le")
    # Other clients are served while that one stalls.
    await assert_still_serving(proxy)
    with trio.fail_after(5):
        answer = b""
        while chunk := await stalled.receive_some(65536):
            answer += chunk
    status, body = json_error(answer)
    assert status == 408 and body["error"]["type"] == "request_timeout"
    await stalled.aclose()


async def test_stalled_request_body_gets_408_and_cuts_the_upstream_request(
    start_upstream, start_proxy
):
    """A client that sends its head and then stops in the middle of the body gets a 408 after
    --body-timeout; the upstream's half-sent request is cut off, and the exchange is recorded as
    the client's abort with the reason."""
    upstream_saw = trio.Event()
    upstream_cut = trio.Event()

    async def reads_body(ex):
        if ex.request.target == "/after":
            return await ok_handler(ex)
        upstream_saw.set()
        try:
            await ex.read_body()
        except h11.RemoteProtocolError:  # the proxy closed the connection mid-body
            upstream_cut.set()

    upstream = await start_upstream(reads_body)
    proxy = await start_proxy(upstream=upstream.url, timeouts={"client_body": 0.3})
    stalled = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    await stalled.send_all(b'POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"a"')
    with trio.fail_after(10):
        await upstream_saw.wait()
        answer = b""
        while chunk := await stalled.receive_some(65536):
            answer += chunk
        await upstream_cut.wait()
    await stalled.aclose()
    status, body = json_error(answer)
    assert status == 408 and body["error"]["type"] == "request_timeout"
    assert "no request body bytes for 0.3s" in body["error"]["message"]
    await assert_still_serving(proxy)
    with await proxy.capture() as capture:
        stalled_exchange = next(e for e in capture.exchanges() if e.target == "/v1/chat")
    assert stalled_exchange.outcome == "client_abort" and stalled_exchange.status == 408
    assert stalled_exchange.end is not None
    assert "no request body bytes" in (stalled_exchange.end.error or "")
    assert stalled_exchange.request_body == b'{"a"'


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello",
    ],
    ids=["cl-and-te", "two-lengths", "list-of-lengths"],
)
async def test_smuggling_shapes_are_rejected_not_forwarded(start_upstream, start_proxy, head):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(upstream=upstream.url)
    status, body = json_error(await raw_request(proxy.port, head))
    assert status == 400
    assert "Content-Length" in body["error"]["message"]
    assert upstream.requests == [] and upstream.connections == 0
    await assert_still_serving(proxy)


async def test_unreachable_upstream_is_a_502_with_a_reason(start_proxy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    proxy = await start_proxy(upstream=f"http://127.0.0.1:{port}/")
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{proxy.url}/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["type"] == "upstream_unreachable"
    assert f"127.0.0.1:{port}" in error["message"] and "refused" in error["message"].lower()
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "upstream_error" and exchange.status == 502


async def test_a_502_the_proxy_made_keeps_the_connection_it_did_not_close(
    start_upstream, start_proxy
):
    """An answer the proxy makes itself without "Connection: close" leaves the connection open for
    the next request, as its head promises (a client pool reuses it)."""
    upstream = await start_upstream(ok_handler)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once the socket closes
    proxy = await start_proxy(routes=[f"/dead/=http://127.0.0.1:{dead}/", f"/={upstream.url}"])
    async with httpx.AsyncClient() as client:
        first = await client.get(f"{proxy.url}/dead/x")
        second = await client.get(f"{proxy.url}/after")
    assert first.status_code == 502 and "close" not in first.headers.get("connection", "")
    assert second.status_code == 200 and second.text == "fine"
    assert proxy.server.stats.connections == 1


async def test_upstream_timeout_is_a_504(start_upstream, start_proxy):
    async def slow(ex):
        await ex.read_body()
        await trio.sleep(5)

    upstream = await start_upstream(slow)
    proxy = await start_proxy(upstream=upstream.url, timeouts={"read": 0.3})
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proxy.url}/v1/models")
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "upstream_timeout"
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "timeout"


async def test_upstream_silent_mid_response_times_out(start_upstream, start_proxy):
    """The read timeout runs from the last byte received: an upstream that goes quiet after the
    head is cut off, the client's response ends short, and the exchange is a timeout."""

    async def stalls(ex):
        if ex.request.target == "/after":
            return await ok_handler(ex)
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        for n in range(12):  # 0.6 s in all, longer than the read timeout...
            await ex.send_data(b'data: {"n": %d}\n\n' % n)
            await trio.sleep(0.05)  # ...but a tenth of it between two chunks
        await trio.sleep(10)

    upstream = await start_upstream(stalls)
    proxy = await start_proxy(upstream=upstream.url, timeouts={"read": 0.5})
    got = b""
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("POST", f"{proxy.url}/v1/chat", json={}) as r:
                    async for data in r.aiter_raw():
                        got += data
    assert got.count(b"data:") == 12
    await assert_still_serving(proxy)
    with await proxy.capture() as capture:
        stalled = next(e for e in capture.exchanges() if e.target == "/v1/chat")
    assert stalled.outcome == "timeout"
    assert stalled.end is not None
    assert stalled.end.error == "upstream sent nothing for 0.5s mid-response"


async def test_idle_keepalive_connection_is_closed_after_its_timeout(start_upstream, start_proxy):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(upstream=upstream.url, timeouts={"keepalive": 0.8})
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(10):
        stream = await read_until(proxy.port, request, b"fine")
        await trio.sleep(0.2)  # idle, but within the timeout: still served
        await stream.send_all(request)
        seen = b""
        while b"fine" not in seen:
            seen += await stream.receive_some(65536)
        started = trio.current_time()
        assert await stream.receive_some(65536) == b""  # the proxy closed it
        assert trio.current_time() - started >= 0.6
        await stream.aclose()
    await assert_still_serving(proxy)
    with await proxy.capture() as capture:
        assert [e.outcome for e in capture.exchanges()] == ["ok"] * 3  # the close is no exchange


async def test_shutdown_closes_idle_keepalive_connections_at_once(start_upstream, start_proxy):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(upstream=upstream.url)  # keep-alive timeout: minutes
    with trio.fail_after(5):
        stream = await read_until(
            proxy.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", b"fine"
        )
        await proxy.stop()
        assert await stream.receive_some(65536) == b""
        await stream.aclose()


async def test_upstream_reset_mid_stream_ends_client_response(start_upstream, start_proxy):
    async def resets(ex):
        if ex.request.target == "/after":
            return await ok_handler(ex)
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        await ex.send_data(b'data: {"n": 0}\n\n')
        await trio.sleep(0.05)
        sock = ex.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST

    upstream = await start_upstream(resets)
    proxy = await start_proxy(upstream=upstream.url)
    got = b""
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream(
                    "POST", f"{proxy.url}/v1/chat", json={"stream": True}
                ) as r:
                    async for data in r.aiter_raw():
                        got += data
    assert got == b'data: {"n": 0}\n\n'
    await assert_still_serving(proxy)
    with await proxy.capture() as capture:
        broken = next(e for e in capture.exchanges() if e.target == "/v1/chat")
    assert broken.outcome == "upstream_error"
    assert broken.response_body == b'data: {"n": 0}\n\n'


async def test_client_disconnect_mid_stream_is_client_abort(start_upstream, start_proxy):
    upstream_done = trio.Event()

    async def endless(ex):
        if ex.request.target == "/after":
            return await ok_handler(ex)
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        try:
            for i in range(1000):
                await ex.send_data(f"data: {i}\n\n".encode())
                await trio.sleep(0.01)
        finally:
            upstream_done.set()

    upstream = await start_upstream(endless)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(10):
        stream = await read_until(
            proxy.port, b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n", b"data: 0"
        )
        await stream.aclose()
        await upstream_done.wait()  # the proxy dropped the upstream too, promptly
    await assert_still_serving(proxy)
    with await proxy.capture() as capture:
        aborted = next(e for e in capture.exchanges() if e.target == "/v1/stream")
    assert aborted.outcome == "client_abort"
    assert aborted.response_body.startswith(b"data: 0\n\n")


async def test_client_hanging_up_while_the_upstream_is_silent_drops_the_upstream(
    start_upstream, start_proxy
):
    """A long generation with nothing to relay: only the watcher the proxy starts for slow exchanges
    can see the client leave (there is no write to fail)."""
    upstream_dropped = trio.Event()

    async def thinking(ex):
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        # Silent until the proxy closes the connection.
        assert await ex.stream.receive_some(1) == b""
        upstream_dropped.set()

    upstream = await start_upstream(thinking)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(10):
        stream = await read_until(
            proxy.port, b"GET /v1/think HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n"
        )
        await trio.sleep(0.2)  # longer than the watcher delay
        started = trio.current_time()
        await stream.aclose()
        await upstream_dropped.wait()
        # One second of grace for a client that hangs up right after the last byte, then the abort.
        assert trio.current_time() - started < 3
    with await proxy.capture() as capture:
        [aborted] = list(capture.exchanges())
    assert aborted.outcome == "client_abort"


async def test_unknown_route_is_a_404_naming_the_routes(start_upstream, start_proxy):
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(routes=[f"/openai={upstream.url}"])
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{proxy.url}/elsewhere/v1", json={"a": 1})
        assert r.status_code == 404
        assert r.json()["error"]["routes"] == ["/openai"]
        ok = await client.get(f"{proxy.url}/openai/after")
        assert ok.status_code == 200
    assert proxy.server.stats.connections == 1  # the 404 kept the connection open


async def test_client_that_hangs_up_after_the_last_event_is_not_an_abort(
    start_upstream, start_proxy
):
    """SDKs stop reading at ``data: [DONE]`` and close before the chunked terminator arrives."""

    async def stream(ex):
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        await ex.send_data(b'data: {"n": 1}\n\n')
        await ex.send_data(b"data: [DONE]\n\n")
        await trio.sleep(0.2)  # the end of message comes late
        await ex.end()

    upstream = await start_upstream(stream)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(10):
        s = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await s.send_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        seen = b""
        while b"[DONE]" not in seen:
            seen += await s.receive_some(65536)
        await s.aclose()
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "ok"
    assert exchange.response_body == b'data: {"n": 1}\n\ndata: [DONE]\n\n'


async def test_a_head_request_answered_by_the_proxy_gets_no_body(start_upstream, start_proxy):
    """The proxy's own answer to a HEAD says how long its body would be and sends none: the
    connection goes on with the next request."""
    upstream = await start_upstream(ok_handler)
    proxy = await start_proxy(routes=[f"/api={upstream.url}"])
    requests = b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /nope2 HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(requests)
            received = b""
            while received.count(b"HTTP/1.1 404") < 2 or not received.endswith(b"}}"):
                received += await stream.receive_some(65536)
    first, _, second = received.partition(b"\r\n\r\n")
    assert b"Content-Length: " in first and second.startswith(b"HTTP/1.1 404 ")
    assert b"/nope2" in second and b'"/nope"' not in received
