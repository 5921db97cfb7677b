"""End to end: serve fixtures to the real openai SDK, replay them against good and changed backends."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import openai
import pytest
import trio
from click.testing import CliRunner
from helpers import stop_and_read

from wirecap.capture import open_capture
from wirecap.cli import main
from wirecap.replay.serve import MockServer, load_catalog

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"


async def start_serve(nursery, *names: str, speed: float | None = 1.0, **kwargs) -> MockServer:
    with open_capture(*(FIXTURES / f"{n}.cbor.zst" for n in names)) as capture:
        catalog = load_catalog(
            capture, match_on=kwargs.pop("match_on", ("method", "path", "query", "body"))
        )
    server = MockServer(catalog, speed=speed, **kwargs)
    await nursery.start(server.run)
    return server


def run(*args: str):
    return CliRunner().invoke(main, list(args))


async def test_openai_sdk_against_serve_json_and_stream(nursery):
    server = await start_serve(nursery, "openai_chat_json", "openai_chat_stream")

    def calls():
        client = openai.OpenAI(
            base_url=f"{server.url}/openai/v1", api_key="sk-anything", max_retries=0
        )
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello slowly"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, text = [], []
        for chunk in stream:
            arrivals.append(time.perf_counter())
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
        client.close()
        return answer.choices[0].message.content, "".join(text), arrivals

    content, streamed, _ = await trio.to_thread.run_sync(calls)
    assert content == "Hello there!"
    assert streamed == "Hello there!"
    assert len(server.served) == 2 and server.misses == []


async def test_serve_keeps_recorded_timing_by_ratio_and_order(nursery):
    with open_capture(FIXTURES / "openai_chat_stream.cbor.zst") as capture:
        [recorded] = list(capture.exchanges())
    gaps = [
        b.ns - a.ns
        for a, b in zip(recorded.response_chunks, recorded.response_chunks[1:], strict=False)
    ]
    recorded_span = sum(gaps) / 1e9
    body = recorded.request_body

    async def stream_time(server: MockServer) -> tuple[float, list[bytes]]:
        async with httpx.AsyncClient() as client:
            start = time.perf_counter()
            async with client.stream(
                "POST", f"{server.url}/openai/v1/chat/completions", content=body
            ) as r:
                chunks = [data async for data in r.aiter_raw()]
            return time.perf_counter() - start, chunks

    faithful = await start_serve(nursery, "openai_chat_stream", speed=1.0)
    fast = await start_serve(nursery, "openai_chat_stream", speed=4.0)
    instant = await start_serve(nursery, "openai_chat_stream", speed=None)
    t_faithful, chunks = await stream_time(faithful)
    t_fast, _ = await stream_time(fast)
    t_instant, _ = await stream_time(instant)
    assert b"".join(chunks) == recorded.response_body
    assert t_faithful >= 0.8 * recorded_span  # the recorded gaps are kept...
    assert t_fast < t_faithful / 2  # ...scaled with x4...
    assert t_instant < t_faithful / 2  # ...or dropped


async def test_miss_is_a_404_with_the_closest_requests(nursery):
    server = await start_serve(nursery, "openai_chat_json", "anthropic_message_json")
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{server.url}/openai/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say goodbye"}]},
        )
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["type"] == "wirecap_no_match"
    assert error["closest"][0]["differences"] == [
        "body: $.messages[0].content differs: 'Say hello' -> 'Say goodbye'"
    ]


async def test_serve_replays_a_truncated_stream_truncated(nursery):
    server = await start_serve(nursery, "truncated_stream", speed=None)
    with open_capture(FIXTURES / "truncated_stream.cbor.zst") as capture:
        [recorded] = list(capture.exchanges())
    got = b""
    async with httpx.AsyncClient() as client:
        try:
            async with client.stream(
                "POST", f"{server.url}/openai/v1/chat/completions", content=recorded.request_body
            ) as r:
                async for data in r.aiter_raw():
                    got += data
        except httpx.RemoteProtocolError:
            pass
        else:
            raise AssertionError("the connection should break like in the recording")
    assert got == recorded.response_body and b"[DONE]" not in got


async def test_replay_passes_against_an_equivalent_backend_and_fails_on_a_changed_one(
    nursery, start_upstream, tmp_path
):
    good = await start_serve(
        nursery, "openai_chat_json", "openai_chat_stream", "anthropic_message_stream", speed=None
    )
    fixtures = [
        str(FIXTURES / f"{n}.cbor.zst")
        for n in ("openai_chat_json", "openai_chat_stream", "anthropic_message_stream")
    ]
    junit = tmp_path / "report.xml"
    passing = await trio.to_thread.run_sync(
        run, "replay", *fixtures, "--target", good.url, "--junit", str(junit), "--concurrency", "2"
    )
    assert passing.exit_code == 0, passing.output
    assert "3 exchanges replayed: 3 passed, 0 failed" in passing.output
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "0"
    assert len(suite.findall(".//testcase")) == 3

    async def changed(ex):
        body = json.loads(await ex.read_body())
        answer = {
            "id": "chatcmpl-new",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi!"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        }
        assert body["model"] == "gpt-4o-mini"
        await ex.respond(200, json.dumps(answer).encode(), [("Content-Type", "application/json")])

    upstream = await start_upstream(changed)
    failing = await trio.to_thread.run_sync(
        run,
        "replay",
        fixtures[0],
        "--target",
        upstream.url,
        "--junit",
        str(junit),
        "--out",
        str(tmp_path / "replayed"),
    )
    assert failing.exit_code == 1
    assert "FAIL POST /openai/v1/chat/completions" in failing.output
    assert "$.body.choices[0].message.content differs: 'Hello there!' -> 'Hi!'" in failing.output
    assert re.search(r'^ +\+ +"content": "Hi!",$', failing.output, re.MULTILINE)  # the unified diff
    assert upstream.requests[0].target == "/v1/chat/completions"  # the path as sent upstream
    assert upstream.requests[0].header("authorization").startswith(b"Bearer [redacted")
    failure = ET.parse(junit).getroot().find(".//failure")
    assert failure is not None and "Hi!" in failure.text
    with open_capture(tmp_path / "replayed") as capture:  # the replay's own traffic
        [own] = list(capture.exchanges())
    assert own.status == 200 and b"Hi!" in own.response_body

    schema = await trio.to_thread.run_sync(
        run,
        "replay",
        fixtures[0],
        "--target",
        upstream.url,
        "--compare",
        "schema",
        "--ignore",
        "$.usage",
        "--header",
        "Authorization: Bearer sk-real",
    )
    assert schema.exit_code == 0, schema.output
    assert upstream.requests[-1].header("authorization") == b"Bearer sk-real"


async def test_replay_exit_code_2_when_the_target_is_unreachable(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await trio.to_thread.run_sync(
        run,
        "replay",
        str(FIXTURES / "openai_chat_json.cbor.zst"),
        "--target",
        f"http://127.0.0.1:{port}/",
    )
    assert result.exit_code == 2 and "unreachable" in result.output


async def test_replay_via_proxy_and_recorded_pace(nursery, start_proxy):
    backend = await start_serve(nursery, "openai_chat_json", "anthropic_message_json", speed=None)
    proxy = await start_proxy(
        routes=[f"/openai/={backend.url}/openai/", f"/anthropic/={backend.url}/anthropic/"]
    )
    fixtures = [
        str(FIXTURES / "openai_chat_json.cbor.zst"),
        str(FIXTURES / "anthropic_message_json.cbor.zst"),
    ]
    with open_capture(*fixtures) as capture:
        walls = [e.wall_ns for e in capture.exchanges()]
    recorded_gap = (walls[1] - walls[0]) / 1e9
    start = time.perf_counter()
    result = await trio.to_thread.run_sync(
        run,
        "replay",
        *fixtures,
        "--target",
        proxy.url,
        "--via-proxy",
        "--pace",
        "recorded",
        "--json",
    )
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["summary"] == {"total": 2, "passed": 2, "failed": 0}
    assert elapsed >= 0.8 * recorded_gap  # the second request waited for its recorded offset
    assert len(backend.served) == 2


def test_demo_runs_offline():
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "wirecap inspect:" in result.output and "truncated-stream" in result.output
    assert "rate-limited" in result.output and "no recorded request matches" not in result.output


async def test_replay_to_a_host_that_does_not_resolve_says_so(tmp_path):
    from resolver import UNRESOLVABLE, unresolvable_names

    from wirecap.proxy.config import parse_upstream
    from wirecap.replay.runner import ReplayOptions, TargetUnreachable, replay

    options = ReplayOptions(target=parse_upstream(f"http://{UNRESOLVABLE}:80/"))
    with unresolvable_names(), open_capture(FIXTURES / "openai_chat_json.cbor.zst") as capture:
        try:
            await replay(capture, options)
        except TargetUnreachable as exc:
            message = str(exc)
        else:
            raise AssertionError("replay to an unresolvable host did not fail")
    assert message == (
        f"cannot connect to {UNRESOLVABLE}:80: the host name does not resolve "
        "(Name or service not known)"
    )


@pytest.mark.parametrize(
    ("signum", "sigint_ignored", "status"),
    [(signal.SIGINT, False, 130), (signal.SIGINT, True, 130), (signal.SIGTERM, True, 0)],
)
async def test_a_signal_stops_serve_with_one_line_not_a_traceback(signum, sigint_ignored, status):
    """SIGINT reaches `wirecap serve` inside trio's nursery: it exits 130 (SIGTERM: 0), without a
    traceback; also when it started with SIGINT ignored, as a shell starts background jobs."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wirecap", "serve", str(FIXTURES), "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=ignore,
    )
    err = b""
    with trio.fail_after(20):
        while b"wirecap serve on" not in err:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, err
            err += chunk
        err += (await stop_and_read(process, signum))[1]
    assert process.returncode == status, err.decode()
    assert b"Traceback" not in err, err.decode()


async def test_replay_undoes_the_targets_content_coding_before_comparing(start_upstream):
    """A backend that gzips its answer says the same as the recording that was not gzipped."""
    import gzip

    with open_capture(FIXTURES / "openai_chat_json.cbor.zst") as capture:
        [recorded] = list(capture.exchanges())
    answer = recorded.response_body

    async def gzipping(ex):
        await ex.read_body()
        headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
        await ex.respond(200, gzip.compress(answer), headers)

    backend = await start_upstream(gzipping)
    fixture = str(FIXTURES / "openai_chat_json.cbor.zst")
    result = await trio.to_thread.run_sync(run, "replay", fixture, "--target", backend.url)
    assert result.exit_code == 0, result.output
    assert "1 exchange replayed: 1 passed, 0 failed" in result.output


async def test_a_head_request_does_not_stop_serve(nursery):
    server = await start_serve(nursery, "openai_chat_json", speed=None)
    async with httpx.AsyncClient() as client:
        head = await client.head(f"{server.url}/nothing/here")
        assert head.status_code == 404
        after = await client.get(f"{server.url}/nothing/here")
    assert after.status_code == 404 and after.json()  # the server still answers
