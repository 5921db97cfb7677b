"""End to end: real clients -> the real proxy -> a real trio upstream, all on 127.0.0.1."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import ssl
import time

import h11
import httpx
import pytest
import trio
import trustme

from wirecap.capture import open_capture, strip_proxy_path
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.capture.writer import CaptureWriter

#: 4 MiB of every byte value in turn, for bodies checked end to end.
BIG = bytes(range(256)) * 16384


async def raw_request(
    port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 10
) -> bytes:
    """Send raw bytes to the proxy and return everything it answers until it closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = bytearray()
            while read_until_close:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
            return bytes(received)


def tls_upstream(tmp_path):
    """A server context with a certificate for localhost, and the file of the CA that issued it."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, ca_file


async def echo_target_and_body(ex):
    """Answers with the request's target and body, so that an answer names its request."""
    body = await ex.read_body()
    await ex.respond(200, ex.request.target.encode() + b":" + body)


async def proxy_before_raw_answer(start_upstream, start_proxy, answer: bytes):
    """A proxy in front of an upstream that reads each request and sends ``answer`` as it is."""

    async def handler(ex):
        await ex.read_body()
        await ex.send_raw(answer)

    upstream = await start_upstream(handler)
    return await start_proxy(upstream=upstream.url)


async def test_json_round_trip_is_byte_exact_and_captured(start_upstream, start_proxy):
    response_body = json.dumps(
        {"id": "chatcmpl-1", "choices": [{"message": {"content": "héllo"}}]}
    ).encode()

    async def handler(ex):
        body = await ex.read_body()
        assert json.loads(body)["model"] == "gpt-test"
        await ex.respond(
            200, response_body, [("Content-Type", "application/json"), ("X-Request-ID", "req-42")]
        )

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    request_body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{proxy.url}/v1/chat/completions?x=1",
            content=request_body,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 200
    assert r.content == response_body
    assert r.headers["x-request-id"] == "req-42"
    assert upstream.requests[0].target == "/v1/chat/completions?x=1"
    assert upstream.requests[0].body == request_body

    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.request_body == request_body
    assert exchange.response_body == response_body
    assert exchange.status == 200 and exchange.outcome == "ok"
    assert exchange.request is not None and exchange.request.head.startswith(
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
    )
    assert exchange.request.head.endswith(b"\r\n\r\n")
    assert exchange.response is not None and exchange.response.head.startswith(b"HTTP/1.1 200 \r\n")
    assert b"X-Request-ID: req-42\r\n" in exchange.response.head
    assert exchange.end is not None
    assert exchange.end.req_bytes == len(request_body) and exchange.end.res_bytes == len(
        response_body
    )
    # the upstream head as recorded, minus the X-Proxy-Path line, is what the upstream received
    assert exchange.upstream_wire_head is not None
    assert b"".join(upstream.raw_received).startswith(exchange.upstream_wire_head)


@pytest.mark.parametrize(
    ("content_type", "chunks"),
    [
        (
            "text/event-stream",
            [f'data: {{"n": {i}}}\n\n'.encode() for i in range(8)] + [b"data: [DONE]\n\n"],
        ),
        (
            "application/x-ndjson",
            [f'{{"n": {i}, "done": false}}\n'.encode() for i in range(8)] + [b'{"done": true}\n'],
        ),
    ],
)
async def test_stream_chunks_reach_client_before_upstream_sends_next(
    start_upstream, start_proxy, content_type, chunks
):
    received = [trio.Event() for _ in chunks]

    async def handler(ex):
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", content_type)])
        for i, chunk in enumerate(chunks):
            if i:
                # The next chunk goes out only once the client holds the previous one: a proxy that
                # buffers the stream deadlocks here and the test fails on its deadline.
                await received[i - 1].wait()
            await ex.send_data(chunk)
        await ex.end()

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    got = bytearray()
    boundaries = []
    with trio.fail_after(10):
        async with (
            httpx.AsyncClient() as client,
            client.stream("POST", f"{proxy.url}/v1/stream", json={"stream": True}) as r,
        ):
            assert r.headers["content-type"] == content_type
            async for data in r.aiter_raw():
                got += data
                while len(boundaries) < len(chunks) and len(got) >= sum(
                    map(len, chunks[: len(boundaries) + 1])
                ):
                    received[len(boundaries)].set()
                    boundaries.append(len(got))
    assert bytes(got) == b"".join(chunks)

    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    recorded = exchange.response_chunks
    assert [c.data for c in recorded] == chunks  # one record per upstream write, in order
    assert all(a.ns <= b.ns for a, b in itertools.pairwise(recorded))


