"""Spy mode for ``wirecap serve``: answer what the capture holds, forward and record the rest.

``wirecap serve CAPTURE --miss forward=URL --out DIR`` runs a wirecap proxy beside the mock, on
127.0.0.1 with one catch-all route to ``URL`` (or a ``PREFIX=URL`` route, or the proxy's presets),
capturing into ``DIR`` exactly as ``wirecap proxy`` does (a writer process, redaction on, files
0600, the index written when it stops). A request the
capture does not hold goes through that proxy, and its answer is relayed to the client event by
event as it arrives, so a streamed answer keeps streaming. The mock talks to the proxy with the
proxy's own pooled h11 client connections; the proxy records what crossed the wire, so ``DIR`` is
an ordinary capture that every command reads, and serving ``CAPTURE`` and ``DIR`` together answers
the forwarded requests too. With ``--fault``, the answers serve gives under a fault are recorded
into ``DIR`` through the same writer (:mod:`wirecap.replay.fault_capture`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import h11
import trio

from wirecap.proxy.app import make_redactor, make_writer
from wirecap.proxy.config import ConfigError, build_config, parse_upstream
from wirecap.proxy.messages import HOP_BY_HOP
from wirecap.proxy.server import ProxyServer
from wirecap.proxy.upstream import ConnectionPool, UpstreamConnection, UpstreamError
from wirecap.replay.lifetime import serve_with_capture

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from wirecap.proxy.config import Upstream
    from wirecap.replay.serve import MockServer

#: Request headers not passed to the recording proxy: the connection's own, and the framing,
#: which is set again for the body as read whole.
_NOT_FORWARDED: Final = HOP_BY_HOP | {b"host", b"content-length", b"transfer-encoding", b"expect"}
#: Bytes of one read from the recording proxy; heads larger than ``MAX_HEAD`` are refused.
READ_SIZE: Final = 64 * 1024
MAX_HEAD: Final = 64 * 1024


#: ``--miss forward=presets``: the proxy's built-in routes (``/openai/``, ``/anthropic/``, ...).
PRESETS: Final = "presets"


def parse_miss(value: str) -> str | None:
    """``--miss``: ``error`` (None: a miss gets the error answer) or ``forward=TARGET`` (TARGET,
    checked). TARGET is a base URL (every path goes there as the client sent it), a route
    ``PREFIX=URL`` (the prefix is taken off, as ``wirecap proxy --route`` does), or ``presets``
    (the proxy's built-in routes). Raises ValueError with a one-line reason."""
    if value == "error":
        return None
    kind, sep, target = value.partition("=")
    if kind != "forward" or not sep:
        raise ValueError(f"{value!r} is not 'error' or 'forward=URL'")
    try:
        build_config(**_routing(target))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return target


def _routing(target: str) -> dict[str, Any]:
    """The proxy settings that route to ``target`` (see :func:`parse_miss`)."""
    if target == PRESETS:
        return {}
    if target.startswith("/"):
        return {"routes": [target]}
    return {"upstream": target}


class SpyForwarder:
    """A recording proxy to ``target`` capturing into ``out``, and the relay of misses through it.

    ``await nursery.start(spy.run)`` starts the proxy and its writer and returns the capture's
    first segment path; :meth:`stop` lets exchanges in flight finish, then closes the capture
    (index and footer). :meth:`relay` is the mock's ``miss_handler``.
    """

    def __init__(self, target: str, out: Path, *, redact: bool = True) -> None:
        """``target`` as :func:`parse_miss` returns it: a URL, ``PREFIX=URL`` or ``presets``."""
        self.config = build_config(
            listen="127.0.0.1:0", out=out, log_format="quiet", redact=redact, **_routing(target)
        )
        self.writer = make_writer(self.config, make_redactor(self.config))
        self.proxy = ProxyServer(self.config, self.writer)
        self.pool = ConnectionPool(
            connect_timeout=10,
            idle_timeout=30,
            read_size=READ_SIZE,
            max_head=MAX_HEAD,
            max_idle_per_origin=16,
        )
        self.forwarded = 0
        self._proxy: Upstream | None = None
        self._stopping = False  # connections that finish from now on are closed, not pooled

    async def run(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(self.writer.run)
            _host, port = await nursery.start(self.proxy.run)
            self._proxy = parse_upstream(f"http://127.0.0.1:{port}/")
            task_status.started(path)

    async def stop(self) -> None:
        """Finish the exchanges in flight (the proxy's grace period) and close the capture."""
        self._stopping = True
        await self.pool.aclose()
        self.proxy.shutdown()
        await self.proxy.wait_stopped()
        await self.writer.wait_finished()

    async def relay(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        request: h11.Request,
        body: bytes,
        tell: Callable[[int], object],
    ) -> None:
        """Forward ``request`` through the recording proxy and relay its answer on the mock's
        connection ``conn``: the head, then each piece of body as it arrives. ``tell(status)``
        once the head is known. A proxy that cannot be reached gets a 502 from here; a
        connection to it that breaks mid-answer cuts the client's too."""
        assert self._proxy is not None, "run() first"
        self.forwarded += 1
        try:
            upstream = await self.pool.acquire(self._proxy)
        except UpstreamError as exc:
            tell(502)
            await _send_head(stream, conn, h11.Response(status_code=502, headers=[]), b"")
            await stream.send_all(conn.send(h11.Data(data=f"{exc}\n".encode())) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            return
        ended = False
        try:
            await _send_request(upstream, self._proxy, request, body)
            response = await _final_response(upstream)
            tell(response.status_code)
            await _send_head(stream, conn, response, request.method)
            await _relay_body(upstream, conn, stream)
            ended = True
        finally:
            if ended and upstream.reusable and not self._stopping:
                await self.pool.release(upstream)
            else:
                await upstream.aclose()


async def _send_request(
    upstream: UpstreamConnection, proxy: Upstream, request: h11.Request, body: bytes
) -> None:
    headers = [(k, v) for k, v in request.headers if k.lower() not in _NOT_FORWARDED]
    headers += [(b"host", proxy.host_header_bytes), (b"content-length", str(len(body)).encode())]
    await upstream.send(h11.Request(method=request.method, target=request.target, headers=headers))
    if body:
        await upstream.send(h11.Data(data=body))
    await upstream.send(h11.EndOfMessage())


async def _final_response(upstream: UpstreamConnection) -> h11.Response:
    """The response head after any interim (1xx) ones."""
    while True:
        event, _raw = await upstream.next_event()
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):
            raise trio.BrokenResourceError(f"recording proxy sent {event!r} before a response")


async def _send_head(
    stream: trio.abc.Stream, conn: h11.Connection, response: h11.Response, method: bytes
) -> None:
    headers = [(k, v) for k, v in response.headers if k.lower() not in HOP_BY_HOP]
    if method == b"HEAD":
        headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
    head = h11.Response(status_code=response.status_code, headers=headers, reason=response.reason)
    await stream.send_all(conn.send(head) or b"")


async def _relay_body(
    upstream: UpstreamConnection, conn: h11.Connection, stream: trio.abc.Stream
) -> None:
    """Each body piece to the client as it arrives; the end of message last."""
    while True:
        event, _raw = await upstream.next_event()
        if isinstance(event, h11.Data):
            if conn.our_state is h11.SEND_BODY and event.data:
                await stream.send_all(conn.send(h11.Data(data=event.data)) or b"")
        elif isinstance(event, h11.EndOfMessage):
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            return
        else:  # the proxy's connection closed mid-answer: so does the client's
            raise trio.ClosedResourceError("recording proxy's answer was cut off")


async def serve_with_spy(
    server: MockServer,
    spy: SpyForwarder,
    *,
    ready: Callable[[Path | None], object] | None = None,
) -> None:
    """Run the mock and the recording proxy until SIGINT or SIGTERM, then stop taking requests
    (answers under way are cut) and close the capture with its index, forwarded exchanges in
    flight given the proxy's grace period. ``ready(path)`` is called once both listen (``path``:
    the capture's first segment). The capture is closed however this ends (a listen error too)."""
    server.miss_handler = spy.relay
    grace = spy.config.timeouts.shutdown_grace + 30
    await serve_with_capture(server, spy.run, spy.stop, grace=grace, ready=ready)
