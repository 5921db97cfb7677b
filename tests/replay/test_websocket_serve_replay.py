"""serve answers recorded WebSocket sessions to a real `websockets` client; replay replays a
session's client messages against a live upstream and compares what the server sends."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from websockets.exceptions import ConnectionClosed
from wsupstream import REALTIME_CLIENT_EVENTS, in_thread, open_client

from wirecap.capture import open_capture
from wirecap.cli import main
from wirecap.replay.serve import MockServer, load_catalog

FIXTURE = Path(__file__).parent.parent.parent / "fixtures" / "openai_realtime_ws.cbor.zst"
PATH = "/openai/v1/realtime?model=gpt-realtime"


async def start_serve(nursery, speed: float | None = 1.0) -> MockServer:
    with open_capture(FIXTURE) as capture:
        catalog = load_catalog(capture, match_on=("method", "path", "query", "body"))
    server = MockServer(catalog, speed=speed)
    await nursery.start(server.run)
    return server


def realtime_client(url: str, first: dict | None = None):
    """A Realtime client: what it receives (with arrival times) until a response is done, then it
    closes; or until the server closes."""
    received = []
    with open_client(url) as ws:
        received.append((time.perf_counter(), json.loads(ws.recv(timeout=10))))
        events = [first, *REALTIME_CLIENT_EVENTS[1:]] if first else REALTIME_CLIENT_EVENTS
        try:
            # The server may close after the first message, before the client has sent the rest.
            for event in events:
                ws.send(json.dumps(event))
            while received[-1][1]["type"] != "response.done":
                received.append((time.perf_counter(), json.loads(ws.recv(timeout=10))))
        except ConnectionClosed as closed:
            return received, closed.rcvd, None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        ws.close(1000, "done")
        return received, ws.close_code, extensions


async def test_serve_answers_a_recorded_realtime_session_with_its_timing(nursery):
    server = await start_serve(nursery)
    received, close, extensions = await in_thread(
        lambda: realtime_client(f"ws://127.0.0.1:{server.port}{PATH}")
    )
    types = [event["type"] for _, event in received]
    assert types == [
        "session.created",
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.done",
    ]
    assert received[4][1]["response"]["usage"]["total_tokens"] == 9
    assert close == 1000  # the client's Close was answered
    assert extensions is not None and extensions.startswith("permessage-deflate")
    # The recorded gaps between the answer's events (about 10 ms each) are kept, not collapsed.
    times = [t for t, _ in received[1:]]
    assert times[-1] - times[0] >= 0.02
    await served(server, 1)


async def served(server: MockServer, count: int) -> None:
    """Wait until ``server`` has counted ``count`` answers: it counts a session once its side of
    the close is done, which may come after the client has returned."""
    import trio

    with trio.fail_after(10):  # a hang guard
        while len(server.served) < count:
            await trio.sleep(0.01)
    assert len(server.served) == count


async def test_serve_without_timing_and_a_first_message_nothing_recorded(nursery):
    server = await start_serve(nursery, speed=None)
    other = {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}
    received, close, _ = await in_thread(
        lambda: realtime_client(f"ws://127.0.0.1:{server.port}{PATH}", first=other)
    )
    assert [event["type"] for _, event in received] == ["session.created"]
    assert close.code == 1008 and "no recorded session" in close.reason
    assert server.served == []


async def test_a_handshake_on_a_path_without_sessions_is_an_http_miss(nursery):
    server = await start_serve(nursery)

    def client():
        with pytest.raises(Exception, match="404"):
            open_client(f"ws://127.0.0.1:{server.port}/openai/v1/elsewhere")

    await in_thread(client)


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def echo_session(url: str):
    """Text, binary, then the server closes with 4001 when asked."""
    with open_client(url) as ws:
        ws.send("hi")
        text = ws.recv(timeout=10)
        ws.send(b"\x01\x02")
        data = ws.recv(timeout=10)
        ws.send("close 4001 bye now")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        return text, data, (closed.value.rcvd.code, closed.value.rcvd.reason)


async def test_serve_answers_a_session_recorded_through_the_proxy_and_closes_as_recorded(
    nursery, start_proxy
):
    from wsupstream import websocket_upstream

    with websocket_upstream() as upstream:
        proxy = await start_proxy(upstream=upstream.url)
        live = await in_thread(lambda: echo_session(f"ws://127.0.0.1:{proxy.port}/v1/echo"))
        await proxy.stop()
    with open_capture(proxy.out) as capture:
        catalog = load_catalog(capture, match_on=("method", "path", "query", "body"))
    server = MockServer(catalog, speed=None)
    await nursery.start(server.run)
    served = await in_thread(lambda: echo_session(f"ws://127.0.0.1:{server.port}/v1/echo"))
    assert served == live == ("hi", b"\x01\x02", (4001, "bye now"))


async def test_replay_passes_against_the_same_backend_and_fails_on_a_changed_one():
    import trio
    from wsupstream import websocket_upstream

    with websocket_upstream() as same:
        passing = await trio.to_thread.run_sync(
            run, "replay", FIXTURE, "--target", same.url, "--timeout", "5"
        )
        # The client messages went out as recorded, after the server's session.created.
        assert [json.loads(m)["type"] for m in same.received] == [
            "conversation.item.create",
            "response.create",
        ]
    assert passing.exit_code == 0, passing.output
    assert "1 exchange replayed: 1 passed, 0 failed" in passing.output
    with websocket_upstream(deltas=("Good", "bye")) as changed:
        failing = await trio.to_thread.run_sync(
            run, "replay", FIXTURE, "--target", changed.url, "--timeout", "5"
        )
        shape_only = await trio.to_thread.run_sync(
            run, "replay", FIXTURE, "--target", changed.url, "--compare", "schema"
        )
    assert failing.exit_code == 1, failing.output
    assert "FAIL GET /openai/v1/realtime?model=gpt-realtime" in failing.output
    assert "$[2].delta differs: 'Hel' -> 'Good'" in failing.output
    assert shape_only.exit_code == 0, shape_only.output


async def test_replay_of_a_session_a_target_refuses_fails_with_the_status(start_upstream, tmp_path):
    import trio

    async def refuse(ex):
        await ex.respond(401, b'{"error": "no key"}', [("Content-Type", "application/json")])

    upstream = await start_upstream(refuse)
    result = await trio.to_thread.run_sync(run, "replay", FIXTURE, "--target", upstream.url)
    assert result.exit_code == 1, result.output
    assert "refused the WebSocket handshake with HTTP 401" in result.output


async def test_a_malformed_handshake_gets_a_400_and_serve_goes_on(nursery):
    import httpx

    server = await start_serve(nursery)
    headers = {"Connection": "Upgrade", "Upgrade": "websocket"}  # no key, no version
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{server.url}{PATH}", headers=headers)
    assert answer.status_code == 400 and "bad WebSocket handshake" in answer.json()["error"]
    received, close, _ = await in_thread(
        lambda: realtime_client(f"ws://127.0.0.1:{server.port}{PATH}")
    )
    assert received[-1][1]["type"] == "response.done" and close == 1000


async def test_replay_against_a_target_that_answers_no_handshake_is_a_failed_verdict():
    import trio

    async def not_http(stream):
        await stream.receive_some(65536)
        await stream.send_all(b"HELLO THERE\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, not_http, 0, host="127.0.0.1")
        [listener] = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        target = f"http://127.0.0.1:{port}"
        result = await trio.to_thread.run_sync(run, "replay", FIXTURE, "--target", target)
        nursery.cancel_scope.cancel()
    assert result.exit_code == 1, result.output
    assert "handshake failed" in result.output and "Traceback" not in result.output