async def test_keepalive_on_both_sides_with_a_pool_per_upstream(start_upstream, start_proxy):
    async def handler(ex):
        await ex.respond(200, ex.request.target.encode())

    up_a = await start_upstream(handler)
    up_b = await start_upstream(handler)
    proxy = await start_proxy(routes=[f"/a={up_a.url}", f"/b={up_b.url}"])
    async with httpx.AsyncClient() as client:
        for i in range(5):
            ra = await client.get(f"{proxy.url}/a/{i}")
            rb = await client.get(f"{proxy.url}/b/{i}")
            assert (ra.text, rb.text) == (f"/{i}", f"/{i}")
    assert proxy.server.stats.connections == 1  # client side: one connection for ten requests
    assert (up_a.connections, up_b.connections) == (
        1,
        1,
    )  # upstream side: one pooled connection each
    assert len(up_a.requests) == len(up_b.requests) == 5


async def test_chunked_and_content_length_bodies_both_ways(start_upstream, start_proxy):
    async def handler(ex):
        body = await ex.read_body()
        if ex.request.target == "/chunked":
            await ex.send_head(200, [("Transfer-Encoding", "chunked")])
            for i in range(0, len(body), 1000):
                await ex.send_data(body[i : i + 1000])
            await ex.end()
        else:
            await ex.respond(200, body)

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    payload = bytes(range(256)) * 40

    async def chunked_body():
        for i in range(0, len(payload), 3000):
            yield payload[i : i + 3000]

    async with httpx.AsyncClient() as client:
        r1 = await client.post(f"{proxy.url}/chunked", content=chunked_body())
        r2 = await client.post(f"{proxy.url}/length", content=payload)
    assert r1.content == payload and r1.headers["transfer-encoding"] == "chunked"
    assert r2.content == payload and r2.headers["content-length"] == str(len(payload))
    assert upstream.requests[0].header("transfer-encoding") == b"chunked"
    assert upstream.requests[1].header("content-length") == str(len(payload)).encode()
    with await proxy.capture() as capture:
        exchanges = list(capture.exchanges())
    assert [e.request_body for e in exchanges] == [payload, payload]
    assert [e.response_body for e in exchanges] == [payload, payload]


async def test_expect_100_continue(start_upstream, start_proxy):
    async def handler(ex):
        assert ex.request.header("expect") == b"100-continue"
        await ex.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = await ex.read_body()
        await ex.respond(200, b"got " + body)

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")  # the body is sent only after the 100
            await stream.send_all(b"hello")
            rest = b""
            while chunk := await stream.receive_some(65536):
                rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"got hello")
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert [h.status for h in exchange.responses] == [100, 200]


