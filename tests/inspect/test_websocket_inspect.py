"""inspect on WebSocket sessions: the fixture's Realtime session as messages and facts, and the
detectors on sessions recorded through the real proxy (a drop, an error event, a secret)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from wsupstream import in_thread, open_client, websocket_upstream

from wirecap.cli import main

FIXTURE = Path(__file__).parent.parent.parent / "fixtures" / "openai_realtime_ws.cbor.zst"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def only_id(capture) -> str:
    result = run("inspect", capture, "--json")
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.output.splitlines()]
    return row["id"]


def test_the_realtime_fixture_shows_its_messages_and_facts():
    result = run("inspect", FIXTURE)
    assert result.exit_code == 0, result.output
    assert " 101 " in result.output and "gpt-realtime" in result.output
    detail = run("inspect", FIXTURE, "--id", only_id(FIXTURE))
    assert detail.exit_code == 0, detail.output
    out = detail.output
    assert "--- answer (openai.realtime, streamed)" in out
    assert "model: gpt-realtime (asked for gpt-realtime)" in out
    assert "usage: input 7, output 2, cached -, total 9" in out
    assert "\nHello\n" in out  # the reassembled text
    assert "websocket session (9 messages: 3 from the client, 6 from the server" in out
    assert "permessage-deflate" in out  # negotiated, and inflated for the view
    lines = [line for line in out.splitlines() if " B  " in line]
    assert "< server  text" in lines[0] and '"session.created"' in lines[0]
    assert "client >  text" in lines[1] and '"conversation.item.create"' in lines[1]
    assert "client >  close" in lines[-2] and "code 1000 'done'" in lines[-2]
    assert "< server  close" in lines[-1]
    assert run("inspect", FIXTURE, "--detect-issues").output.strip() == "no issues found"
    as_json = json.loads(run("inspect", FIXTURE, "--id", only_id(FIXTURE), "--json").output)
    messages = as_json["websocket_messages"]
    assert [(m["dir"], m["opcode"]) for m in messages][-2:] == [("req", "close"), ("res", "close")]
    assert json.loads(messages[0]["text"])["type"] == "session.created"
    assert as_json["llm"]["api"] == "openai.realtime" and as_json["llm"]["text"] == "Hello"


async def test_detectors_on_sessions_recorded_through_the_proxy(start_proxy):
    secret = "sk-proj-" + "a1B2c3D4e5" * 4
    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)
        url = f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime"

        def dropped():
            with open_client(url) as ws:
                ws.recv(timeout=10)  # session.created
                ws.send(json.dumps({"type": "response.create", "note": secret}))
                for _ in range(4):
                    ws.recv(timeout=10)
                ws.send(json.dumps({"type": "unknown.event"}))
                ws.recv(timeout=10)  # its error event
                ws.send("drop")
                try:
                    ws.recv(timeout=10)
                except Exception:
                    return

        await in_thread(dropped)
        await proxy.stop()
    result = run("inspect", proxy.out, "--detect-issues")
    assert result.exit_code == 1, result.output
    out = result.output
    assert "upstream-failure" in out and "mid-session" in out
    assert "truncated-stream" in out and "a Close frame and a response.done" in out
    # Client frames are masked on the wire: the secret is found in the decoded messages.
    assert "secret-in-capture" in out and "session messages" in out
    assert "session-error" in out and "error in the session: Unknown event" in out
