"""Everyday use of the command line: id prefixes, --last/--limit, binary bodies and long timelines,
colour, empty results, private exports, `index DIR`, serve's request log, messages."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from captures import Spec, write_capture
from click.testing import CliRunner

from wirecap.capture import frames, open_capture
from wirecap.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str, **env: str):
    return CliRunner().invoke(main, list(args), env=env or None)


@pytest.fixture
async def capture(tmp_path) -> Path:
    """Five exchanges: two ids share the start 'aaaa', one is a 500, one is binary audio in 60
    chunks with one long gap."""
    audio = [bytes(range(256))] * 60
    gaps = [1_000_000] * 60
    gaps[30] = 750_000_000
    specs = [
        Spec("aaaa00000001"),
        Spec("aaaa00000002", status=500),
        Spec("bbbb00000003", model="claude-x"),
        Spec(
            "cccc00000004",
            chunks=audio,
            gap_ns=gaps,
            content_type="audio/mpeg",
            path="/v1/audio/speech",
        ),
        Spec("dddd00000005", status=429),
    ]
    return await write_capture(tmp_path / "cap", specs)


def ids(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [json.loads(line)["id"] for line in result.stdout.splitlines()]


async def test_id_takes_any_unique_prefix_and_an_ambiguous_one_lists_the_candidates(capture):
    one = run("inspect", str(capture), "--id", "bbbb")
    assert one.exit_code == 0 and one.stdout.startswith("exchange bbbb00000003 ")
    ambiguous = run("inspect", str(capture), "--id", "aaaa")
    assert ambiguous.exit_code == 2
    assert (
        "Invalid value for '--id': 'aaaa' is the start of 2 exchange ids: "
        "aaaa00000001, aaaa00000002; give more of the id" in ambiguous.output
    )
    raw = run("inspect", str(capture), "--id", "aaaa00000002", "--raw", "response")
    assert raw.stdout_bytes.startswith(b"HTTP/1.1 500 X\r\n")


async def test_last_and_limit_on_inspect_stats_and_export(capture, tmp_path):
    every = ids(run("inspect", str(capture), "--json"))
    assert len(every) == 5
    assert ids(run("inspect", str(capture), "--json", "--last", "2")) == every[-2:]
    assert ids(run("inspect", str(capture), "--json", "--limit", "2")) == every[:2]
    # with a filter that needs the bodies (the model) and one that does not (the status)
    assert ids(run("inspect", str(capture), "--json", "--last", "1", "--model", "gpt*")) == [
        "dddd00000005"
    ]
    assert ids(run("inspect", str(capture), "--json", "--last", "1", "--status", "2xx")) == [
        "cccc00000004"
    ]
    findings = run("inspect", str(capture), "--detect-issues", "--json", "--last", "1")
    assert {json.loads(line)["id"] for line in findings.stdout.splitlines()} == {"dddd00000005"}
    stats = run("stats", str(capture), "--json", "--limit", "3")
    assert sum(json.loads(line)["requests"] for line in stats.stdout.splitlines()) == 3
    out = tmp_path / "last.jsonl"
    exported = run("export", str(capture), "--format", "jsonl", "-o", str(out), "--last", "2")
    assert exported.exit_code == 0 and "2 exchanges written" in exported.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == every[-2:]
    both = run("inspect", str(capture), "--last", "1", "--limit", "1")
    assert both.exit_code == 2 and "--last and --limit" in both.output


async def test_binary_bodies_are_named_and_long_timelines_summarised(capture):
    detail = run("inspect", str(capture), "--id", "cccc")
    assert detail.exit_code == 0
    text = detail.stdout
    assert "(binary, 15360 bytes, use --raw response)" in text
    assert "\x00" not in text and "\ufffd" not in text
    assert (
        "--- timeline (61 body chunks: the first and last 10, then the largest gaps; --full for all)"
        in text
    )
    assert "   ... 41 chunks not shown ..." in text
    gaps = text.split("--- largest gaps between chunks\n")[1].splitlines()
    assert len(gaps) == 5 and any("+ 750.000" in line and "#32" in line for line in gaps)
    assert len(text.splitlines()) < 60
    full = run("inspect", str(capture), "--id", "cccc", "--full")
    assert "--- timeline (61 body chunks)" in full.stdout
    assert len(re.findall(r" res +256 B", full.stdout)) == 60


async def test_colour_on_a_terminal_only(capture):
    forced = run("inspect", str(capture), FORCE_COLOR="1")
    assert "\x1b[" in forced.stdout
    assert ANSI.sub("", forced.stdout) == run("inspect", str(capture)).stdout  # piped: plain
    assert "\x1b[" not in run("inspect", str(capture), FORCE_COLOR="1", NO_COLOR="1").stdout
    issues = run("inspect", str(capture), "--detect-issues", FORCE_COLOR="1")
    assert "\x1b[31m\x1b[1mERROR (1)" in issues.stdout  # severities coloured

    def on_a_terminal(env: dict[str, str]) -> bytes:
        leader, follower = pty.openpty()
        with subprocess.Popen(
            [sys.executable, "-m", "wirecap", "inspect", str(capture)],
            stdout=follower,
            stderr=subprocess.DEVNULL,
            env=env,
        ) as process:
            os.close(follower)
            seen = b""
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed with the process
                    break
                if not chunk:
                    break
                seen += chunk
            process.wait(30)
        os.close(leader)
        return seen

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    assert b"\x1b[32m" in await trio.to_thread.run_sync(on_a_terminal, env)  # a 200, in green
    assert b"\x1b[" not in await trio.to_thread.run_sync(on_a_terminal, {**env, "NO_COLOR": "1"})


async def test_an_empty_result_says_so_on_stderr(capture, tmp_path):
    nothing = ("--status", "302")
    for command in (
        ["inspect", str(capture), *nothing],
        ["inspect", str(capture), "--json", *nothing],
        ["inspect", str(capture), "--detect-issues", *nothing],
        ["stats", str(capture), *nothing],
        ["export", str(capture), "--format", "har", "-o", str(tmp_path / "e.har"), *nothing],
    ):
        result = run(*command)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", "0 exchanges match\n")
    assert json.loads((tmp_path / "e.har").read_text())["log"]["entries"] == []


async def test_exports_and_reports_are_written_0600(capture, tmp_path):
    for fmt in ("har", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        out.write_text("old")
        out.chmod(0o644)
        result = run("export", str(capture), "--format", fmt, "-o", str(out))
        assert result.exit_code == 0, result.output
        assert out.stat().st_mode & 0o777 == 0o600 and "old" not in out.read_text()
    fresh = tmp_path / "fresh.har"
    run("export", str(capture), "--format", "har", "-o", str(fresh))
    assert fresh.stat().st_mode & 0o777 == 0o600


async def test_index_takes_a_directory_and_repairs_the_segments_that_need_it(capture, tmp_path):
    directory = tmp_path / "segments"
    directory.mkdir()
    data = capture.read_bytes()
    last_frame_end = max(
        f.end
        for f in frames.iter_frames(data)
        if isinstance(f, frames.FrameInfo) and f.kind == "data"
    )
    (directory / "a.cbor.zst").write_bytes(data)  # has its index
    (directory / "b.cbor.zst").write_bytes(data[:last_frame_end])  # a crash: no index
    result = run("index", str(directory))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{directory / 'a.cbor.zst'}: already indexed (5 exchanges)",
        f"{directory / 'b.cbor.zst'}: index written (5 exchanges)",
    ]
    with open_capture(directory / "b.cbor.zst") as repaired:
        assert repaired.files[0].indexed
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run("index", str(empty))
    assert nothing.exit_code == 1 and "no capture files" in nothing.output


async def test_serve_prints_one_line_per_request():
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "wirecap",
            "serve",
            str(FIXTURES / "openai_chat_json.cbor.zst"),
            "--listen",
            "127.0.0.1:0",
            "--timing",
            "none",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        banner = b""
        with trio.fail_after(30):
            while (match := re.search(rb"serve on (http://127\.0\.0\.1:\d+)", banner)) is None:
                chunk = await process.stderr.receive_some(4096)
                assert chunk, banner
                banner += chunk
        url = match.group(1).decode()
        assert b": 1 recorded answer\n" in banner
        async with httpx.AsyncClient() as client:
            hit = await client.post(
                f"{url}/openai/v1/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "Say hello"}],
                },
            )
            miss = await client.post(
                f"{url}/openai/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Bye"}]},
            )
        assert (hit.status_code, miss.status_code) == (200, 404)
        log = b""
        with trio.fail_after(30):
            while log.count(b"\n") < 3:
                log += await process.stdout.receive_some(4096)
    finally:
        process.terminate()
        with trio.fail_after(30):
            await process.wait()
    with open_capture(FIXTURES / "openai_chat_json.cbor.zst") as fixture:
        [recorded] = [e.id for e in fixture.exchanges()]
    lines = log.decode().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"{stamp} POST /openai/v1/chat/completions -> {recorded} 200", lines[0])
    assert re.fullmatch(rf"{stamp} POST /openai/v1/chat/completions -> miss 404", lines[1])
    assert lines[2].startswith(f"  closest: POST /openai/v1/chat/completions [{recorded}]")


def test_errors_name_their_option_and_counts_have_their_plurals():
    bad_time = run("inspect", str(FIXTURES), "--since", "yesterday")
    assert bad_time.exit_code == 2
    assert "Invalid value for '--since': bad time 'yesterday'" in bad_time.output
    bad_status = run("inspect", str(FIXTURES), "--status", "fivehundred")
    assert "Invalid value for '--status': bad status filter" in bad_status.output
    bad_pace = run("replay", str(FIXTURES), "--target", "http://127.0.0.1:9/", "--pace", "fast")
    assert "Invalid value for '--pace': 'fast' is not a speed" in bad_pace.output
    issues = run("inspect", str(FIXTURES / "error_429.cbor.zst"), "--detect-issues")
    assert re.search(r"^1 finding: 0 errors, 1 warning, 0 info$", issues.stdout, re.MULTILINE), (
        issues.stdout
    )


GENERIC_METAVARS = re.compile(r"\b(INTEGER|FLOAT|TEXT|RANGE|DIRECTORY|PATH|FILENAME)\b")


@pytest.mark.parametrize("command", sorted(main.commands))
def test_each_commands_help_reads_like_docs(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    text = result.stdout
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5, description  # a description, not a fragment
    assert re.search(r"^  Examples?:\n    wirecap ", text, re.MULTILINE), text
    assert not GENERIC_METAVARS.search(text), GENERIC_METAVARS.search(text)


def test_the_command_list_is_not_cut_off():
    listing = run("--help").stdout.split("Commands:\n")[1]
    assert "..." not in listing
    assert sorted(line.split()[0] for line in listing.splitlines()) == sorted(main.commands)