async def test_head_204_304_and_1xx(start_upstream, start_proxy):
    async def handler(ex):
        await ex.read_body()
        if ex.request.method == "HEAD":
            await ex.send_head(
                200, [("Content-Length", "1234"), ("Content-Type", "application/json")]
            )
        elif ex.request.target == "/204":
            await ex.send_head(204, [])
        elif ex.request.target == "/304":
            await ex.send_head(304, [("ETag", '"abc"')])
        else:
            await ex.send(
                h11.InformationalResponse(
                    status_code=103, headers=[("Link", "</style.css>; rel=preload")]
                )
            )
            await ex.send_head(200, [("Content-Length", "2")])
            await ex.send_data(b"ok")
        await ex.end()

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        head = await client.head(f"{proxy.url}/model")
        assert (
            head.status_code == 200
            and head.headers["content-length"] == "1234"
            and head.content == b""
        )
        assert (await client.get(f"{proxy.url}/204")).status_code == 204
        r304 = await client.get(f"{proxy.url}/304")
        assert r304.status_code == 304 and r304.headers["etag"] == '"abc"'
        # the connection survived all three bodiless responses
        assert proxy.server.stats.connections == 1
    raw = await raw_request(
        proxy.port, b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 103 ")
    assert b"Link: </style.css>; rel=preload\r\n" in raw
    assert b"HTTP/1.1 200 " in raw and raw.endswith(b"ok")


async def test_close_delimited_response(start_upstream, start_proxy):
    async def handler(ex):
        await ex.read_body()
        await ex.send_raw(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await trio.sleep(0.01)
        await ex.send_raw(b"part two")
        await ex.stream.aclose()

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proxy.url}/legacy")
    assert r.status_code == 200 and r.text == "part one, part two"
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "ok"
    assert (
        exchange.response is not None
        and exchange.response.head == b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    )


async def test_https_upstream(start_upstream, start_proxy, tmp_path):
    server_context, ca_file = tls_upstream(tmp_path)

    async def handler(ex):
        await ex.respond(200, b'{"secure": true}', [("Content-Type", "application/json")])

    upstream = await start_upstream(handler, server_context)
    proxy = await start_proxy(upstream=upstream.url, upstream_ca=ca_file)
    async with httpx.AsyncClient() as client:
        r1 = await client.get(f"{proxy.url}/v1/models")
        r2 = await client.get(f"{proxy.url}/v1/models")
    assert r1.json() == r2.json() == {"secure": True}
    assert upstream.connections == 1  # the TLS connection is pooled too
    with await proxy.capture() as capture:
        exchanges = list(capture.exchanges())
    assert exchanges[0].upstream_url == f"https://localhost:{upstream.port}/v1/models"
    assert exchanges[0].upstream is not None
    assert strip_proxy_path(exchanges[0].upstream.head).startswith(
        b"GET /v1/models HTTP/1.1\r\nHost: localhost:"
    )


async def test_https_upstream_with_untrusted_certificate_is_a_502(
    start_upstream, start_proxy, tmp_path
):
    server_context, _ca_file = tls_upstream(tmp_path)  # the proxy is not told of the CA

    async def handler(ex):
        await ex.respond(200, b"never")

    upstream = await start_upstream(handler, server_context)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proxy.url}/v1/models")
    assert r.status_code == 502
    assert "certificate" in r.json()["error"]["message"]


async def test_large_body_is_streamed_not_buffered(start_upstream, start_proxy):
    """The upstream can only run ahead of a slow client by socket buffers and one read, never by
    the whole body: a buffering proxy would let it finish long before the client reads."""
    chunk = bytes(range(256)) * 256  # 64 KiB
    total_chunks = 512  # 32 MiB
    sent = 0
    max_lead = 0
    client_received = 0

    async def handler(ex):
        nonlocal sent, max_lead
        await ex.read_body()
        await ex.send_head(200, [("Content-Length", str(len(chunk) * total_chunks))])
        for _ in range(total_chunks):
            await ex.send_data(chunk)
            sent += len(chunk)
            max_lead = max(max_lead, sent - client_received)
        await ex.end()

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(60):
        async with httpx.AsyncClient() as client, client.stream("GET", f"{proxy.url}/big") as r:
            async for data in r.aiter_raw():
                client_received += len(data)
                await trio.sleep(0.001)  # a slow reader
    assert client_received == len(chunk) * total_chunks
    assert max_lead < 16 * 1024 * 1024, max_lead


async def test_pipelined_requests_are_answered_in_order(start_upstream, start_proxy):
    upstream = await start_upstream(echo_target_and_body)
    proxy = await start_proxy(upstream=upstream.url)
    both = (
        b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
        b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nB"
    )
    raw = await raw_request(proxy.port, both)
    assert raw.count(b"HTTP/1.1 200 ") == 2
    assert raw.index(b"/one:A") < raw.index(b"/two:B")
    with await proxy.capture() as capture:
        heads = [e.request.head for e in capture.exchanges()]
    assert heads == [
        b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
        b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
    ]


async def test_twenty_pipelined_requests_with_bodies_are_answered_in_order(
    start_upstream, start_proxy
):
    upstream = await start_upstream(echo_target_and_body)
    proxy = await start_proxy(upstream=upstream.url)
    requests = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nb%02d" % (i, i)
        for i in range(20)
    )
    requests += b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw_request(proxy.port, requests, timeout=30)
    assert answer.count(b"HTTP/1.1 200 ") == 21
    positions = [answer.index(b"/%d:b%02d" % (i, i)) for i in range(20)]
    assert positions == sorted(positions)


