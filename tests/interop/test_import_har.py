"""HAR import: a round trip through wirecap's own export (same method, URL, headers, bodies and
status, and the stream's chunk timing back), and HAR as browsers write it."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import trio
from fake_llm import anthropic_calls, llm_upstream, openai_calls
from interop_tools import run

from wirecap.capture import open_capture


def entries(path):
    return json.loads(path.read_text())["log"]["entries"]


TIMES = {"ttft_ms", "tokens_per_second"}


def essentials(entry):
    request, response = entry["request"], entry["response"]
    return {
        "method": request["method"],
        "url": request["url"],
        "request_headers": request["headers"],
        "request_body": request.get("postData", {}).get("text"),
        "status": response["status"],
        "response_headers": response["headers"],
        "response_body": response["content"].get("text"),
        # facts but times: HAR keeps them to the microsecond
        "llm": {k: v for k, v in entry["_llm"].items() if k not in TIMES},
    }


async def test_har_round_trip_keeps_method_url_headers_bodies_status(
    start_upstream, start_proxy, tmp_path
):
    upstream = await start_upstream(llm_upstream)
    proxy = await start_proxy(routes=[f"/openai/={upstream.url}", f"/anthropic/={upstream.url}"])
    await trio.to_thread.run_sync(openai_calls, f"{proxy.url}/openai/v1")
    await trio.to_thread.run_sync(anthropic_calls, f"{proxy.url}/anthropic")
    await proxy.stop()
    first, second = tmp_path / "first.har", tmp_path / "second.har"
    assert run("export", proxy.out, "--format", "har", "-o", first).exit_code == 0
    result = run("import", first, "-o", tmp_path / "imported")
    assert result.exit_code == 0, result.output
    assert f"{first}: 4 exchanges (har)" in result.output
    assert run("export", tmp_path / "imported", "--format", "har", "-o", second).exit_code == 0
    before, after = entries(first), entries(second)
    assert [essentials(e) for e in after] == [essentials(e) for e in before]
    assert [e["startedDateTime"] for e in after] == [e["startedDateTime"] for e in before]
    # the streams' reads come back with their times (from the _chunks timeline)
    for old, new in zip(before, after, strict=True):
        assert abs((new["_llm"]["ttft_ms"] or 0) - (old["_llm"]["ttft_ms"] or 0)) <= 0.002
        # the streams' reads come back with their sizes and times (HAR keeps times to the µs)
        reads = [(c["ms"], c["payload"]) for c in old["_chunks"] if c["dir"] == "res"]
        again = [(c["ms"], c["payload"]) for c in new["_chunks"] if c["dir"] == "res"]
        assert [n for _, n in again] == [n for _, n in reads]
        assert all(abs(a - b) <= 0.002 for (a, _), (b, _) in zip(again, reads, strict=True))
    with open_capture(tmp_path / "imported") as capture:
        notes = [e.notes_of("import")[0] for e in capture.exchanges()]
    assert [n["entry"] for n in notes] == [0, 1, 2, 3]
    assert all("no chunk timing" not in n["approximate"] for n in notes)


def devtools_har(tmp_path):
    """A HAR as Chrome saves it: HTTP/2 pseudo-headers, bodies stored decoded under their
    Content-Encoding, a failed request with status 0, a WebSocket entry."""
    answer = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    def entry(**over):
        base = {
            "startedDateTime": "2024-05-01T10:00:00.123Z",
            "time": 30.5,
            "request": {
                "method": "POST",
                "url": "https://api.openai.com/v1/chat/completions",
                "httpVersion": "h2",
                "headers": [
                    {"name": ":authority", "value": "api.openai.com"},
                    {"name": ":method", "value": "POST"},
                    {"name": "content-type", "value": "application/json"},
                    {"name": "authorization", "value": "Bearer sk-proj-abcdefghijklmnopqrstuvwxyz"},
                ],
                "postData": {"mimeType": "application/json", "text": '{"model": "gpt-4o"}'},
            },
            "response": {
                "status": 200,
                "statusText": "",
                "httpVersion": "h2",
                "headers": [
                    {"name": "content-type", "value": "application/json"},
                    {"name": "content-encoding", "value": "br"},
                    {"name": "content-length", "value": "120"},
                ],
                "content": {
                    "size": 200,
                    "mimeType": "application/json",
                    "text": json.dumps(answer),
                },
            },
            "timings": {"blocked": 1, "dns": -1, "send": 0.5, "wait": 25, "receive": 5},
        }
        base.update(over)
        return base

    gzipped = base64.b64encode(gzip.compress(json.dumps(answer).encode())).decode()
    failed = entry()
    failed["response"] = {"status": 0, "headers": [], "content": {"size": 0}}
    coded = entry()
    coded["response"] = {
        **coded["response"],
        "headers": [
            {"name": "content-type", "value": "application/json"},
            {"name": "content-encoding", "value": "gzip"},
        ],
        "content": {"size": 200, "text": gzipped, "encoding": "base64"},
    }
    socket = entry(_webSocketMessages=[{"type": "send", "data": "x"}])
    socket["request"] = {
        "method": "GET",
        "url": "wss://example.com/ws",
        "headers": [
            {"name": "Upgrade", "value": "websocket"},
            {"name": "Connection", "value": "Upgrade"},
        ],
    }
    socket["response"] = {"status": 101, "headers": [{"name": "Upgrade", "value": "websocket"}]}
    path = tmp_path / "devtools.har"
    path.write_text(
        json.dumps({"log": {"version": "1.2", "entries": [entry(), failed, coded, socket]}})
    )
    return path


def test_devtools_har_imports_decoded_bodies_and_skips_what_has_no_answer(tmp_path):
    path = devtools_har(tmp_path)
    out = tmp_path / "out"
    result = run("import", path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "2 exchanges (har), 2 skipped:" in result.output
    assert "1 no usable response (status 0)" in result.output
    assert "1 no usable response (status 101)" in result.output
    with open_capture(out) as capture:
        plain, coded = capture.exchanges()
    assert plain.request.head.startswith(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
    )
    assert b":authority" not in plain.request.head
    assert b"sk-proj-abcdefghijklmnopqrstuvwxyz" not in plain.request.head
    assert b"content-encoding" not in plain.response.head.lower()
    approximate = plain.notes_of("import")[0]["approximate"]
    assert "response Content-Encoding br dropped (body stored decoded)" in approximate
    assert "response Content-Length corrected" in approximate
    assert "HTTP/2 written as HTTP/1.1" in approximate
    assert plain.ttfb_ns == 25_500_000 and plain.duration_ns == 30_500_000
    assert b"content-encoding: gzip" in coded.response.head
    rows = [json.loads(line) for line in run("inspect", out, "--json").output.splitlines()]
    assert [(r["model"], r["output_tokens"]) for r in rows] == [("gpt-4o", 1)] * 2
    assert run("inspect", out, "--detect-issues").exit_code == 0


MITM_HAR = Path(__file__).parent.parent / "data" / "mitmproxy" / "llm.har"


def test_mitmproxy_har_export_imports_like_the_flows_it_came_from(tmp_path):
    from_har, from_flows = tmp_path / "har", tmp_path / "flows"
    result = run("import", MITM_HAR, "-o", from_har)
    assert result.exit_code == 0, result.output
    assert "5 exchanges (har), 1 skipped: 1 no usable response (status 0)" in result.output
    assert run("import", MITM_HAR.with_suffix(".mitm"), "-o", from_flows).exit_code == 0

    def seen(out):
        rows = [json.loads(line) for line in run("inspect", out, "--json").output.splitlines()]
        keys = ("method", "path", "status", "model", "output_tokens", "finish_reason")
        return [{k: r[k] for k in keys} for r in rows]

    assert seen(from_har) == seen(from_flows)
    with open_capture(from_har) as capture:
        *_, upload = capture.exchanges()
    assert upload.request_body == bytes(range(256))  # saved as text, one character a byte
