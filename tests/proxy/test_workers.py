"""``wirecap proxy --workers N``: real worker processes behind one socket, driven through the CLI.

Which worker takes a connection is the kernel's choice, so no test depends on it: each asserts what
holds whatever the split (every exchange relayed and captured once, sums, exit statuses)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from wirecap.capture import open_capture
from wirecap.proxy.workers import merged_metrics

LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+) \((\d+) worker processes\)")
ADMIN = re.compile(rb"admin on (http://127\.0\.0\.1:\d+)")


class Workers:
    """A ``wirecap proxy --workers`` run in a session of its own (a Ctrl-C can reach its group)."""

    def __init__(self, process: trio.Process, log: bytes) -> None:
        self.process = process
        self.log = log
        match = LISTENING.search(log)
        assert match is not None
        self.port = int(match.group(1))
        admin = ADMIN.search(log)
        self.admin = admin.group(1).decode() if admin else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)

    async def finish(self, signum: int | None = signal.SIGINT) -> str:
        """Signal the supervisor (unless ``signum`` is None), read its log to the end, wait."""
        if signum is not None:
            self.process.send_signal(signum)
        with trio.fail_after(60):
            while chunk := await self.process.stderr.receive_some(65536):
                self.log += chunk
            await self.process.wait()
        return self.log.decode()


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


async def start_workers(tmp_path: Path, upstream_url: str, *extra: str, count: int = 2) -> Workers:
    command = [sys.executable, "-m", "wirecap", "proxy", "--workers", str(count), "--quiet"]
    command += ["--listen", "127.0.0.1:0", "--upstream", upstream_url]
    command += ["--out", str(tmp_path / "c"), *extra]
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True
    )
    log = b""
    last = b"admin on" if "--admin" in extra else b"capturing to"
    with trio.fail_after(60):
        while last not in log:
            chunk = await process.stderr.receive_some(65536)
            assert chunk, log.decode()
            log += chunk
    return Workers(process, log)


async def echo(exchange) -> None:
    body = await exchange.read_body()
    await exchange.respond(200, b'{"echo":' + body + b"}", [("Content-Type", "application/json")])


async def post_each_on_its_own_connection(url: str, count: int) -> list[httpx.Response]:
    responses = []
    for i in range(count):
        async with httpx.AsyncClient() as client:  # a new connection: any worker may take it
            responses.append(await client.post(url + "/v1/chat", content=b"%d" % i))
    return responses


async def test_every_exchange_is_relayed_and_captured_once(start_upstream, tmp_path):
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url)
    assert len(workers.worker_pids()) == 2
    responses = await post_each_on_its_own_connection(workers.url, 40)
    assert [r.json() for r in responses] == [{"echo": i} for i in range(40)]
    log = await workers.finish()
    assert workers.process.returncode == 0, log
    assert "wirecap: 40 exchanges; capture: " in log
    files = sorted((tmp_path / "c").iterdir())
    pids = {int(f.name.split("-")[2]) for f in files}
    assert len(files) == 2 and len(pids) == 2, files  # a writer, and its own file, per worker
    with open_capture(tmp_path / "c") as capture:
        assert all(f.indexed for f in capture.files)
        exchanges = list(capture.exchanges())
    assert len({e.id for e in exchanges}) == 40
    assert sorted(int(e.request_body) for e in exchanges) == list(range(40))
    assert {e.outcome for e in exchanges} == {"ok"}


async def held_stream(exchange, release: trio.Event) -> None:
    """An SSE answer whose second and last event waits for ``release``."""
    await exchange.read_body()
    await exchange.send_head(200, [("Content-Type", "text/event-stream")])
    await exchange.send_data(b"data: first\n\n")
    await release.wait()
    await exchange.send_data(b"data: last\n\n")
    await exchange.end()


async def open_streams(port: int, count: int) -> list[trio.SocketStream]:
    """``count`` streaming exchanges, each on its own connection, each past its first event."""
    streams = []
    for _ in range(count):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"POST /v1/s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        seen = b""
        with trio.fail_after(30):
            while b"data: first" not in seen:
                seen += await s.receive_some(65536)
        streams.append(s)
    return streams


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """A streamed answer read to its chunked end; the stream is closed after."""
    seen = b""
    async with stream:
        with trio.fail_after(30):
            while not seen.endswith(b"0\r\n\r\n"):
                chunk = await stream.receive_some(65536)
                assert chunk, seen
                seen += chunk
    return seen


async def test_a_ctrl_c_to_the_group_counts_once_and_lets_streams_finish(start_upstream, tmp_path):
    release = trio.Event()
    upstream = await start_upstream(lambda exchange: held_stream(exchange, release))
    workers = await start_workers(tmp_path, upstream.url, "--shutdown-timeout", "600")
    streams = await open_streams(workers.port, 4)
    os.killpg(workers.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    with trio.fail_after(30):
        while b"finishing exchanges in flight" not in workers.log:
            workers.log += await workers.process.stderr.receive_some(65536)
    release.set()
    for s in streams:
        assert b"data: last" in await read_to_end(s)
    log = await workers.finish(None)
    assert workers.process.returncode == 0, log
    assert log.count("finishing exchanges in flight") == 1, log  # workers ignore the signal
    with open_capture(tmp_path / "c") as capture:
        assert [e.outcome for e in capture.exchanges()] == ["ok"] * 4


async def test_metrics_and_readiness_add_up_the_workers(start_upstream, tmp_path):
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url, "--admin", "127.0.0.1:0")
    await post_each_on_its_own_connection(workers.url, 10)
    wanted = 'wirecap_proxy_requests_total{method="POST",outcome="ok",route="/",status="200"} 10.0'
    async with httpx.AsyncClient() as admin:
        with trio.fail_after(30):  # workers report every second
            while wanted not in (text := (await admin.get(workers.admin + "/metrics")).text):
                await trio.sleep(0.1)
        assert "wirecap_proxy_workers 2.0" in text
        assert "wirecap_capture_enabled 1.0" in text  # the largest, not the sum
        ready = await admin.get(workers.admin + "/readyz")
        assert ready.status_code == 200, ready.text
        [worker, _] = workers.worker_pids()
        os.kill(worker, signal.SIGKILL)
        with trio.fail_after(30):
            while (ready := await admin.get(workers.admin + "/readyz")).status_code == 200:
                await trio.sleep(0.05)
        assert ready.status_code == 503
        assert "1 of 2 workers are not running" in json.dumps(ready.json()["problems"])
    responses = await post_each_on_its_own_connection(workers.url, 5)  # the other one serves
    assert [r.status_code for r in responses] == [200] * 5
    log = await workers.finish()
    assert workers.process.returncode == 1, log
    assert f"worker {worker} died (signal SIGKILL)" in log.splitlines()[-1]


async def test_a_worker_whose_capture_stops_makes_the_exit_status_3(start_upstream, tmp_path):
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url)
    [writer] = children(workers.worker_pids()[0])  # that worker's capture writer process
    os.kill(writer, signal.SIGKILL)
    with trio.fail_after(30):
        while b"CAPTURE STOPPED" not in workers.log:
            workers.log += await workers.process.stderr.receive_some(65536)
    responses = await post_each_on_its_own_connection(workers.url, 5)  # traffic goes on
    assert [r.status_code for r in responses] == [200] * 5
    log = await workers.finish(signal.SIGTERM)
    assert workers.process.returncode == 3, log
    assert "CAPTURE STOPPED" in log.splitlines()[-1]


async def test_workers_finish_their_files_when_the_supervisor_is_killed(start_upstream, tmp_path):
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url)
    pids = workers.worker_pids()
    await post_each_on_its_own_connection(workers.url, 6)
    workers.process.kill()  # no signal to pass on: the workers see their control pipes end
    with trio.fail_after(60):
        while any(map(running, pids)):
            await trio.sleep(0.05)
        await workers.process.wait()
    with open_capture(tmp_path / "c") as capture:
        assert len(capture.files) == 2
        assert all(f.indexed for f in capture.files)
        assert len(list(capture.exchanges())) == 6


def test_sums_of_the_workers_series():
    def snapshot(requests: float, created: float, stopped: float, le_one: float) -> list:
        return [
            [
                "wirecap_proxy_requests",
                "Exchanges.",
                "counter",
                "",
                [
                    ["wirecap_proxy_requests_total", {"route": "/"}, requests],
                    ["wirecap_proxy_requests_created", {"route": "/"}, created],
                ],
            ],
            [
                "wirecap_capture_stopped",
                "Stopped.",
                "gauge",
                "",
                [
                    ["wirecap_capture_stopped", {}, stopped],
                ],
            ],
            [
                "wirecap_proxy_duration_seconds",
                "Duration.",
                "histogram",
                "",
                [
                    ["wirecap_proxy_duration_seconds_bucket", {"le": "1.0"}, le_one],
                    ["wirecap_proxy_duration_seconds_count", {}, requests],
                ],
            ],
        ]

    merged = merged_metrics([snapshot(3, 20.0, 0, 2), snapshot(4, 10.0, 1, 1)])
    values = {(s.name, tuple(s.labels.items())): s.value for m in merged for s in m.samples}
    assert values == {
        ("wirecap_proxy_requests_total", (("route", "/"),)): 7,
        ("wirecap_proxy_requests_created", (("route", "/"),)): 10.0,  # the earliest
        ("wirecap_capture_stopped", ()): 1,  # the largest: one stopped capture is a stopped one
        ("wirecap_proxy_duration_seconds_bucket", (("le", "1.0"),)): 3,
        ("wirecap_proxy_duration_seconds_count", ()): 7,
    }


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_worker_count_is_refused(value, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "wirecap", "proxy", "--workers", value, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr and "Traceback" not in result.stderr