async def test_pool_drops_connections_the_upstream_closed(start_upstream, start_proxy):
    async def closes_after_each(ex):
        await ex.respond(200, b"ok")
        await ex.stream.aclose()  # like an upstream whose keep-alive timeout expired

    upstream = await start_upstream(closes_after_each)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            r = await client.get(f"{proxy.url}/x")
            assert r.status_code == 200
            await trio.sleep(0.05)
    assert upstream.connections == 3


async def test_a_tls_connection_the_upstream_closed_is_not_reused(
    start_upstream, start_proxy, tmp_path
):
    server_context, ca_file = tls_upstream(tmp_path)
    closed = trio.Semaphore(0)

    async def closes_after_each(ex):
        await ex.respond(200, b"ok")
        await ex.stream.aclose()  # close_notify, then FIN: an idle timeout of the upstream's
        closed.release()

    upstream = await start_upstream(closes_after_each, server_context)
    proxy = await start_proxy(upstream=upstream.url, upstream_ca=ca_file)
    with trio.fail_after(30):
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.get(f"{proxy.url}/x")
                assert r.status_code == 200 and r.content == b"ok"
                await closed.acquire()
    assert upstream.connections == 3


async def test_big_bodies_cross_a_tls_upstream_both_ways_on_one_connection(
    start_upstream, start_proxy, tmp_path
):
    server_context, ca_file = tls_upstream(tmp_path)

    async def digest_then_big(ex):
        body = await ex.read_body()
        await ex.send_head(200, [("Content-Type", "application/octet-stream")])
        await ex.send_data(hashlib.sha256(body).hexdigest().encode() + b"\n")
        for i in range(0, len(BIG), 100_000):
            await ex.send_data(BIG[i : i + 100_000])
        await ex.end()

    upstream = await start_upstream(digest_then_big, server_context)
    proxy = await start_proxy(upstream=upstream.url, upstream_ca=ca_file)

    async def request_body():
        for i in range(0, len(BIG), 50_000):
            yield BIG[i : i + 50_000]
            await trio.sleep(0)

    expected = hashlib.sha256(BIG).hexdigest().encode() + b"\n" + BIG
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(3):
                r = await client.post(f"{proxy.url}/x", content=request_body())
                assert r.status_code == 200 and r.content == expected
    assert upstream.connections == 1


async def test_exchange_clock_starts_at_the_request_not_the_idle_connection(
    start_upstream, start_proxy
):
    async def handler(ex):
        await ex.respond(200, b"ok")

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        await client.get(f"{proxy.url}/first")
        await trio.sleep(0.5)  # the keep-alive connection sits idle
        sent = time.perf_counter_ns()
        await client.get(f"{proxy.url}/second")
        seen_by_client = time.perf_counter_ns() - sent
    with await proxy.capture() as capture:
        first, second = list(capture.exchanges())
    # The proxy's clock ran within the client's: the idle half second before is not in it.
    assert second.duration_ns is not None and second.duration_ns <= seen_by_client
    assert second.wall_ns - first.wall_ns >= 0.5e9


async def test_http10_client_gets_a_chunked_answer_unchunked_and_a_close(
    start_upstream, start_proxy
):
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\ndata: 1\r\n7\r\ndata: 2\r\n0\r\n\r\n"
    )
    proxy = await proxy_before_raw_answer(start_upstream, start_proxy, answer)
    raw = await raw_request(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"data: 1data: 2"  # the payload, delimited by the close
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "ok" and exchange.response_body == b"data: 1data: 2"


async def test_chunked_answer_is_forwarded_with_its_framing_untouched(start_upstream, start_proxy):
    chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"

    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    proxy = await proxy_before_raw_answer(start_upstream, start_proxy, answer)
    raw = await raw_request(proxy.port, b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n" + chunked)  # extensions and trailer as the upstream sent them
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.response_body == b"hello world"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"HTTP/1.1 700 Beyond\r\nContent-Length: 2\r\n\r\nhi",  # not an interim response
        b"HTTP/1.1 999 Beyond\r\n\r\n",
    ],
)
async def test_malformed_upstream_answers_are_a_502(start_upstream, start_proxy, answer):
    proxy = await proxy_before_raw_answer(start_upstream, start_proxy, answer)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{proxy.url}/bad")
    assert r.status_code == 502 and r.json()["error"]["source"] == "wirecap"
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "upstream_error"
    assert exchange.response is not None and exchange.response.by == "proxy"


