"""export --format vcr: a cassette vcrpy itself loads and plays back to the openai SDK;
--format curl: a bash script whose curl commands send the recorded requests again."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from interop_tools import API_KEY, gzip_llm_upstream, run, sdk_calls

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"


async def record_through_proxy(start_upstream, start_proxy, handler=gzip_llm_upstream):
    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    return upstream, proxy


async def test_vcr_export_plays_back_to_the_openai_sdk_with_vcrpy(
    start_upstream, start_proxy, tmp_path
):
    import vcr

    upstream, proxy = await record_through_proxy(start_upstream, start_proxy)
    answers = await trio.to_thread.run_sync(sdk_calls, f"{proxy.url}/v1")
    await proxy.stop()
    cassette = tmp_path / "chat.yaml"
    result = run("export", proxy.out, "--format", "vcr", "-o", cassette)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(cassette.stat().st_mode) == 0o600
    document = yaml.safe_load(cassette.read_text())
    assert len(document["interactions"]) == 2
    first = document["interactions"][0]
    assert isinstance(first["response"]["body"]["string"], bytes)  # gzip: !!binary
    assert first["request"]["headers"]["authorization"][0].startswith("Bearer [redacted")
    # the proxy's recorded upstream URL is what the cassette answers for
    base = first["request"]["uri"].removesuffix("/chat/completions")

    def play() -> tuple[tuple[str, str], int]:
        recorder = vcr.VCR(record_mode="none")
        with recorder.use_cassette(str(cassette)) as played:
            got = sdk_calls(base)
            return got, played.play_count

    before = len(upstream.requests)
    assert await trio.to_thread.run_sync(play) == (answers, 2)
    assert len(upstream.requests) == before  # nothing reached the backend


async def test_vcr_export_imports_back_to_the_same_exchanges(cassette, tmp_path):
    out, again, second = tmp_path / "a", tmp_path / "again.yaml", tmp_path / "b"
    assert run("import", cassette, "-o", out).exit_code == 0
    assert run("export", out, "--format", "vcr", "-o", again).exit_code == 0
    assert run("import", again, "-o", second).exit_code == 0
    rows = [
        [
            {k: r[k] for k in ("method", "path", "status", "model", "finish_reason", "streamed")}
            for r in map(json.loads, run("inspect", d, "--json").output.splitlines())
        ]
        for d in (out, second)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 2


async def echo(ex):
    body = await ex.read_body()
    await ex.respond(200, body, [("Content-Type", "application/octet-stream")])


async def test_curl_script_sends_the_recorded_requests_again(start_upstream, start_proxy, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("the curl command is not installed (.ci/run installs it)")
    upstream, proxy = await record_through_proxy(start_upstream, start_proxy, echo)
    text = b'{"q": "it\'s \\\\ $HOME `id` \\n\\u00e9"}\n\t'
    bodies = [text, bytes(range(256)), b"x" * 100_000, b""]

    def send() -> None:
        with httpx.Client(base_url=proxy.url) as client:
            headers = {"Authorization": f"Bearer {API_KEY}", "X-Quote": 'a\'b "c" $(d)'}
            for i, body in enumerate(bodies):
                client.request(
                    "POST" if body else "GET", f"/v1/x?n={i}&y=a b", content=body, headers=headers
                )

    await trio.to_thread.run_sync(send)
    await proxy.stop()
    script = tmp_path / "again.sh"
    result = run("export", proxy.out, "--format", "curl", "-o", script)
    assert result.exit_code == 0, result.output
    assert "4 exchanges written" in result.output
    source = script.read_text()
    assert API_KEY not in source and "Bearer [redacted sha256:" in source
    recorded = list(upstream.requests)

    def replay() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["bash", str(script)], capture_output=True, timeout=120, check=False)

    done = await trio.to_thread.run_sync(replay)
    assert done.returncode == 0, done.stderr
    again = upstream.requests[len(recorded) :]
    assert [(r.method, r.target, r.body) for r in again] == [
        (r.method, r.target, r.body) for r in recorded
    ]
    for old, new in zip(recorded, again, strict=True):
        assert new.header("x-quote") == old.header("x-quote") == b'a\'b "c" $(d)'
        assert new.header("authorization").startswith(b"Bearer [redacted sha256:")
    assert done.stdout.startswith(text)  # the echo of the first body, byte for byte


def test_vcr_export_without_pyyaml_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    out = tmp_path / "x.yaml"
    result = run("export", FIXTURES / "openai_chat_json.cbor.zst", "--format", "vcr", "-o", out)
    assert result.exit_code == 1
    assert (
        result.output == "Error: writing VCR cassettes needs PyYAML: pip install 'wirecap[vcr]'\n"
    )
    assert not out.exists()


def test_curl_export_of_the_fixtures_is_valid_bash(tmp_path):
    script = tmp_path / "all.sh"
    assert run("export", FIXTURES, "--format", "curl", "-o", script).exit_code == 0
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False)
    assert check.returncode == 0, check.stderr
    text = script.read_text()
    sessions = 1  # openai_realtime_ws: a WebSocket session, named in a comment, not a command
    assert text.count("\ncurl -sS --request ") == len(list(FIXTURES.glob("*.zst"))) - sessions
    assert text.count("# a WebSocket session: curl cannot send it again") == sessions


def test_max_body_is_for_har_and_jsonl(tmp_path):
    result = run("export", FIXTURES, "--format", "curl", "--max-body", "1KiB", "-o", tmp_path / "x")
    assert result.exit_code == 2
    assert "--max-body applies to har and jsonl, not to curl" in result.output
    assert not (tmp_path / "x").exists()
