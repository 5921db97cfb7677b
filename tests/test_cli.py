"""The command line, including the proxy as a real subprocess: signals, SIGKILL, index repair."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio
from click.testing import CliRunner

from wirecap.capture import frames, open_capture
from wirecap.cli import main


async def start_proxy_process(args: list[str]) -> tuple[trio.Process, int]:
    """Run ``wirecap proxy`` in a child process; returns it and its port (read from its banner)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wirecap", "proxy", "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    banner = b""
    with trio.fail_after(20):
        while (match := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", banner)) is None:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, banner
            banner += chunk
    return process, int(match.group(1))


async def slow_stream(ex):
    await ex.read_body()
    if ex.request.target == "/v1/quick":
        return await ex.respond(200, b'{"ok": true}', [("Content-Type", "application/json")])
    await ex.send_head(200, [("Content-Type", "text/event-stream")])
    for i in range(1000):
        await ex.send_data(f"data: {i}\n\n".encode())
        await trio.sleep(0.02)
    await ex.end()


async def test_sigkill_mid_stream_the_writer_process_still_finishes_the_file(
    start_upstream, tmp_path
):
    upstream = await start_upstream(slow_stream)
    out = tmp_path / "cap"
    process, port = await start_proxy_process(
        ["--upstream", upstream.url, "--out", str(out), "--quiet"]
    )
    try:
        async with httpx.AsyncClient() as client:
            for i in range(5):
                r = await client.post(f"http://127.0.0.1:{port}/v1/quick", json={"i": i})
                assert r.status_code == 200
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
            )
            seen = b""
            while b"data: 9\n" not in seen:
                seen += await stream.receive_some(65536)
            process.send_signal(signal.SIGKILL)
    finally:
        with trio.fail_after(10):
            await process.wait()
    assert process.returncode == -signal.SIGKILL
    [path] = list(out.iterdir())
    # The proxy is gone, its writer process is not: it sees the pipe close and writes the last
    # frame, the index and the footer. Only records still in the proxy (at most 5 ms) are lost.
    with trio.fail_after(10):
        while not open_capture(path).files[0].indexed:
            await trio.sleep(0.05)
    with open_capture(path) as capture:
        exchanges = list(capture.exchanges())
    finished = [e for e in exchanges if e.complete]
    assert len(finished) == 5 and all(
        e.status == 200 and e.response_body == b'{"ok": true}' for e in finished
    )
    [cut] = [e for e in exchanges if not e.complete]
    assert cut.target == "/v1/stream" and cut.response_body.startswith(b"data: 0\n\n")

    # Had the writer process died too, the file would end after its last data frame: `wirecap
    # index` rebuilds the index by one scan.
    data = path.read_bytes()
    last_frame_end = max(
        f.end
        for f in frames.iter_frames(data)
        if isinstance(f, frames.FrameInfo) and f.kind == "data"
    )
    cut_copy = tmp_path / "cut.cbor.zst"
    cut_copy.write_bytes(data[:last_frame_end])
    with open_capture(cut_copy) as capture:
        assert not capture.files[0].indexed
    result = CliRunner().invoke(main, ["index", str(cut_copy)])
    assert result.exit_code == 0, result.output
    assert "index written (6 exchanges)" in result.output
    with open_capture(cut_copy) as capture:
        assert capture.files[0].indexed
        assert capture.get(finished[2].id).request_body == b'{"i":2}'


async def test_sigterm_and_sigint_finish_the_index(start_upstream, tmp_path):
    upstream = await start_upstream(slow_stream)
    for signum in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / signum.name
        process, port = await start_proxy_process(["--upstream", upstream.url, "--out", str(out)])
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{port}/v1/quick", json={})
            assert r.status_code == 200
        process.send_signal(signum)
        with trio.fail_after(20):
            await process.wait()
        assert process.returncode == 0
        [path] = list(out.iterdir())
        with open_capture(path) as capture:
            assert capture.files[0].indexed
            assert [e.outcome for e in capture.exchanges()] == ["ok"]


@contextlib.asynccontextmanager
async def proxy_process(args: list[str]) -> AsyncIterator[tuple[trio.Process, int]]:
    """:func:`start_proxy_process`, killed on the way out if it still runs (a failed test)."""
    process, port = await start_proxy_process(args)
    try:
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop_and_read_exit(process: trio.Process) -> str:
    """SIGTERM the proxy, wait for it, and return the rest of what it wrote to stderr."""
    process.send_signal(signal.SIGTERM)
    rest = b""
    with trio.fail_after(20):
        while chunk := await process.stderr.receive_some(65536):
            rest += chunk
        await process.wait()
    return rest.decode()