async def test_connect_is_refused_and_never_reaches_a_pooled_connection(
    start_upstream, start_proxy
):
    """A CONNECT gets 501: no 2xx answer to it can turn a pooled upstream connection into a
    tunnel that the next client's request would be written into."""

    async def handler(ex):
        await ex.read_body()
        await ex.respond(200, b"ok")

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    raw = await raw_request(proxy.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 501 ")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{proxy.url}/after")).content == b"ok"
    assert [r.target for r in upstream.requests] == ["/after"]


async def test_malformed_chunk_after_the_head_cuts_the_client_connection(
    start_upstream, start_proxy
):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    proxy = await proxy_before_raw_answer(start_upstream, start_proxy, answer)
    raw = await raw_request(proxy.port, b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n")
    # The head and the good chunk were relayed, never the bad line; then the connection closes
    # without a last chunk.
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.rstrip().endswith(b"5\r\nhello")
    assert b"zz" not in raw
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.outcome == "upstream_error" and "chunk" in (exchange.end.error or "")


async def test_upstream_answering_before_reading_the_body_is_relayed(start_upstream, start_proxy):
    async def handler(ex):
        # Answer first, then drain the body (a lingering close, as real servers do).
        await ex.send_raw(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
            b"too large"
        )
        await trio.sleep(2)  # not reading: the client cannot finish sending meanwhile
        await ex.read_body()

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    size = 32 * 1024 * 1024
    received = bytearray()
    body_sent = trio.Event()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream, trio.open_nursery() as nursery:

            async def send_body() -> None:
                await stream.send_all(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                )
                for _ in range(size // 65536):
                    await stream.send_all(b"x" * 65536)
                body_sent.set()

            nursery.start_soon(send_body)
            while not received.endswith(b"too large"):
                chunk = await stream.receive_some(65536)
                assert chunk, f"connection closed after {bytes(received)!r}"
                received += chunk
            assert not body_sent.is_set()  # the answer came while the body was still on its way
            nursery.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")


async def test_big_bodies_go_through_the_capture_ring_whole_several_at_once(
    start_upstream, start_proxy, tmp_path
):
    """Four big response bodies at once (with a length, or ending with the connection), the clients
    reading at different paces, through a capture writer whose buffer holds a fraction of one: the
    relays wait for room, and the clients and the capture get every byte."""
    bodies = {f"/b{i}": os.urandom(2 * 2**20 + i * 7777) for i in range(4)}

    async def handler(ex):
        await ex.read_body()
        body = bodies[ex.request.target]
        if ex.request.target != "/b3":
            await ex.respond(200, body)
            return
        await ex.send_raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # no length
        for i in range(0, len(body), 50_000):
            await ex.send_raw(body[i : i + 50_000])
        await ex.stream.aclose()

    out = tmp_path / "ring"
    out.mkdir()
    writer = CaptureWriter(SegmentSink(out, SegmentHeader({})), max_bytes=256 * 1024)
    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url, writer=writer)
    received = {}

    async def fetch(client: httpx.AsyncClient, path: str, pause: float) -> None:
        async with client.stream("GET", f"{proxy.url}{path}") as r:
            data = bytearray()
            async for chunk in r.aiter_raw():
                data += chunk
                await trio.sleep(pause)
        received[path] = bytes(data)

    with trio.fail_after(60):
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            for i, path in enumerate(bodies):
                nursery.start_soon(fetch, client, path, i * 0.0005)
        await proxy.stop()
    assert received == bodies
    with open_capture(out) as capture:
        captured = {e.target: e.response_body for e in capture.exchanges()}
    assert captured == bodies


async def test_a_pooled_connection_above_descriptor_1024_is_reused(start_upstream, start_proxy):
    """A busy proxy holds thousands of sockets: checking an idle pooled one must work whatever
    its descriptor number (``select`` takes none of 1024 or more)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("cannot open 1,200 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.dup(0) for _ in range(1100)]  # the next sockets get descriptors above 1024
    try:

        async def handler(ex):
            await ex.respond(200, b"ok")

        upstream = await start_upstream(handler)
        proxy = await start_proxy(upstream=upstream.url)
        async with httpx.AsyncClient() as client:
            statuses = [(await client.get(f"{proxy.url}/x")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert upstream.connections == 1  # the pooled connection was checked and reused
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
