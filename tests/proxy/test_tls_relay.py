"""A TLS upstream (trio's SSLStream over the relay's TCP stream): a pooled connection the upstream
closed is not reused, and big bodies cross both ways while a helper task pumps the request body
and the exchange reads the answer. Plus pipelined requests with bodies on one client connection."""

from __future__ import annotations

import hashlib
import ssl

import httpx
import trio
import trustme

BIG = bytes(range(256)) * 16384  # 4 MiB


def _tls(tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, ca_file


async def test_a_tls_connection_the_upstream_closed_is_not_reused(
    start_upstream, start_proxy, tmp_path
):
    server_context, ca_file = _tls(tmp_path)
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
    server_context, ca_file = _tls(tmp_path)

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


async def test_pipelined_requests_with_bodies_are_answered_in_order(start_upstream, start_proxy):
    async def echo(ex):
        body = await ex.read_body()
        await ex.respond(200, ex.request.target.encode() + b":" + body)

    upstream = await start_upstream(echo)
    proxy = await start_proxy(upstream=upstream.url)
    requests = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nb%02d" % (i, i)
        for i in range(20)
    )
    requests += b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = b""
    with trio.fail_after(30):
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
            await stream.send_all(requests)
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 21
    positions = [answer.index(b"/%d:b%02d" % (i, i)) for i in range(20)]
    assert positions == sorted(positions)
