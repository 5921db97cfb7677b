"""Shipping and collecting through a real nats-server, with faults: exact counts.

Proxies run in the test (real sockets on 127.0.0.1) and rotate their segments every second;
shippers and collectors run as the processes users start. Every test sends requests through the
proxies, reads the exchange ids the proxies captured (what the clients completed), and checks
that the central capture holds each of them exactly once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import trio
from natsfleet import HANG_GUARD, exchange_ids, wait_for_ids

from wirecap.capture import open_capture
from wirecap.fleet.config import default_source
from wirecap.fleet.source import Position

pytestmark = pytest.mark.slow
ANSWER = b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}}]}'


async def answer(exchange):
    await exchange.respond(200, ANSWER, [("Content-Type", "application/json")])


async def send_requests(port: int, count: int) -> None:
    """``count`` requests through the proxy at ``port``, each on its own connection; each must
    get its 200."""
    for i in range(count):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        body = b'{"model": "m", "n": %d}' % i
        await stream.send_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        seen = b""
        while chunk := await stream.receive_some(65536):
            seen += chunk
        await stream.aclose()
        assert seen.startswith(b"HTTP/1.1 200"), seen[:100]


async def start_proxies(start_upstream, start_proxy, count: int):
    upstream = await start_upstream(answer)
    return [
        await start_proxy(upstream=upstream.url, rotate_seconds=1.0, log_format="quiet")
        for _ in range(count)
    ]


def ship(children, proxy, server, source: str):
    return children("ship", str(proxy.out), "--to", server.url, "--source", source)


def collect(children, server, central, *extra: str):
    return children("collect", server.url, "--out", str(central), "--ack-wait", "2", *extra)


async def finish(proxies, central, collectors) -> list[str]:
    """Stop the proxies (their files get their index), wait until the central capture holds what
    they captured, stop the collectors; the ids the proxies captured."""
    for proxy in proxies:
        await proxy.stop()
    expected = exchange_ids(*(p.out for p in proxies))
    await wait_for_ids(central, set(expected))
    for collector in collectors:
        assert await collector.stop() == 0, collector.output()
    return expected


def assert_exactly_once(central, expected: list[str]) -> None:
    found = exchange_ids(central)
    assert len(set(expected)) == len(expected)
    assert sorted(found) == sorted(expected)  # every one, none twice
    with open_capture(central) as capture:
        assert all(f.indexed for f in capture.files)  # each central file got its index
        assert not capture.scan_damage()
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in central.glob("*.cbor.zst"))


async def test_three_proxies_ship_at_once_to_two_collectors(
    nats_server, children, start_upstream, start_proxy, tmp_path
):
    central = tmp_path / "central"
    proxies = await start_proxies(start_upstream, start_proxy, 3)
    shippers = [ship(children, p, nats_server, f"proxy{i}") for i, p in enumerate(proxies)]
    collectors = [collect(children, nats_server, central, "--batch", "8") for _ in range(2)]
    async with trio.open_nursery() as nursery:
        for proxy in proxies:
            nursery.start_soon(send_requests, proxy.port, 40)
    expected = await finish(proxies, central, collectors)
    assert len(expected) == 120
    assert_exactly_once(central, expected)
    sources = {p.name.split("~")[0] for p in central.glob("*.cbor.zst")}
    assert sources == {"proxy0", "proxy1", "proxy2"}
    for shipper in shippers:
        assert await shipper.stop() == 0


async def test_nats_server_killed_and_restarted_mid_traffic(
    nats_server, children, start_upstream, start_proxy, tmp_path
):
    central = tmp_path / "central"
    (proxy,) = await start_proxies(start_upstream, start_proxy, 1)
    shipper = ship(children, proxy, nats_server, "web")
    collector = collect(children, nats_server, central)
    await send_requests(proxy.port, 20)
    await wait_for_ids(central, set(exchange_ids(proxy.out)))
    await nats_server.kill()
    await send_requests(proxy.port, 20)  # the proxy never waits on NATS
    await trio.sleep(1)  # the shipper meets the outage (not needed for the result)
    await nats_server.start()
    await send_requests(proxy.port, 20)
    expected = await finish([proxy], central, [collector])
    assert len(expected) == 60
    assert_exactly_once(central, expected)
    assert await shipper.stop() == 0
    assert "lost the connection to NATS" in shipper.output()  # it did meet the outage
    assert "Traceback" not in shipper.output() + collector.output()


async def test_shipper_killed_and_restarted(
    nats_server, children, start_upstream, start_proxy, tmp_path
):
    central = tmp_path / "central"
    (proxy,) = await start_proxies(start_upstream, start_proxy, 1)
    shipper = ship(children, proxy, nats_server, "web")
    collector = collect(children, nats_server, central)
    await send_requests(proxy.port, 20)
    await wait_for_ids(central, set(exchange_ids(proxy.out)))
    await shipper.stop(signal.SIGKILL)
    position = Position.load(Position.file_for(proxy.out, "web"))
    assert position.offsets  # it saved where it was
    await send_requests(proxy.port, 20)
    shipper = ship(children, proxy, nats_server, "web")
    await send_requests(proxy.port, 20)
    expected = await finish([proxy], central, [collector])
    assert len(expected) == 60
    assert_exactly_once(central, expected)
    assert await shipper.stop() == 0


async def test_collector_killed_and_restarted(
    nats_server, children, start_upstream, start_proxy, tmp_path
):
    central = tmp_path / "central"
    (proxy,) = await start_proxies(start_upstream, start_proxy, 1)
    shipper = ship(children, proxy, nats_server, "web")
    collector = collect(children, nats_server, central, "--batch", "4")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_requests, proxy.port, 40)
        await wait_for_ids(central, set(exchange_ids(proxy.out)[:5]))
        await collector.stop(signal.SIGKILL)  # mid-traffic, possibly between write and ack
    await send_requests(proxy.port, 20)
    collector = collect(children, nats_server, central, "--batch", "4")
    expected = await finish([proxy], central, [collector])
    assert len(expected) == 60
    assert_exactly_once(central, expected)
    assert await shipper.stop() == 0


async def test_proxy_ship_runs_a_shipper_beside_the_proxy(
    nats_server, children, start_upstream, tmp_path
):
    central, captures = tmp_path / "central", tmp_path / "captures"
    upstream = await start_upstream(answer)
    collector = collect(children, nats_server, central)
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "wirecap", "proxy", "--listen", "127.0.0.1:0", "--quiet"),
            *("--upstream", upstream.url, "--out", str(captures), "--ship", nats_server.url),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    banner = b""
    with trio.fail_after(HANG_GUARD):
        while (match := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", banner)) is None:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, banner
            banner += chunk
    await send_requests(int(match.group(1)), 10)
    await wait_for_ids(central, set(exchange_ids(captures)))  # shipped while the proxy runs
    process.send_signal(signal.SIGINT)
    with trio.fail_after(HANG_GUARD):
        assert await process.wait() == 0
    expected = exchange_ids(captures)
    assert await collector.stop() == 0
    assert len(expected) == 10
    assert_exactly_once(central, expected)
    assert Position.file_for(captures, default_source()).is_file()  # the shipper's position
