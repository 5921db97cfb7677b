"""``wirecap proxy --workers N`` under attack: signals while it starts, dead workers, every reader
on a directory two workers wrote, and the other options beside ``--workers``.

Real processes through the CLI, as in test_workers.py. Which worker takes a connection is the
kernel's choice, so each test asserts what holds whatever the split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.proxy.test_workers import (
    Workers,
    children,
    echo,
    held_stream,
    open_streams,
    post_each_on_its_own_connection,
    read_to_end,
    running,
    start_workers,
)
from wirecap.capture import open_capture


def proxy_command(tmp_path: Path, upstream_url: str, *extra: str, count: int = 2) -> list[str]:
    command = [sys.executable, "-m", "wirecap", "proxy", "--workers", str(count), "--quiet"]
    command += ["--listen", "127.0.0.1:0", "--upstream", upstream_url]
    return [*command, "--out", str(tmp_path / "c"), *extra]


def forked_workers(pid: int) -> list[int]:
    """The children of ``pid`` that hold a socket: forks of it after it bound the listening
    socket (what it runs at import time holds none)."""
    found = []
    for child in children(pid):
        try:
            fds = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
        except FileNotFoundError:
            continue
        if any(fd.startswith("socket:") for fd in fds):
            found.append(child)
    return found


async def test_a_ctrl_c_while_the_workers_start_stops_them_cleanly(start_upstream, tmp_path):
    """The group's Ctrl-C lands while the first process is still forking workers (or before it
    watches signals): it is acted on once, as a graceful stop, with no traceback."""
    upstream = await start_upstream(echo)
    process = await trio.lowlevel.open_process(
        proxy_command(tmp_path, upstream.url, count=16),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    with trio.fail_after(60):
        while not forked_workers(process.pid):  # the first worker exists: forking has begun
            await trio.sleep(0)
        os.killpg(process.pid, signal.SIGINT)
        log = b""
        while chunk := await process.stderr.receive_some(65536):
            log += chunk
        await process.wait()
    text = log.decode()
    assert "Traceback" not in text, text
    assert process.returncode == 0, text
    assert text.splitlines()[-1].startswith("wirecap: 0 exchanges; capture: "), text
    assert text.count("finishing exchanges in flight") == 1, text


async def test_a_dead_workers_pipes_are_never_written_again(start_upstream, tmp_path):
    """Once a worker has died, the file descriptors of its pipes are closed and may be reused by
    the first process (here: for admin connections); telling the workers to finish must not
    write into whatever took them."""
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url, "--admin", "127.0.0.1:0")
    [worker, _] = workers.worker_pids()
    os.kill(worker, signal.SIGKILL)
    async with httpx.AsyncClient() as admin:
        with trio.fail_after(30):
            while (await admin.get(workers.admin + "/readyz")).status_code == 200:
                await trio.sleep(0.05)
    port = int(workers.admin.rpartition(":")[2])
    held = []
    for _ in range(8):  # each takes the lowest free descriptor in the first process
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        answer = b""
        with trio.fail_after(30):
            while not (b"alive" in answer and answer.rstrip().endswith(b"}")):
                answer += await stream.receive_some(65536)
        held.append(stream)
    log = await workers.finish()
    assert workers.process.returncode == 1, log  # a worker died
    for stream in held:
        async with stream:
            with trio.fail_after(30):
                rest = b""
                while chunk := await stream.receive_some(65536):
                    rest += chunk
        assert rest == b"", rest  # nothing after the answer: the connection only closed


async def endless_stream(exchange) -> None:
    await exchange.read_body()
    await exchange.send_head(200, [("Content-Type", "text/event-stream")])
    await exchange.send_data(b"data: first\n\n")
    await trio.sleep_forever()


async def test_a_second_signal_stops_every_worker_at_once(start_upstream, tmp_path):
    upstream = await start_upstream(endless_stream)
    workers = await start_workers(tmp_path, upstream.url, "--shutdown-timeout", "600")
    streams = await open_streams(workers.port, 4)
    workers.process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        while b"finishing exchanges in flight" not in workers.log:
            workers.log += await workers.process.stderr.receive_some(65536)
    log = await workers.finish(signal.SIGTERM)  # another signal: stop now, not in 600 s
    assert "Traceback" not in log, log
    assert "second SIGTERM: stopping now" in log, log
    assert log.splitlines()[-1].startswith("wirecap: 4 exchanges; capture: "), log
    assert workers.process.returncode == 0, log
    for s in streams:
        await s.aclose()
    with open_capture(tmp_path / "c") as capture:
        assert all(f.indexed for f in capture.files)
        assert len(list(capture.exchanges())) == 4


async def test_without_capture_the_workers_write_nothing(start_upstream, tmp_path):
    upstream = await start_upstream(echo)
    process = await trio.lowlevel.open_process(
        proxy_command(tmp_path, upstream.url, "--no-capture"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = b""
    with trio.fail_after(60):
        while b"capture is off" not in log:
            chunk = await process.stderr.receive_some(65536)
            assert chunk, log.decode()
            log += chunk
    workers = Workers(process, log)
    responses = await post_each_on_its_own_connection(workers.url, 6)
    assert [r.status_code for r in responses] == [200] * 6
    text = await workers.finish()
    assert workers.process.returncode == 0, text
    assert text.splitlines()[-1] == "wirecap: 6 exchanges; capture off", text
    assert not (tmp_path / "c").exists()


async def test_faults_are_injected_by_each_worker(start_upstream, tmp_path):
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url, "--fault", "503,every=2")
    responses = await post_each_on_its_own_connection(workers.url, 20)
    statuses = [r.status_code for r in responses]
    log = await workers.finish()
    assert workers.process.returncode == 0, log
    assert "Traceback" not in log, log
    assert set(statuses) == {200, 503}
    # every=2 counts each worker's own exchanges: half of each worker's, so half of all, give or
    # take one per worker whose count is odd.
    assert abs(statuses.count(503) - 10) <= 1, statuses
    with open_capture(tmp_path / "c") as capture:
        faulted = [e for e in capture.exchanges() if e.notes_of("fault")]
    assert len(faulted) == statuses.count(503)


async def test_the_last_line_names_a_dead_workers_files(start_upstream, tmp_path):
    """Without --admin too: the last line names every file, a dead worker's as well."""
    upstream = await start_upstream(echo)
    workers = await start_workers(tmp_path, upstream.url)
    await post_each_on_its_own_connection(workers.url, 10)
    [first, _] = workers.worker_pids()
    files = sorted((tmp_path / "c").iterdir())
    assert len(files) == 2
    os.kill(first, signal.SIGKILL)
    with trio.fail_after(60):
        while running(first):
            await trio.sleep(0.05)
    log = await workers.finish()
    last = log.splitlines()[-1]
    assert workers.process.returncode == 1, log
    assert last.startswith("wirecap: "), log
    for f in files:
        assert str(f) in last, (f, last)
    assert f"worker {first} died (signal SIGKILL)" in last