async def test_exit_message_counts_every_answer_and_status_tells_lost_capture(
    start_upstream, tmp_path
):
    """The last line counts the exchanges the proxy answered itself (a 400, a 502) with the relayed
    ones; a run whose capture stopped exits 3, a clean one 0."""
    upstream = await start_upstream(slow_stream)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once the socket closes
    routes = ["--route", f"/dead/=http://127.0.0.1:{dead}/", "--route", f"/={upstream.url}"]

    async with proxy_process([*routes, "--out", str(tmp_path / "a"), "-q"]) as (process, port):
        async with httpx.AsyncClient() as client:
            assert (
                await client.post(f"http://127.0.0.1:{port}/v1/quick", json={})
            ).status_code == 200
            assert (await client.get(f"http://127.0.0.1:{port}/dead/x")).status_code == 502
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"NOT HTTP\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 400 ")
        message = await stop_and_read_exit(process)
    assert process.returncode == 0, message
    assert "wirecap: 3 exchanges (2 answered by the proxy itself); capture: " in message

    async with proxy_process([*routes, "--out", str(tmp_path / "b"), "-q"]) as (process, port):
        # The writer process is a child of one of the proxy's threads (trio starts it from a worker).
        [writer_pid] = [
            int(pid)
            for task in Path(f"/proc/{process.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        os.kill(writer_pid, signal.SIGKILL)  # the capture writer process dies: capture stops
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.post(f"http://127.0.0.1:{port}/v1/quick", json={})
                assert r.status_code == 200
        message = await stop_and_read_exit(process)
    assert process.returncode == 3, message
    assert "wirecap: 3 exchanges; capture: " in message
    assert "CAPTURE STOPPED" in message and "records lost" in message


async def test_inspect_json_id_and_raw(start_upstream, start_proxy):
    async def handler(ex):
        await ex.respond(201, b'{"answer": 42}', [("Content-Type", "application/json")])

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    async with httpx.AsyncClient() as client:
        await client.post(f"{proxy.url}/v1/chat/completions", content=b'{"q": "?"}')
        await client.get(f"{proxy.url}/v1/models")
    await proxy.stop()

    runner = CliRunner()
    listing = await trio.to_thread.run_sync(
        runner.invoke, main, ["inspect", str(proxy.out), "--json"]
    )
    assert listing.exit_code == 0, listing.output
    rows = [json.loads(line) for line in listing.output.splitlines()]
    assert [r["method"] for r in rows] == ["POST", "GET"]
    first = rows[0]
    assert (
        first["path"] == "/v1/chat/completions"
        and first["status"] == 201
        and first["outcome"] == "ok"
    )
    assert first["upstream_url"] == f"{upstream.url}v1/chat/completions"
    assert first["request_bytes"] == 10 and first["response_bytes"] == 14
    assert first["duration_ms"] >= first["ttfb_ms"] > 0 and first["start"].endswith("Z")

    raw = await trio.to_thread.run_sync(
        runner.invoke, main, ["inspect", str(proxy.out), "--id", first["id"], "--raw", "response"]
    )
    assert raw.exit_code == 0
    assert raw.stdout_bytes.startswith(b"HTTP/1.1 201 \r\n") and raw.stdout_bytes.endswith(
        b'\r\n\r\n{"answer": 42}'
    )
    raw_req = await trio.to_thread.run_sync(
        runner.invoke, main, ["inspect", str(proxy.out), "--id", first["id"], "--raw", "request"]
    )
    assert raw_req.stdout_bytes.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert raw_req.stdout_bytes.endswith(b'\r\n\r\n{"q": "?"}')

    table = await trio.to_thread.run_sync(runner.invoke, main, ["inspect", str(proxy.out)])
    assert table.exit_code == 0 and "/v1/models" in table.output

    missing = await trio.to_thread.run_sync(
        runner.invoke, main, ["inspect", str(proxy.out), "--id", "nope"]
    )
    assert (
        missing.exit_code == 2 and "Invalid value for '--id': no exchange 'nope'" in missing.output
    )


def test_user_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    dup = runner.invoke(main, ["proxy", "--route", "/a=http://x/", "--route", "/a=http://y/"])
    assert (
        dup.exit_code == 2 and "duplicate route /a" in dup.output and "Traceback" not in dup.output
    )
    bad = tmp_path / "bad.cbor.zst"
    bad.write_bytes(b"junk")
    result = runner.invoke(main, ["inspect", str(bad)])
    assert (
        result.exit_code == 1
        and "not a wirecap capture" in result.output
        and "Traceback" not in result.output
    )
    config = tmp_path / "c.toml"
    config.write_text("[[route]]\nprefix = 1\n")
    result = runner.invoke(main, ["proxy", "--config", str(config)])
    assert result.exit_code == 2 and "route needs a text 'prefix'" in result.output


def test_capture_dir_and_files_are_private(tmp_path):
    from wirecap.proxy.app import make_redactor, make_writer
    from wirecap.proxy.config import build_config

    config = build_config(out=tmp_path / "private")
    writer = make_writer(config, make_redactor(config))

    async def open_and_close() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.aclose()

    trio.run(open_and_close)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700
    [path] = list((tmp_path / "private").iterdir())
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.access(path, os.R_OK)
