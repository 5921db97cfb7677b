"""wirecap import of VCR cassettes that vcrpy itself recorded of the real openai SDK, and of the
other cassette shapes (JSON serializer, base64 bodies, Ruby VCR); then inspect, detect-issues,
serve and replay on the result."""

from __future__ import annotations

import functools
import gzip
import json
import stat
import sys

import trio
from fake_llm import CHAT_JSON, chat_stream_events, llm_upstream
from interop_tools import API_KEY, gzip_llm_upstream, record_cassette, run, sdk_calls

from wirecap.capture import open_capture
from wirecap.replay.serve import MockServer, load_catalog


def imported(out):
    with open_capture(out) as capture:
        return list(capture.exchanges())


async def test_vcrpy_cassette_imports_with_provenance_and_facts(cassette, tmp_path):
    out = tmp_path / "captures"
    result = run("import", cassette, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"{cassette}: 2 exchanges (vcr)" in result.output
    [segment] = out.iterdir()
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    first, second = imported(out)
    # the gzip answer is stored coded, as it crossed the wire, under its own Content-Encoding
    assert b"content-encoding: gzip" in first.response.head.lower()
    assert gzip.decompress(first.response_body) == json.dumps(CHAT_JSON).encode()
    assert second.response_body.replace(b"\r\n", b"\n").count(b"data: ") == 6
    [note] = first.notes_of("import")
    assert note["source"] == "vcr" and note["file"] == str(cassette) and note["entry"] == 0
    assert {"head rebuilt", "no timing"} <= set(note["approximate"])
    assert second.notes_of("import")[0]["entry"] == 1
    # credentials are redacted as the proxy redacts them
    assert API_KEY.encode() not in first.request.head
    rows = [json.loads(line) for line in run("inspect", out, "--json").output.splitlines()]
    assert [r["model"] for r in rows] == ["gpt-4o-mini-2024-07-18"] * 2
    assert [r["streamed"] for r in rows] == [False, True]
    assert [r["input_tokens"] for r in rows] == [9, None]
    detail = run("inspect", out, "--id", second.id).output
    assert "Hello world" in detail
    issues = run("inspect", out, "--detect-issues")
    assert issues.exit_code == 0, issues.output


async def test_serve_answers_the_sdk_from_an_imported_cassette(cassette, tmp_path, nursery):
    out = tmp_path / "captures"
    assert run("import", cassette, "-o", out).exit_code == 0
    with open_capture(out) as capture:
        catalog = load_catalog(capture, match_on=("method", "path", "body"))
    server = MockServer(catalog, speed=None)
    await nursery.start(server.run)
    answers = await trio.to_thread.run_sync(sdk_calls, f"{server.url}/v1")
    assert answers == ("Hello there!", "Hello world")
    assert server.misses == []


async def test_replay_of_an_imported_cassette_passes_against_the_backend(
    cassette, tmp_path, start_upstream
):
    out = tmp_path / "captures"
    assert run("import", cassette, "-o", out).exit_code == 0
    # a backend that answers the same JSON uncoded: replay compares the recorded answer decoded
    upstream = await start_upstream(llm_upstream)
    result = await trio.to_thread.run_sync(
        lambda: run("replay", out, "--target", upstream.url, "--json")
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["verdict"] for r in report["exchanges"]] == ["PASS", "PASS"], report


def write(path, text: str):
    path.write_text(text)
    return path


def test_json_serializer_base64_and_ruby_shapes(tmp_path):
    stream = b"".join(chat_stream_events()).decode()
    json_cassette = {
        "version": 1,
        "interactions": [
            {
                "request": {
                    "method": "POST",
                    "uri": "https://api.openai.com/v1/chat/completions",
                    "body": '{"model": "gpt-4o-mini", "stream": true}',
                    "headers": {"Content-Type": ["application/json"]},
                },
                "response": {
                    "status": {"code": 200, "message": "OK"},
                    "headers": {"Content-Type": ["text/event-stream"]},
                    "body": {"string": stream},
                },
            }
        ],
    }
    ruby = (
        "---\nhttp_interactions:\n- request:\n    method: get\n"
        "    uri: https://api.example.com/v1/models\n    body:\n      encoding: UTF-8\n"
        "      string: ''\n    headers:\n      Accept:\n      - application/json\n"
        "  response:\n    status:\n      code: 200\n      message: OK\n    headers:\n"
        "      Content-Type:\n      - application/json\n    body:\n      encoding: ASCII-8BIT\n"
        '      base64_string: eyJkYXRhIjogW119\n    http_version: "1.1"\n'
        "  recorded_at: Tue, 01 Nov 2011 04:58:44 GMT\nrecorded_with: VCR 6.1.0\n"
    )
    files = [write(tmp_path / "a.json", json.dumps(json_cassette)), write(tmp_path / "b.yml", ruby)]
    out = tmp_path / "out"
    result = run("import", *files, "-o", out)
    assert result.exit_code == 0, result.output
    streamed, listed = imported(out)
    assert streamed.response_body == stream.encode()
    assert len(streamed.response_chunks) == 6  # one read per event
    assert "body re-chunked" in streamed.notes_of("import")[0]["approximate"]
    assert listed.method == "GET" and listed.response_body == b'{"data": []}'
    assert listed.wall_ns == 1320123524 * 10**9  # recorded_at
    assert "start time from the file's date" in streamed.notes_of("import")[0]["approximate"]


async def test_bad_and_unknown_files_are_one_line_errors_that_write_nothing(tmp_path, cassette):
    out = tmp_path / "out"
    unknown = write(tmp_path / "notes.txt", "hello\n")
    result = run("import", cassette, unknown, "-o", out)
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"Error: {unknown}: not a HAR file, VCR cassette or mitmproxy flow file "
        "(--format says which it is, if it is one)"
    ]
    assert not out.exists()
    broken = write(tmp_path / "broken.yaml", "interactions:\n- request: [unclosed\n")
    result = run("import", cassette, broken, "-o", out)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"Error: {broken}: not a readable YAML cassette" in result.output
    assert result.output.rstrip().endswith("nothing was written")
    assert not out.exists()  # the first cassette's exchanges were removed with the segment
    forced = run("import", cassette, "-o", out, "--format", "har")
    assert forced.exit_code == 1 and "Traceback" not in forced.output


