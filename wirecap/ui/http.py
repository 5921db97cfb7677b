"""A small HTTP/1.1 server for the inspector: h11 parses and frames, trio moves the bytes.

One task per connection reads a request (GET and HEAD: the inspector takes no uploads), hands it
to the handler, sends the handler's :class:`Response` and keeps the connection for the next one.
Every response carries headers that keep a captured body from ever running as a page: a strict
Content-Security-Policy (no inline script), ``nosniff`` and no framing. A handler that fails gets
its client a 500 and a log line, never a dead server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

logger = logging.getLogger("wirecap.ui")

#: Largest request head: the page's URLs are short; 64 KiB is the proxy's limit too.
MAX_HEAD: Final = 64 * 1024
#: Largest request body read (and ignored): the inspector serves GET only.
MAX_BODY: Final = 64 * 1024
#: A client has this long to send a request head; an idle keep-alive connection is closed after
#: the same time.
HEAD_TIMEOUT: Final = 60.0
#: Longest a response may take to send (a slow reader cannot hold a task for ever).
SEND_TIMEOUT: Final = 120.0

#: Sent with every response. Nothing captured is ever markup: the page builds its DOM from JSON
#: with text nodes, and this policy refuses inline scripts and any origin but the inspector's.
SECURITY_HEADERS: Final = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    def cookie(self, name: str) -> str | None:
        try:
            morsel = SimpleCookie(self.headers.get("cookie", "")).get(name)
        except CookieError:
            return None
        return morsel.value if morsel is not None else None


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


Handler = Callable[[Request], Awaitable[Response]]


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_request(event: h11.Request) -> Request:
    target = event.target.decode("latin-1")
    parts = urlsplit(target)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        method=event.method.decode("ascii", "replace"),
        target=target,
        path=parts.path,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
    )


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` until cancelled; ``task_status`` gets the bound address."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    task_status.started((host, bound[1]))

    async def connection(stream: trio.SocketStream) -> None:
        await _connection(handler, stream)

    await trio.serve_listeners(connection, listeners)


async def _connection(handler: Handler, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            request = None
            with trio.move_on_after(HEAD_TIMEOUT):
                request = await _read_request(conn, stream)
            if request is None:
                return
            try:
                response = await handler(request)
            except Exception:
                logger.exception("inspector request %s %s failed", request.method, request.target)
                response = error_response(500, "the inspector failed on this request")
            with trio.fail_after(SEND_TIMEOUT):
                await _send(conn, stream, response, head_only=request.method == "HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        await _refuse(conn, stream, exc.error_status_hint, str(exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            continue
        return event


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> Request | None:
    """The next request, its body read and dropped; None when the client closed or the body is
    too large (it gets 413 first)."""
    event = await _next(conn, stream)
    if not isinstance(event, h11.Request):
        return None
    size = 0
    while not isinstance(body := await _next(conn, stream), h11.EndOfMessage):
        if not isinstance(body, h11.Data):
            return None
        size += len(body.data)
        if size > MAX_BODY:
            await _refuse(conn, stream, 413, "the inspector takes no request bodies")
            return None
    return parse_request(event)


async def _send(
    conn: h11.Connection, stream: trio.abc.Stream, response: Response, *, head_only: bool
) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *SECURITY_HEADERS,
        *response.headers,
    ]
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    head = h11.Response(status_code=response.status, headers=raw, reason=_reason(response.status))
    await stream.send_all(conn.send(head) or b"")
    if response.body and not head_only:
        await stream.send_all(conn.send(h11.Data(data=response.body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


async def _refuse(conn: h11.Connection, stream: trio.abc.Stream, status: int, message: str) -> None:
    """Answer a request that cannot be served, if the connection still allows an answer."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response = error_response(status, message)
    response.headers.append(("Connection", "close"))
    try:
        with trio.move_on_after(5):
            await _send(conn, stream, response, head_only=False)
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
