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
    children,
    echo,
    post_each_on_its_own_connection,
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