def test_skipped_interactions_are_counted_with_the_reason(tmp_path):
    cassette = {
        "interactions": [
            {"request": {"method": "GET", "uri": "/relative"}, "response": {"status": 200}},
            {"request": {"method": "GET", "uri": "http://h/x"}},
            {
                "request": {"method": "GET", "uri": "http://h/y"},
                "response": {"status": {"code": 204}, "headers": {}, "body": {"string": ""}},
            },
        ]
    }
    path = write(tmp_path / "c.json", json.dumps(cassette))
    result = run("import", path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "1 exchange (vcr), 2 skipped:" in result.output
    assert "1 not an absolute http(s) URL: '/relative'" in result.output
    assert "1 an interaction without request and response" in result.output


async def test_without_pyyaml_a_yaml_cassette_names_the_extra(cassette, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    result = run("import", cassette, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {cassette}: reading VCR cassettes needs PyYAML: "
        "pip install 'wirecap[vcr]'; nothing was written\n"
    )


async def test_two_imports_into_one_directory_make_two_segments(cassette, tmp_path):
    out = tmp_path / "out"
    assert run("import", cassette, "-o", out).exit_code == 0
    assert run("import", cassette, "-o", out).exit_code == 0
    assert len(list(out.iterdir())) == 2
    assert len(imported(out)) == 4


async def test_no_redact_keeps_credentials_and_says_so_in_the_header(cassette, tmp_path):
    out = tmp_path / "out"
    assert run("import", cassette, "-o", out, "--no-redact").exit_code == 0
    first = imported(out)[0]
    assert f"Bearer {API_KEY}".encode() in first.request.head
    with open_capture(out) as capture:
        [segment] = capture.files
        assert segment.header.redaction["enabled"] is False


async def test_vcrpy_json_serializer_with_decoded_answers(tmp_path, start_upstream):
    upstream = await start_upstream(gzip_llm_upstream)
    path = tmp_path / "cassette.json"
    options = {"serializer": "json", "decode_compressed_response": True}
    answers = await trio.to_thread.run_sync(
        functools.partial(record_cassette, path, f"{upstream.url}v1", **options)
    )
    assert answers == ("Hello there!", "Hello world")
    assert json.loads(path.read_text())["interactions"]  # vcrpy wrote JSON
    out = tmp_path / "out"
    result = run("import", path, "-o", out)
    assert result.exit_code == 0, result.output
    first, _stream = imported(out)
    assert b"gzip" not in first.response.head.lower()  # vcrpy decoded it and dropped the header
    assert json.loads(first.response_body) == CHAT_JSON
    rows = [json.loads(line) for line in run("inspect", out, "--json").output.splitlines()]
    assert [r["finish_reason"] for r in rows] == ["stop", "stop"]
