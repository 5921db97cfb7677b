"""Spy mode: ``wirecap serve CAPTURE --miss forward=URL --out DIR`` answers what the capture holds,
forwards the rest to a real upstream on 127.0.0.1 (streams relayed as they arrive), records the
forwarded exchanges into DIR, and a second serve over CAPTURE + DIR answers everything offline."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

import httpx
import openai
import pytest
import samples
import trio
from click.testing import CliRunner
from helpers import start_recording_serve, stop_and_read
from upstream import ScriptedUpstream, UpstreamExchange

from wirecap.capture import open_capture
from wirecap.capture.reader import CaptureFile, segment_paths
from wirecap.cli import main
from wirecap.inspect.analysis import analyze_exchange
from wirecap.replay.serve import MockServer, load_catalog
from wirecap.replay.spy import SpyForwarder, parse_miss

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
RECORDED = FIXTURES / "openai_chat_json.cbor.zst"  # answers "Say hello" with "Hello there!"
HANG_GUARD = 30  # seconds: only a hang reaches it

NEW_JSON = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Something new"}]}
NEW_STREAM = {**samples.CHAT_REQUEST, "messages": [{"role": "user", "content": "Stream it"}]}


class Upstream:
    """A real upstream that answers chat completions (JSON, or a stream whose second half waits
    for ``release``) and counts what reaches it."""

    def __init__(self) -> None:
        self.server = ScriptedUpstream(self.handle)
        self.release = trio.Event()

    @property
    def requests(self):
        return self.server.requests

    async def handle(self, ex: UpstreamExchange) -> None:
        request = json.loads(await ex.read_body())
        if not request.get("stream"):
            body = json.dumps(
                {**samples.CHAT_JSON, "choices": [_choice("Fresh from upstream")]}
            ).encode()
            await ex.respond(200, body, [("Content-Type", "application/json")])
            return
        chunks = samples.chat_stream(text=("first ", "second"))
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        for chunk in chunks[:2]:  # the role chunk and "first "
            await ex.send_data(chunk)
        await self.release.wait()  # the rest only once the client has seen "first "
        for chunk in chunks[2:]:
            await ex.send_data(chunk)
        await ex.end()


def _choice(text: str) -> dict:
    message = {"role": "assistant", "content": text}
    return {"index": 0, "message": message, "finish_reason": "stop"}


async def start_spy(nursery, upstream: Upstream, out: Path, *captures: Path):
    spy = SpyForwarder(upstream.server.url, out)
    await nursery.start(spy.run)
    server = await start_mock(nursery, *captures, miss_handler=spy.relay)
    return spy, server


async def start_mock(nursery, *captures: Path, **kwargs) -> MockServer:
    with open_capture(*captures) as capture:
        catalog = load_catalog(capture, match_on=("method", "path", "query", "body"))
    server = MockServer(catalog, speed=None, **kwargs)
    await nursery.start(server.run)
    return server


def say_hello(base_url: str) -> str | None:
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    client.close()
    return answer.choices[0].message.content


async def test_hits_come_from_the_capture_misses_reach_the_upstream_and_are_recorded(
    nursery, tmp_path
):
    upstream = Upstream()
    await nursery.start(upstream.server.run)
    out = tmp_path / "new"
    spy, server = await start_spy(nursery, upstream, out, RECORDED)
    base = f"{server.url}/openai/v1"

    assert await trio.to_thread.run_sync(say_hello, base) == "Hello there!"
    assert upstream.requests == []  # a hit never touches the upstream

    async with httpx.AsyncClient(base_url=base) as client:
        fresh = await client.post("/chat/completions", json=NEW_JSON)
    assert fresh.status_code == 200
    assert fresh.json()["choices"][0]["message"]["content"] == "Fresh from upstream"
    assert len(upstream.requests) == 1
    assert upstream.requests[0].target == "/openai/v1/chat/completions"

    await spy.stop()
    [segment] = segment_paths(out)
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    with CaptureFile(segment) as f:
        assert f.indexed
    with open_capture(out) as capture:
        [recorded] = list(capture.exchanges())
    facts = analyze_exchange(recorded).facts
    assert recorded.status == 200 and recorded.outcome == "ok"
    assert facts.text == "Fresh from upstream" and facts.model_requested == "gpt-4o-mini"


async def test_a_forwarded_stream_is_relayed_as_it_arrives(nursery, tmp_path):
    """The upstream holds back the second half of its stream until the client has read the
    first: a spy that waited for the whole answer would never deliver it (the hang guard)."""
    upstream = Upstream()
    await nursery.start(upstream.server.run)
    spy, server = await start_spy(nursery, upstream, tmp_path / "new", RECORDED)

    def stream_through() -> list[str]:
        client = openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="sk", max_retries=0)
        pieces = []
        for chunk in client.chat.completions.create(**NEW_STREAM):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 1:
                    trio.from_thread.run_sync(upstream.release.set)
        client.close()
        return pieces

    with trio.fail_after(HANG_GUARD):
        pieces = await trio.to_thread.run_sync(stream_through)
    assert pieces == ["first ", "second"]
    await spy.stop()
    with open_capture(tmp_path / "new") as capture:
        [recorded] = list(capture.exchanges())
    facts = analyze_exchange(recorded).facts
    assert facts.streamed and facts.terminated and facts.text == "first second"
    assert b"Bearer sk" not in recorded.request.head  # credentials redacted, as the proxy does
    assert b"authorization" in recorded.request.head.lower()


async def test_a_second_serve_over_capture_and_out_answers_both_offline(nursery, tmp_path):
    upstream = Upstream()
    await nursery.start(upstream.server.run)
    out = tmp_path / "new"
    spy, server = await start_spy(nursery, upstream, out, RECORDED)
    async with httpx.AsyncClient(base_url=f"{server.url}/openai/v1") as client:
        first = await client.post("/chat/completions", json=NEW_JSON)
    await spy.stop()
    assert len(upstream.requests) == 1

    offline = await start_mock(nursery, RECORDED, out)  # --miss error: nothing is forwarded
    base = f"{offline.url}/openai/v1"
    assert await trio.to_thread.run_sync(say_hello, base) == "Hello there!"
    async with httpx.AsyncClient(base_url=base) as client:
        again = await client.post("/chat/completions", json=NEW_JSON)
        unknown = await client.post("/chat/completions", json={**NEW_JSON, "model": "other"})
    assert again.status_code == 200 and again.content == first.content
    assert unknown.status_code == 404
    assert len(upstream.requests) == 1 and len(offline.misses) == 1


async def test_a_route_target_takes_its_prefix_off(nursery, tmp_path):
    """``forward=/openai/=URL``: a capture recorded through the proxy's ``/openai/`` route keeps
    that prefix in its paths; the forwarded request reaches the upstream without it."""
    upstream = Upstream()
    await nursery.start(upstream.server.run)
    spy = SpyForwarder(f"/openai/={upstream.server.url}", tmp_path / "new")
    await nursery.start(spy.run)
    server = await start_mock(nursery, RECORDED, miss_handler=spy.relay)
    async with httpx.AsyncClient(base_url=f"{server.url}/openai/v1") as client:
        answer = await client.post("/chat/completions", json=NEW_JSON)
    assert answer.status_code == 200
    assert [r.target for r in upstream.requests] == ["/v1/chat/completions"]
    await spy.stop()


async def test_an_upstream_that_cannot_be_reached_is_a_recorded_502(nursery, tmp_path):
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # a port nothing listens on
    spy = SpyForwarder(f"http://127.0.0.1:{port}/", tmp_path / "new")
    await nursery.start(spy.run)
    server = await start_mock(nursery, RECORDED, miss_handler=spy.relay)
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer = await client.post("/v1/chat/completions", json=NEW_JSON)
    assert answer.status_code == 502
    await spy.stop()
    with open_capture(tmp_path / "new") as capture:
        [recorded] = list(capture.exchanges())
    assert recorded.status == 502


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("error", None),
        ("forward=http://127.0.0.1:9/", "http://127.0.0.1:9/"),
        ("forward=/openai/=http://127.0.0.1:9/", "/openai/=http://127.0.0.1:9/"),
        ("forward=presets", "presets"),
    ],
)
def test_parse_miss(value, expected):
    assert parse_miss(value) == expected


@pytest.mark.parametrize(
    "value", ["forward", "forward=", "forward=ftp://x/", "forward=/openai/", "retry", "error=1"]
)
def test_parse_miss_refuses_what_it_cannot_do(value):
    with pytest.raises(ValueError, match=r"."):
        parse_miss(value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--miss", "forward=http://127.0.0.1:9/"], "needs --out"),
        (["--out", "somewhere"], "needs --fault SPEC or --miss forward=URL"),
        (["--miss", "bounce"], "not 'error' or 'forward=URL'"),
    ],
)
def test_serve_refuses_half_a_spy_setup_in_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["serve", str(RECORDED), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


async def test_wirecap_serve_spy_command_records_and_indexes_on_sigterm(nursery, tmp_path):
    upstream = Upstream()
    await nursery.start(upstream.server.run)
    out = tmp_path / "new"
    process, banner = await start_recording_serve(
        str(RECORDED),
        "--timing",
        "none",
        "--miss",
        f"forward={upstream.server.url}",
        "--out",
        str(out),
        hang_guard=HANG_GUARD,
    )
    err = banner.encode()
    with trio.fail_after(HANG_GUARD):
        url = banner.split("wirecap serve on ", 1)[1].split(":", 2)
        base = f"{url[0]}:{url[1]}:{url[2].split(':')[0]}"
        async with httpx.AsyncClient(base_url=base) as client:
            hit = await client.post(
                "/openai/v1/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "Say hello"}],
                },
            )
            miss = await client.post("/openai/v1/chat/completions", json=NEW_JSON)
        out_text, more = await stop_and_read(process, signal.SIGTERM)
        err += more
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"1 request forwarded" in err, err.decode()
    assert hit.status_code == 200 and miss.status_code == 200
    assert len(upstream.requests) == 1
    assert b"-> forwarded 200" in out_text
    [segment] = segment_paths(out)
    with CaptureFile(segment) as f:
        assert f.indexed
    result = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert result.exit_code == 0
    [row] = [json.loads(line) for line in result.output.splitlines()]
    assert row["status"] == 200
