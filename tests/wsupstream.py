"""A real WebSocket upstream and client for end-to-end tests: the `websockets` library (its
threaded API), on 127.0.0.1, beside the trio proxy under test.

The upstream echoes every message, and obeys a few text commands: ``close CODE REASON`` closes
with that code, ``drop`` cuts the TCP connection without a Close frame. On a path ending in
``/realtime`` it speaks like the OpenAI Realtime API instead: ``session.created`` on connect, and
a short text response to each ``response.create``, an ``error`` event to ``unknown.event``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve

SESSION_CREATED = {
    "type": "session.created",
    "event_id": "ev_0",
    "session": {"id": "sess_1", "model": "gpt-realtime"},
}
#: What the client of a Realtime session sends: a user message, then a request for a response.
REALTIME_CLIENT_EVENTS = [
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Say hello"}],
        },
    },
    {"type": "response.create"},
]


def realtime_events(deltas: tuple[str, ...] = ("Hel", "lo")) -> list[dict[str, Any]]:
    """What a Realtime server sends for one short text response."""
    return [
        {"type": "response.created", "event_id": "ev_2", "response": {"id": "resp_1"}},
        *(
            {"type": "response.output_text.delta", "event_id": f"ev_{3 + i}", "delta": delta}
            for i, delta in enumerate(deltas)
        ),
        {
            "type": "response.done",
            "event_id": "ev_5",
            "response": {
                "id": "resp_1",
                "status": "completed",
                "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9},
            },
        },
    ]


def echo(ws: ServerConnection) -> None:
    """The upstream's handler: echo, or obey a command."""
    received: list[str | bytes] = ws.request_log  # type: ignore[attr-defined]
    realtime = ws.request is not None and ws.request.path.split("?")[0].endswith("/realtime")
    with contextlib.suppress(ConnectionClosed):
        if realtime:
            ws.send(json.dumps(SESSION_CREATED))
        for message in ws:
            received.append(message)
            if message == "drop":
                ws.socket.shutdown(socket.SHUT_RDWR)
                return
            if isinstance(message, str) and message.startswith("close "):
                _, code, reason = message.split(" ", 2)
                ws.close(int(code), reason)
                return
            if realtime:
                if isinstance(message, str) and '"unknown.event"' in message:
                    error = {"type": "invalid_request_error", "message": "Unknown event"}
                    ws.send(json.dumps({"type": "error", "event_id": "ev_9", "error": error}))
                if isinstance(message, str) and '"response.create"' in message:
                    for event in realtime_events(ws.deltas):  # type: ignore[attr-defined]
                        time.sleep(0.01)  # a model's pace, so the times mean something
                        ws.send(json.dumps(event))
                continue
            ws.send(message)


class WebSocketUpstream:
    """A running `websockets` server; :attr:`received` holds every message it got."""

    def __init__(
        self, ssl_context: ssl.SSLContext | None = None, deltas: tuple[str, ...] = ("Hel", "lo")
    ) -> None:
        self.received: list[str | bytes] = []

        def handler(ws: ServerConnection) -> None:
            ws.request_log = self.received  # type: ignore[attr-defined]
            ws.deltas = deltas  # type: ignore[attr-defined]
            echo(ws)

        self.server = serve(handler, "127.0.0.1", 0, ssl=ssl_context, ping_interval=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def websocket_upstream(
    ssl_context: ssl.SSLContext | None = None, deltas: tuple[str, ...] = ("Hel", "lo")
) -> Iterator[WebSocketUpstream]:
    """A running upstream; a Realtime response's text deltas are ``deltas``."""
    upstream = WebSocketUpstream(ssl_context, deltas)
    upstream.thread.start()
    try:
        yield upstream
    finally:
        upstream.server.shutdown()
        upstream.thread.join(10)


def open_client(url: str, **kwargs: Any) -> ClientConnection:
    """A `websockets` client connection (no proxy from the environment, no background pings)."""
    kwargs.setdefault("ping_interval", None)
    return connect(url, proxy=None, open_timeout=10, close_timeout=5, **kwargs)


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking client function beside the trio proxy (a generous deadline: a hang guard)."""
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(fn)
