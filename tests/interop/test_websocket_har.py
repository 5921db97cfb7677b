"""HAR export of a WebSocket session: the messages in ``_webSocketMessages`` as browser devtools
write them, the 101 as the response."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from click.testing import CliRunner
from wsupstream import in_thread, open_client, websocket_upstream

from wirecap.cli import main

FIXTURE = Path(__file__).parent.parent.parent / "fixtures" / "openai_realtime_ws.cbor.zst"


def export_har(capture, out: Path) -> dict:
    result = CliRunner().invoke(main, ["export", str(capture), "--format", "har", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_the_realtime_fixture_exports_its_messages(tmp_path):
    [entry] = export_har(FIXTURE, tmp_path / "out.har")["log"]["entries"]
    assert entry["request"]["url"].startswith("ws://")
    assert entry["response"]["status"] == 101
    assert entry["response"]["statusText"] == "Switching Protocols"
    assert {"name": "Upgrade", "value": "websocket"} in entry["response"]["headers"]
    messages = entry["_webSocketMessages"]
    assert [(m["type"], m["opcode"]) for m in messages] == [
        ("receive", 1),
        ("send", 1),
        ("send", 1),
        ("receive", 1),
        ("receive", 1),
        ("receive", 1),
        ("receive", 1),
        ("send", 8),
        ("receive", 8),
    ]
    assert json.loads(messages[0]["data"])["type"] == "session.created"
    assert messages[-1]["data"] == "1000 done"
    times = [m["time"] for m in messages]
    assert times == sorted(times) and 1.7e9 < times[0] < 4e9  # seconds since the epoch
    assert entry["_llm"]["text"] == "Hello"


async def test_binary_messages_are_base64(start_proxy, tmp_path):
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)

        def client():
            with open_client(f"ws://127.0.0.1:{proxy.port}/v1/echo") as ws:
                ws.send(b"\x00\xffbinary")
                ws.recv(timeout=10)

        await in_thread(client)
        await proxy.stop()
    [entry] = export_har(proxy.out, tmp_path / "out.har")["log"]["entries"]
    binary = [m for m in entry["_webSocketMessages"] if m["opcode"] == 2]
    assert [m["type"] for m in binary] == ["send", "receive"]
    assert {base64.b64decode(m["data"]) for m in binary} == {b"\x00\xffbinary"}
