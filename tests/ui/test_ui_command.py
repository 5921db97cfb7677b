"""``wirecap ui`` and ``wirecap proxy --ui`` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import trio
from click.testing import CliRunner

from wirecap.cli import main


def test_a_listener_other_machines_reach_needs_a_token(fixture_copy, monkeypatch):
    monkeypatch.delenv("WIRECAP_UI_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["ui", str(fixture_copy), "--listen", "0.0.0.0:5610"])
    assert result.exit_code == 2
    assert "can be reached from other machines: give a token" in result.output
    assert "Traceback" not in result.output
    proxy = CliRunner().invoke(main, ["proxy", "--ui", "0.0.0.0:5610", "--upstream", "http://x/"])
    assert proxy.exit_code == 2 and "give a token" in proxy.output


def test_bad_input_is_one_line(tmp_path):
    missing = CliRunner().invoke(main, ["ui", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such capture" in missing.output
    bad = CliRunner().invoke(main, ["ui", str(tmp_path), "--listen", "localhost"])
    assert bad.exit_code == 2 and "--listen" in bad.output
    off = CliRunner().invoke(main, ["proxy", "--ui", "--no-capture", "--upstream", "http://x/"])
    assert off.exit_code == 2 and "--ui shows what the proxy captures" in off.output


class Stderr:
    """The lines a process writes to stderr, read as they come."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.seen = b""

    async def until(self, pattern: str) -> re.Match[str]:
        with trio.fail_after(60):
            while (match := re.search(pattern, self.seen.decode(errors="replace"))) is None:
                chunk = await self.stream.receive_some(65536)
                assert chunk, f"stderr closed: {self.seen.decode(errors='replace')}"
                self.seen += chunk
        return match


def proxy_args(tmp_path):
    return ["--listen", "127.0.0.1:0", "--out", str(tmp_path / "captures"), "--ui", "127.0.0.1:0"]


async def test_proxy_ui_serves_the_inspector_on_what_the_proxy_captures(start_upstream, tmp_path):
    async def upstream(ex):
        await ex.read_body()
        await ex.respond(200, b'{"ok": true}', [("Content-Type", "application/json")])

    up = await start_upstream(upstream)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wirecap", "proxy", "--upstream", up.url, *proxy_args(tmp_path)],
        stderr=subprocess.PIPE,
    )
    try:
        stderr = Stderr(process.stderr)
        proxy_port = (await stderr.until(r"proxy listening on http://127\.0\.0\.1:(\d+)"))[1]
        inspector = (await stderr.until(r"inspector on (http://127\.0\.0\.1:\d+/)"))[1]
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"http://127.0.0.1:{proxy_port}/v1/thing", content=b"{}")
            assert answer.json() == {"ok": True}
            with trio.fail_after(60):
                while not (page := (await client.get(inspector + "api/exchanges")).json())["rows"]:
                    await trio.sleep(0.05)
            assert [r["path"] for r in page["rows"]] == ["/v1/thing"]
    finally:
        process.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await process.wait()
    assert code == 0
    await stderr.until(r"wirecap: 1 exchange")
    assert "Traceback" not in stderr.seen.decode()
    async with httpx.AsyncClient() as client:  # the inspector stopped with the proxy
        try:
            await client.get(inspector + "api/summary")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the inspector outlived the proxy")


async def test_wirecap_ui_stops_on_ctrl_c_without_a_traceback(fixture_copy):
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "wirecap", "ui", str(fixture_copy), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
    )
    stderr = Stderr(process.stderr)
    try:
        url = (await stderr.until(r"wirecap ui on (http://127\.0\.0\.1:\d+/)"))[1]
        async with httpx.AsyncClient(timeout=30) as client:
            with trio.fail_after(30):  # the capture is read in the background: wait for its end
                while not (await client.get(url + "api/summary")).json()["caught_up"]:
                    await trio.sleep(0.02)
            assert (await client.get(url + "api/exchanges")).json()["total"] == 10
    finally:
        process.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await process.wait()
    rest = await process.stderr.receive_some(65536)
    assert code == 130
    assert b"Traceback" not in stderr.seen + rest
