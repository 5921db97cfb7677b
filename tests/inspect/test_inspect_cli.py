"""inspect, --detect-issues, stats and export on captures recorded through the real proxy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import samples
import trio
from click.testing import CliRunner
from fake_llm import anthropic_calls, llm_upstream

from wirecap.cli import main

ROOT = Path(__file__).parent.parent.parent


def run(*args: str):
    return CliRunner().invoke(main, list(args))


async def record_sdk_traffic(start_upstream, start_proxy) -> Path:
    """Clean traffic from the real openai and anthropic SDKs, JSON and streaming."""
    import openai

    upstream = await start_upstream(llm_upstream)
    proxy = await start_proxy(routes=[f"/openai/={upstream.url}", f"/anthropic/={upstream.url}"])

    def openai_calls(base_url: str) -> None:
        client = openai.OpenAI(
            base_url=base_url, api_key="sk-test-0123456789abcdefghij", max_retries=0
        )
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass
        client.close()

    await trio.to_thread.run_sync(openai_calls, f"{proxy.url}/openai/v1")
    await trio.to_thread.run_sync(anthropic_calls, f"{proxy.url}/anthropic")
    await proxy.stop()
    return proxy.out


async def test_clean_sdk_traffic_has_no_error_findings_and_a_full_table(
    start_upstream, start_proxy
):
    out = await record_sdk_traffic(start_upstream, start_proxy)
    result = await trio.to_thread.run_sync(run, "inspect", str(out), "--detect-issues")
    assert result.exit_code == 0, result.output
    assert "ERROR" not in result.output

    table = await trio.to_thread.run_sync(run, "inspect", str(out))
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split()[:6] == ["time", "id", "method", "status", "model", "duration"]
    assert (
        len(lines) == 5 and "claude-wirecap-test" in table.output and "gpt-4o-mini" in table.output
    )

    rows = [
        json.loads(line)
        for line in (
            await trio.to_thread.run_sync(run, "inspect", str(out), "--json")
        ).output.splitlines()
    ]
    assert [r["api"] for r in rows] == [
        "openai.chat",
        "openai.chat",
        "anthropic.messages",
        "anthropic.messages",
    ]
    assert [r["streamed"] for r in rows] == [False, True, False, True]
    assert (
        rows[0]["input_tokens"] == 9
        and rows[0]["output_tokens"] == 3
        and rows[0]["finish_reason"] == "stop"
    )
    assert all(r["ttft_ms"] is not None and r["status"] == 200 for r in rows)

    detail = await trio.to_thread.run_sync(run, "inspect", str(out), "--id", rows[1]["id"])
    assert detail.exit_code == 0
    assert (
        "--- request as received" in detail.output
        and "--- answer (openai.chat, streamed)" in detail.output
    )
    assert "Hello world" in detail.output and "--- timeline" in detail.output
    assert '"model": "gpt-4o-mini"' in detail.output  # the request body, pretty-printed

    stats = await trio.to_thread.run_sync(run, "stats", str(out), "--json")
    groups = [json.loads(line) for line in stats.output.splitlines()]
    assert {(g["route"], g["requests"]) for g in groups} >= {("/anthropic", 2)}
    assert all(g["error_rate"] == 0 and g["ttft_ms"]["p50"] is not None for g in groups), [
        (g["model"], g["error_rate"], g["ttft_ms"]["p50"]) for g in groups
    ]


async def test_detect_issues_on_a_broken_capture(start_upstream, start_proxy):
    async def broken(ex):
        body = json.loads(await ex.read_body())
        if body.get("case") == "500":
            return await ex.respond(
                500, b'{"error": {"message": "overloaded"}}', [("Content-Type", "application/json")]
            )
        if body.get("case") == "429":
            return await ex.respond(
                429,
                b'{"error": {"message": "slow down"}}',
                [("Content-Type", "application/json"), ("Retry-After", "3")],
            )
        await ex.send_head(200, [("Content-Type", "text/event-stream")])
        for chunk in samples.chat_stream(done=False, usage=False):
            await ex.send_data(chunk)
        await ex.end()

    upstream = await start_upstream(broken)
    proxy = await start_proxy(upstream=upstream.url)
    import httpx

    async with httpx.AsyncClient() as client:
        for case in ("500", "429", "cut"):
            await client.post(
                f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "case": case}
            )
    await proxy.stop()
    out = str(proxy.out)

    text = await trio.to_thread.run_sync(run, "inspect", out, "--detect-issues")
    assert text.exit_code == 1
    assert text.output.index("ERROR") < text.output.index("WARNING")
    findings = [
        json.loads(line)
        for line in (
            await trio.to_thread.run_sync(run, "inspect", out, "--detect-issues", "--json")
        ).output.splitlines()
    ]
    assert all(set(f) == {"code", "severity", "id", "message"} for f in findings)
    assert {f["code"] for f in findings} >= {"http-error", "rate-limited", "truncated-stream"}
    assert any("retry-after 3" in f["message"] for f in findings if f["code"] == "rate-limited")

    only_warnings = await trio.to_thread.run_sync(
        run, "inspect", out, "--detect-issues", "--status", "429"
    )
    assert only_warnings.exit_code == 0 and "rate-limited" in only_warnings.output
    strict = await trio.to_thread.run_sync(
        run, "inspect", out, "--detect-issues", "--status", "429", "--fail-on", "warning"
    )
    assert strict.exit_code == 1

    five = await trio.to_thread.run_sync(run, "inspect", out, "--json", "--status", ">=500")
    assert [json.loads(line)["status"] for line in five.output.splitlines()] == [500]
    none = await trio.to_thread.run_sync(
        run, "inspect", out, "--json", "--since", "2000-01-01", "--until", "2000-01-02"
    )
    assert none.exit_code == 0 and none.stdout == "" and none.stderr == "0 exchanges match\n"
    model = await trio.to_thread.run_sync(run, "inspect", out, "--json", "--model", "gpt-4o*")
    assert len(model.output.splitlines()) == 3
    bad = await trio.to_thread.run_sync(run, "inspect", out, "--status", "fivehundred")
    assert bad.exit_code == 2 and "bad status filter" in bad.output

    script = await trio.run_process(
        [
            sys.executable,
            str(ROOT / "scripts" / "inspect_cbor_capture.py"),
            out,
            "--detect-issues",
            "--json",
        ],
        capture_stdout=True,
        check=False,
    )
    assert script.returncode == 1
    assert [json.loads(line) for line in script.stdout.decode().splitlines()] == findings


async def test_export_har_and_jsonl(start_upstream, start_proxy, tmp_path):
    out = await record_sdk_traffic(start_upstream, start_proxy)
    har_path = tmp_path / "capture.har"
    result = await trio.to_thread.run_sync(
        run, "export", str(out), "--format", "har", "-o", str(har_path)
    )
    assert result.exit_code == 0, result.output
    har = json.loads(har_path.read_text())
    assert har["log"]["version"] == "1.2" and len(har["log"]["entries"]) == 4
    for entry in har["log"]["entries"]:
        t = entry["timings"]
        assert abs(entry["time"] - (t["send"] + t["wait"] + t["receive"])) < 0.01
        assert t["dns"] == -1 and t["wait"] >= 0 and t["receive"] >= 0
        assert entry["startedDateTime"].endswith("Z") and entry["request"]["url"].startswith(
            "http://127.0.0.1:"
        )
        assert entry["response"]["status"] == 200 and entry["response"]["content"]["text"]
        assert entry["_chunks"] and {c["dir"] for c in entry["_chunks"]} == {"req", "res"}
    assert har["log"]["entries"][1]["response"]["content"]["mimeType"] == "text/event-stream"

    jsonl_path = tmp_path / "capture.jsonl"
    result = await trio.to_thread.run_sync(
        run, "export", str(out), "--format", "jsonl", "-o", str(jsonl_path)
    )
    records = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert len(records) == 4 and records[3]["llm"]["text"] == "Bonjour"
    assert records[0]["request_head"].startswith("POST /openai/v1/chat/completions HTTP/1.1")


def test_inspect_the_fixtures():
    fixtures = str(ROOT / "fixtures")
    rows = [json.loads(line) for line in run("inspect", fixtures, "--json").output.splitlines()]
    assert {r["api"] for r in rows} == {
        "openai.chat",
        "openai.responses",
        "anthropic.messages",
        "ollama.chat",
        "openai.realtime",
    }
    findings = [
        json.loads(line)
        for line in run("inspect", fixtures, "--detect-issues", "--json").output.splitlines()
    ]
    assert sorted(f["code"] for f in findings) == [
        "rate-limited",
        "truncated-stream",
        "upstream-failure",
    ]
