"""A scriptable HTTP/1.1 upstream on 127.0.0.1 for end-to-end tests: trio + h11, real sockets.

Each test gives a handler ``async def handler(exchange: UpstreamExchange) -> None`` that reads the
request and writes whatever response it wants (whole, chunk by chunk, with pauses, or as raw bytes).
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable

import h11
import trio


@dataclasses.dataclass
class ReceivedRequest:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower().encode():
                return value
        return None


class UpstreamExchange:
    """One request as the upstream sees it, with helpers to answer it."""

    def __init__(
        self,
        server: ScriptedUpstream,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        request: h11.Request,
        connection_id: int,
    ) -> None:
        self.server = server
        self.stream = stream
        self.conn = conn
        self.connection_id = connection_id
        self.request = ReceivedRequest(
            request.method.decode(),
            request.target.decode(),
            [(bytes(k), bytes(v)) for k, v in request.headers.raw_items()],
        )
        self._body_read = False

    async def _next(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event  # type: ignore[return-value]

    async def read_body(self) -> bytes:
        if self._body_read:
            return self.request.body
        parts = []
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise RuntimeError(f"unexpected {event!r}")
        self.request.body = b"".join(parts)
        self._body_read = True
        return self.request.body

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def send_head(
        self, status: int = 200, headers: list[tuple[str, str]] | None = None, reason: bytes = b""
    ) -> None:
        await self.send(h11.Response(status_code=status, headers=headers or [], reason=reason))

    async def send_data(self, data: bytes) -> None:
        await self.send(h11.Data(data=data))

    async def end(self) -> None:
        await self.send(h11.EndOfMessage())

    async def respond(
        self, status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> None:
        await self.read_body()
        headers = list(headers or [])
        if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        await self.send_head(status, headers)
        if body:
            await self.send_data(body)
        await self.end()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)


Handler = Callable[[UpstreamExchange], Awaitable[None]]


class ScriptedUpstream:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[ReceivedRequest] = []
        self.connections = 0
        self.port = 0
        self.raw_received: list[bytes] = []

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = "localhost" if self.ssl_context else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if self.ssl_context is not None:
            listeners = [
                trio.SSLListener(lst, self.ssl_context, https_compatible=True) for lst in listeners
            ]  # type: ignore[misc]
        task_status.started(self.port)
        await trio.serve_listeners(self._serve, listeners)  # type: ignore[arg-type]

    async def _serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        connection_id = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        self.raw_received.append(data)
                        conn.receive_data(data)
                        continue
                    break
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                assert isinstance(event, h11.Request), event
                exchange = UpstreamExchange(self, stream, conn, event, connection_id)
                self.requests.append(exchange.request)
                await self.handler(exchange)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)