async def test_every_reader_sees_two_workers_rotated_segments_as_one_capture(
    start_upstream, tmp_path
):
    """Streams held open while both workers rotate (small --rotate-bytes) end in later segments
    than they began in; inspect and export read each exchange once, whole."""
    release = trio.Event()

    async def stream_or_echo(exchange) -> None:
        if exchange.request.target != "/v1/s":
            await echo(exchange)
            return
        await held_stream(exchange, release)

    upstream = await start_upstream(stream_or_echo)
    workers = await start_workers(tmp_path, upstream.url, "--rotate-bytes", "16KiB")
    streams = await open_streams(workers.port, 4)
    bodies = [os.urandom(12 * 1024).hex().encode() for _ in range(30)]  # hardly compressible
    for body in bodies:
        async with httpx.AsyncClient() as client:
            response = await client.post(workers.url + "/v1/chat", content=b'"' + body + b'"')
            assert response.status_code == 200
    release.set()
    for s in streams:
        await read_to_end(s)
    log = await workers.finish()
    assert workers.process.returncode == 0, log
    out = tmp_path / "c"
    assert len(list(out.iterdir())) > 2  # both workers rotated
    with open_capture(out) as capture:
        exchanges = list(capture.exchanges())
    assert len(exchanges) == 34 and len({e.id for e in exchanges}) == 34
    assert {e.outcome for e in exchanges} == {"ok"}
    held = [e for e in exchanges if e.target == "/v1/s"]
    assert [e.response_body for e in held] == [b"data: first\n\ndata: last\n\n"] * 4
    assert sorted(e.request_body[1:-1] for e in exchanges if e.target != "/v1/s") == sorted(bodies)
    listed = subprocess.run(
        [sys.executable, "-m", "wirecap", "inspect", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in exchanges)
    har = tmp_path / "c.har"
    exported = subprocess.run(
        [sys.executable, "-m", "wirecap", "export", str(out), "--format", "har", "-o", str(har)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(har.read_text())["log"]["entries"]) == 34
