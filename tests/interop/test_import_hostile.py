"""Imports of files a capture cannot hold as they are: times out of range, numbers too large,
credentials in URLs; and exports that would overwrite what they read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from interop_tools import run

from wirecap.capture import open_capture

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"


def har(path: Path, **entry_changes) -> Path:
    entry = {
        "startedDateTime": "2024-05-01T10:00:00.000Z",
        "time": 12,
        "request": {
            "method": "POST",
            "url": "https://api.openai.com/v1/chat/completions",
            "httpVersion": "HTTP/1.1",
            "headers": [{"name": "Content-Type", "value": "application/json"}],
            "postData": {"mimeType": "application/json", "text": '{"model": "gpt-4o"}'},
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "headers": [{"name": "Content-Type", "value": "application/json"}],
            "content": {"mimeType": "application/json", "text": '{"model": "gpt-4o"}'},
        },
        "timings": {"send": 1, "wait": 10, "receive": 1},
    }
    entry.update(entry_changes)
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": [entry]}}))
    return path


@pytest.mark.parametrize(
    "changes",
    [
        {"startedDateTime": "9999-12-31T23:59:59.000Z"},
        {"startedDateTime": "0001-01-01T00:00:00.000Z"},
        {"timings": {"send": 1, "wait": 1e20, "receive": 1}},
    ],
)
def test_an_entry_whose_times_a_capture_cannot_hold_is_skipped_with_the_reason(tmp_path, changes):
    result = run("import", har(tmp_path / "x.har", **changes), "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output  # nothing imported
    assert "1 skipped" in result.output and "time" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("status", [1e400, "a lot"])
def test_a_file_with_impossible_numbers_is_a_one_line_error(tmp_path, status):
    path = tmp_path / "x.har"
    har(path)
    path.write_text(path.read_text().replace('"status": 200', f'"status": {json.dumps(status)}'))
    result = run("import", path, "-o", tmp_path / "out")
    # Skipped, or the file refused in one line: exit 1 either way, never an exception.
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert not (tmp_path / "out").exists()


def test_a_password_in_a_url_is_not_kept(tmp_path):
    url = "https://bob:hunter2pass@api.openai.com/v1/chat/completions"
    request = {
        "method": "POST",
        "url": url,
        "httpVersion": "HTTP/1.1",
        "headers": [],
        "postData": {"mimeType": "application/json", "text": "{}"},
    }
    result = run("import", har(tmp_path / "x.har", request=request), "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    [segment] = (tmp_path / "out").iterdir()
    with open_capture(segment) as capture:
        assert not any("hunter2pass" in repr(record) for record in capture.records())
        [exchange] = capture.exchanges()
        assert b"hunter2pass" not in exchange.upstream_request_bytes()
        assert exchange.upstream_url == "https://api.openai.com/v1/chat/completions"
        assert (
            "user and password left out of the URL" in exchange.notes_of("import")[0]["approximate"]
        )


@pytest.mark.parametrize("fmt", ["jsonl", "har", "parquet"])
def test_export_refuses_to_write_over_a_capture_it_reads(tmp_path, fmt):
    capture = tmp_path / "c.cbor.zst"
    shutil.copy(FIXTURES / "openai_chat_json.cbor.zst", capture)
    before = capture.read_bytes()
    result = run("export", capture, "--format", fmt, "-o", capture)
    assert result.exit_code == 2 and "is a capture file being read" in result.output
    assert capture.read_bytes() == before
