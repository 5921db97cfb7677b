"""Assembling the proxy: what each shutdown signal means, and the banner's base URLs for SDKs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import trio

from wirecap.capture import open_capture
from wirecap.proxy.app import ShutdownSignals, client_base_urls, run_proxy
from wirecap.proxy.config import build_config

TERM, INT = signal.SIGTERM, signal.SIGINT


@pytest.mark.parametrize(
    ("signals", "actions"),
    [
        ([(TERM, 0.0)], ["graceful"]),
        ([(TERM, 0.0), (TERM, 0.001)], ["graceful", "duplicate"]),  # `timeout`: child, then group
        ([(TERM, 0.0), (TERM, 0.001), (TERM, 0.002)], ["graceful", "duplicate", "duplicate"]),
        ([(INT, 0.0), (INT, 2.0)], ["graceful", "stop"]),  # a person's second Ctrl-C
        ([(TERM, 0.0), (INT, 0.001)], ["graceful", "stop"]),  # another signal is not a copy
        ([(INT, 0.0), (INT, 0.1), (INT, 3.0)], ["graceful", "duplicate", "stop"]),
    ],
)
def test_what_each_signal_means(signals, actions):
    policy = ShutdownSignals(window=0.5)
    assert [policy.on_signal(s, t) for s, t in signals] == actions


async def stream_until_released(release: trio.Event):
    async def handler(ex):
        await ex.read_body()
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        await ex.send_data(b"data: first\n\n")
        await release.wait()
        await ex.send_data(b"data: last\n\n")
        await ex.end()

    return handler


async def open_stream(port: int) -> trio.SocketStream:
    """A streamed request through the proxy, read up to its first event."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /v1/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    seen = b""
    while b"data: first" not in seen:
        seen += await stream.receive_some(65536)
    return stream


async def read_to_end(stream: trio.SocketStream) -> bytes:
    seen = b""
    while not seen.endswith(b"0\r\n\r\n"):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        seen += chunk
    return seen


async def wait_for(condition) -> None:
    with trio.fail_after(30):
        while not condition():
            await trio.sleep(0.01)


async def test_the_same_signal_again_at_once_keeps_the_grace_period(start_upstream, tmp_path):
    release = trio.Event()
    upstream = await start_upstream(await stream_until_released(release))
    config = build_config(
        listen="127.0.0.1:0",
        upstream=upstream.url,
        out=tmp_path / "c",
        log_format="quiet",
        shutdown_timeout=3600,
    )
    policy = ShutdownSignals(window=3600)  # whatever this machine's load, the copy is in the window
    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(
            lambda task_status: run_proxy(config, signals=policy, task_status=task_status)
        )
        stream = await open_stream(port)
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_for(lambda: policy.first is not None)
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_for(lambda: policy.duplicates == 1)
        release.set()
        async with stream:
            assert (await read_to_end(stream)).endswith(b"data: last\n\n\r\n0\r\n\r\n")
    [path] = list((tmp_path / "c").iterdir())
    with open_capture(path) as capture:
        assert capture.files[0].indexed
        assert [e.outcome for e in capture.exchanges()] == ["ok"]


async def test_a_distinct_second_signal_stops_at_once(start_upstream, tmp_path):
    release = trio.Event()  # never set: only stopping at once ends the exchange
    upstream = await start_upstream(await stream_until_released(release))
    config = build_config(
        listen="127.0.0.1:0",
        upstream=upstream.url,
        out=tmp_path / "c",
        log_format="quiet",
        shutdown_timeout=3600,
    )
    policy = ShutdownSignals(window=0)  # every second signal is a distinct one
    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(
            lambda task_status: run_proxy(config, signals=policy, task_status=task_status)
        )
        stream = await open_stream(port)
        os.kill(os.getpid(), signal.SIGINT)
        await wait_for(lambda: policy.first is not None)
        os.kill(os.getpid(), signal.SIGINT)
        async with stream:
            assert not (await read_to_end(stream)).endswith(b"0\r\n\r\n")  # cut off
    release.set()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
async def test_under_timeout_a_sigterm_arrives_twice_and_the_grace_period_holds(
    start_upstream, tmp_path
):
    """`timeout` forwards a signal to its child and then to its process group: the proxy gets
    SIGTERM twice, microseconds apart, and must still let the exchange in flight finish."""
    release = trio.Event()
    upstream = await start_upstream(await stream_until_released(release))
    out = tmp_path / "c"
    process = await trio.lowlevel.open_process(
        [
            "timeout",
            "600",
            sys.executable,
            "-m",
            "wirecap",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream.url,
            "--out",
            str(out),
            "--quiet",
            "--shutdown-timeout",
            "600",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    log = b""
    with trio.fail_after(30):
        while (match := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", log)) is None:
            log += await process.stderr.receive_some(4096)
        stream = await open_stream(int(match.group(1)))
        process.send_signal(signal.SIGTERM)  # to `timeout`, which passes it on twice
        while b"finishing exchanges in flight" not in log:
            log += await process.stderr.receive_some(4096)
    release.set()
    async with stream:
        assert (await read_to_end(stream)).endswith(b"data: last\n\n\r\n0\r\n\r\n"), log
    with trio.fail_after(30):
        await process.wait()
    assert process.returncode == 0
    [path] = list(out.iterdir())
    with open_capture(path) as capture:
        assert [e.outcome for e in capture.exchanges()] == ["ok"]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("/openai/=https://api.openai.com/", [("OpenAI SDK", "http://127.0.0.1:5601/openai/v1")]),
        (
            "/anthropic/=https://api.anthropic.com/",
            [("Anthropic SDK", "http://127.0.0.1:5601/anthropic")],
        ),
        (
            "/openrouter/=https://openrouter.ai/",
            [("OpenAI SDK (OpenRouter)", "http://127.0.0.1:5601/openrouter/api/v1")],
        ),
        (
            "/ollama/=http://127.0.0.1:11434/",
            [
                ("Ollama", "http://127.0.0.1:5601/ollama"),
                ("OpenAI SDK", "http://127.0.0.1:5601/ollama/v1"),
            ],
        ),
        (
            "/vllm/=http://127.0.0.1:8000/v1",
            [("OpenAI-compatible SDK", "http://127.0.0.1:5601/vllm")],
        ),
        ("/=http://127.0.0.1:9000/", [("base URL", "http://127.0.0.1:5601")]),
    ],
)
def test_base_url_for_each_sdk(route, expected):
    [configured] = build_config(routes=[route]).routes
    assert client_base_urls(configured, "http://127.0.0.1:5601") == expected


async def test_the_banner_names_the_base_url_of_each_preset(tmp_path):
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "wirecap",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--out",
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    banner = b""
    with trio.fail_after(30):
        while b"capturing to" not in banner:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, banner
            banner += chunk
    process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        await process.wait()
    port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", banner.decode()).group(1)
    text = banner.decode()
    assert f"OpenAI SDK: http://127.0.0.1:{port}/openai/v1" in text
    assert f"Anthropic SDK: http://127.0.0.1:{port}/anthropic" in text
