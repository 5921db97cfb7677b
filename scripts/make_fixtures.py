#!/usr/bin/env python3
"""Regenerate fixtures/: small captures made by the real proxy in front of a scripted upstream.

    python scripts/make_fixtures.py [--out fixtures]

The upstream speaks each provider's documented wire format (OpenAI chat completions JSON, stream and
tool call; the OpenAI responses API stream; Anthropic messages JSON and stream; Ollama chat NDJSON) plus
two failure cases (a 429 and a truncated stream), and an OpenAI Realtime WebSocket session
(`openai_realtime_ws`: the `websockets` library as client and upstream, permessage-deflate on).
Requests go through the real `wirecap proxy` code on 127.0.0.1 with the routes /openai/, /anthropic/
and /ollama/; each fixture is one capture file. Never edit the fixtures by hand: change this script
and run it again (`--only NAME` remakes one).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import h11
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import samples  # noqa: E402  (the same documented wire samples the tests use)
import wsupstream  # noqa: E402  (the WebSocket upstream and client the tests use)

from wirecap.proxy.app import make_redactor, make_writer  # noqa: E402
from wirecap.proxy.config import build_config, parse_upstream  # noqa: E402
from wirecap.proxy.server import ProxyServer  # noqa: E402
from wirecap.replay.client import PreparedRequest, client_pool, send  # noqa: E402

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"

#: name -> (path through the proxy, request body, status, content type, response chunks, extra headers)
FIXTURES: dict[str, tuple[str, dict, int, str, list[bytes], list[tuple[str, str]]]] = {
    "openai_chat_json": (
        "/openai/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]},
        200,
        JSON,
        [json.dumps(samples.CHAT_JSON).encode()],
        [],
    ),
    "openai_chat_stream": (
        "/openai/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Say hello slowly"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        200,
        SSE,
        samples.chat_stream(text=("Hel", "lo", " there", "!")),
        [],
    ),
    "openai_tool_call": (
        "/openai/v1/chat/completions",
        samples.CHAT_REQUEST
        | {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                }
            ]
        },
        200,
        SSE,
        samples.chat_stream(
            text=(),
            tool=("call_abc123", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']),
            finish="tool_calls",
        ),
        [],
    ),
    "openai_responses_stream": (
        "/openai/v1/responses",
        samples.RESPONSES_REQUEST,
        200,
        SSE,
        samples.responses_stream(),
        [],
    ),
    "anthropic_message_json": (
        "/anthropic/v1/messages",
        {
            "model": "claude-wirecap-test",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
        },
        200,
        JSON,
        [json.dumps(samples.MESSAGE_JSON).encode()],
        [("request-id", "req_01")],
    ),
    "anthropic_message_stream": (
        "/anthropic/v1/messages",
        samples.MESSAGES_REQUEST,
        200,
        SSE,
        samples.message_stream(),
        [],
    ),
    "ollama_chat_ndjson": (
        "/ollama/api/chat",
        samples.OLLAMA_CHAT_REQUEST,
        200,
        NDJSON,
        samples.ollama_chat_stream(),
        [],
    ),
    "error_429": (
        "/openai/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Too fast"}]},
        429,
        JSON,
        [
            b'{"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit_exceeded"}}'
        ],
        [("Retry-After", "20")],
    ),
    "truncated_stream": (
        "/openai/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Tell me a story"}],
            "stream": True,
        },
        200,
        SSE,
        samples.chat_stream(text=("Once", " upon", " a"), usage=False, done=False)[:-1],
        [],
    ),
}


async def upstream(handler_table: dict[str, tuple], task_status: trio.TaskStatus[int]) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                body = b""
                request = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                name = dict(request.headers).get(b"x-fixture", b"").decode()
                _path, _req, status, ctype, chunks, extra = handler_table[name]
                headers = [("Content-Type", ctype), *extra]
                if ctype == JSON:
                    headers.append(("Content-Length", str(sum(map(len, chunks)))))
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                for chunk in chunks:
                    await trio.sleep(0.02 if ctype != JSON else 0)
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
                truncated = ctype == SSE and not any(
                    b"[DONE]" in c or b"message_stop" in c or b"response.completed" in c
                    for c in chunks
                )
                if truncated:
                    return  # the connection drops mid-stream
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                conn.start_next_cycle()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


REALTIME = "openai_realtime_ws"


def realtime_session(url: str) -> None:
    """The client side of the Realtime fixture: a user message, a response, a normal close."""
    headers = {"Authorization": "Bearer sk-fixture-0000000000000000000000"}
    with wsupstream.open_client(url, additional_headers=headers) as ws:
        ws.recv(timeout=10)  # session.created
        for event in wsupstream.REALTIME_CLIENT_EVENTS:
            ws.send(json.dumps(event))
        for _ in wsupstream.realtime_events():
            ws.recv(timeout=10)
        ws.close(1000, "done")


async def make_realtime(out: Path) -> None:
    """The Realtime WebSocket fixture, through the real proxy."""
    with wsupstream.websocket_upstream() as upstream:
        work = Path(tempfile.mkdtemp(prefix="wirecap-fixture-"))
        config = build_config(listen="127.0.0.1:0", routes=[f"/openai/={upstream.url}/"], out=work)
        writer = make_writer(config, make_redactor(config))
        proxy = ProxyServer(config, writer, console=io.StringIO())
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            _host, proxy_port = await nursery.start(proxy.run)
            url = f"ws://127.0.0.1:{proxy_port}/openai/v1/realtime?model=gpt-realtime"
            await trio.to_thread.run_sync(realtime_session, url)
            proxy.shutdown()
            await proxy.wait_stopped()
            await writer.wait_finished()
    keep(work, out / f"{REALTIME}.cbor.zst")


def keep(work: Path, destination: Path) -> None:
    """Move the one segment written in ``work`` to ``destination``."""
    [segment] = list(work.glob("*.cbor.zst"))
    shutil.copyfile(segment, destination)
    destination.chmod(0o644)  # fixtures are committed: readable, unlike live captures
    shutil.rmtree(work)
    print(f"{destination} ({destination.stat().st_size} bytes)")


async def make(out: Path, only: str | None = None) -> None:
    if only in (None, REALTIME):
        await make_realtime(out)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(upstream, FIXTURES)
        up = f"http://127.0.0.1:{port}/"
        for name, (path, request, *_rest) in FIXTURES.items():
            if only not in (None, name):
                continue
            work = Path(tempfile.mkdtemp(prefix="wirecap-fixture-"))
            config = build_config(
                listen="127.0.0.1:0",
                routes=[f"/openai/={up}", f"/anthropic/={up}", f"/ollama/={up}"],
                out=work,
            )
            writer = make_writer(config, make_redactor(config))
            proxy = ProxyServer(config, writer, console=io.StringIO())
            await nursery.start(writer.run)
            _host, proxy_port = await nursery.start(proxy.run)
            target = parse_upstream(f"http://127.0.0.1:{proxy_port}/")
            body = json.dumps(request).encode()
            headers = (
                (b"Host", target.host_header.encode()),
                (b"Content-Type", b"application/json"),
                (b"Authorization", b"Bearer sk-fixture-0000000000000000000000"),
                (b"X-Fixture", name.encode()),
                (b"Content-Length", str(len(body)).encode()),
            )
            pool = client_pool(connect_timeout=5, idle_timeout=5, max_idle=1)
            await send(pool, target, PreparedRequest("POST", path, headers, body), read_timeout=10)
            await pool.aclose()
            proxy.shutdown()
            await proxy.wait_stopped()
            await writer.wait_finished()
            keep(work, out / f"{name}.cbor.zst")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures")
    parser.add_argument("--only", metavar="NAME", help="remake only this fixture")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.cbor.zst"):
        if args.only in (None, old.name.removesuffix(".cbor.zst")):
            old.unlink()
    trio.run(make, args.out, args.only)


if __name__ == "__main__":
    main()
