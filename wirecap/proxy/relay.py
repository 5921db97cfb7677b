"""Relaying one exchange: the I/O shell around h11 and the exchange model.

The client's request head has been parsed by an ``h11.Connection(h11.SERVER)`` (server.py). The
relay routes it, takes a pooled upstream connection (an ``h11.Connection(h11.CLIENT)``), sends the
edited head and whatever body bytes already arrived, and then relays the response: every read from
the upstream goes through h11, and the raw bytes behind the events h11 returned go to the client
in one write, before the next read. A request body still arriving is pumped by a helper task.

Capture sees the exchange through an :class:`~wirecap.capture.recorder.ExchangeRecorder`: one call
per thing that crossed a wire, made after the write that forwarded it.

Every wait of the exchange runs under one :class:`Watchdog`: a cancel scope whose deadline is set
before each wait, with the error to raise if that wait runs out. A helper task that sees the client
go away stops the exchange through the same watchdog, with its own reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from typing import TYPE_CHECKING, Final, Self

import h11
import trio

from wirecap.capture.records import proxy_path_line
from wirecap.proxy import messages
from wirecap.proxy.exchange import (
    BadRequest,
    ClientAbort,
    ClientTimeout,
    CutOff,
    ExchangeState,
    Phase,
    RelayError,
    UpstreamFailure,
    UpstreamTimeout,
)
from wirecap.proxy.tunnel import Tunnel
from wirecap.proxy.upstream import UpstreamConnectError
from wirecap.proxy.upstream import UpstreamTimeout as ConnectTimeout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from types import TracebackType

    from wirecap.capture.recorder import ExchangeRecorder
    from wirecap.proxy.config import Route
    from wirecap.proxy.routing import RouteMatch
    from wirecap.proxy.server import ClientConnection, ProxyServer
    from wirecap.proxy.upstream import UpstreamConnection

logger = logging.getLogger("wirecap.proxy")

#: How long the relay waits for the response head before it also watches the client, so that a
#: client hanging up aborts a long generation at once instead of at its next chunk.
WATCH_CLIENT_AFTER: Final = 0.05
#: After a client closes its connection mid-response, how long the relay may still finish reading
#: the upstream's end of message before the exchange counts as a client abort (SDKs often hang up
#: at ``data: [DONE]``, before the chunked terminator arrives).
CLIENT_CLOSE_GRACE: Final = 1.0
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
#: How much later than its timeout a deadline may fire (see :class:`Watchdog`).
DEADLINE_SLACK: Final = 1 / 64


class Watchdog:
    """All the deadlines of one exchange in one cancel scope, and the error each one means.

    :meth:`expect` sets the deadline of the next wait and the error raised if it passes;
    :meth:`stop` ends the exchange at once, from any task, with the error given. Leaving the
    ``with`` block of a fired watchdog raises that error.

    A deadline fires at least its timeout after the wait began and at most :data:`DEADLINE_SLACK`
    of the timeout later: a scope's deadline is moved only when the wait's own would fall outside
    that window. A stream's reads, a quarter of a second apart against a 600 s read timeout, thus
    move it once every few seconds instead of at every read (each move costs trio a heap entry).
    """

    __slots__ = ("_expiry", "_reason", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self._expiry: tuple[type[RelayError], str | Callable[[], str]] | None = None
        self._reason: RelayError | None = None

    def expect(
        self, seconds: float, error: type[RelayError], message: str | Callable[[], str]
    ) -> None:
        """The next wait may last ``seconds``; past that, ``error(message)`` ends the exchange
        (``message`` may be a function, called only then)."""
        earliest = trio.current_time() + seconds
        latest = earliest + seconds * DEADLINE_SLACK
        if not earliest <= self.scope.deadline <= latest:
            self.scope.deadline = latest
        self._expiry = (error, message)

    def relax(self) -> None:
        """No deadline until the next :meth:`expect`."""
        self.scope.deadline = math.inf

    def stop(self, reason: RelayError) -> None:
        if self._reason is None:
            self._reason = reason
        self.scope.cancel()

    def __enter__(self) -> Self:
        self.scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        handled = self.scope.__exit__(exc_type, exc, tb)
        if self.scope.cancelled_caught:
            if self._reason is not None:
                raise self._reason
            error, message = self._expiry or (UpstreamTimeout, "timed out")
            raise error(message if isinstance(message, str) else message())
        return handled


@dataclasses.dataclass(slots=True, kw_only=True, eq=False)
class IncomingRequest:
    """A request head h11 has parsed, the raw bytes behind it, and its h11 connection."""

    tap: messages.RawTap  # fed every byte of the request so far
    event: h11.Request
    #: ``event.headers`` as a list: looked up several times, and h11's sequence is slow to walk.
    headers: list[tuple[bytes, bytes]]
    head: bytes
    t0_ns: int
    wall_ns: int
    #: Checks the size lines of a chunked body (None: the body is not chunked).
    chunk_guard: messages.ChunkSizeGuard | None = None

    @property
    def conn(self) -> h11.Connection:
        return self.tap.conn


class ExchangeRelay:
    """One exchange, from a parsed request head to its end record."""

    def __init__(
        self,
        server: ProxyServer,
        client: ClientConnection,
        request: IncomingRequest,
        state: ExchangeState,
        match: RouteMatch | None,
        recorder: ExchangeRecorder | None,
    ) -> None:
        self.server = server
        self.match = match
        self.timeouts = server.config.timeouts
        self.client = client
        self.request = request
        self.ex = state
        self.rec = recorder
        self.watchdog = Watchdog()
        self.response_done = trio.Event()
        self.helper: trio.CancelScope | None = None
        self.helper_done: trio.Event | None = None
        self.upstream_writable = True  # False once the upstream stopped taking the request body
        self.request_sent = False  # every byte of the request went upstream
        self.read_ns = 0  # when the last upstream read returned, ns since the exchange began
        self.close_client = False  # the response's framing ends with the connection
        self.answered = False  # the proxy made the whole answer itself (an error, a 404)
        #: The protocol the client asks to switch to (its Upgrade header), or None.
        self.upgrade = messages.upgrade_request(request.headers)

    # -- the exchange ---------------------------------------------------------------------------------

    async def run(self) -> bool:
        """Relay the exchange and record its end; returns whether the client connection may carry
        the next request."""
        ex = self.ex
        try:
            await self._route()
        except RelayError as error:
            ex.failed(error)
            if not isinstance(error, ClientAbort):  # a client that went away gets no answer
                await self._answer(error.status, error.kind, str(error), **error.details)
        except trio.Cancelled:
            if ex.phase is not Phase.DONE:
                ex.failed(CutOff("cut off: the proxy stopped before the exchange ended"))
            raise
        finally:
            self._finish()
        return (
            (ex.outcome == "ok" or self.answered)  # a whole answer of the proxy's own keeps it too
            and ex.request_done
            and ex.phase is Phase.DONE
            and not self.close_client
            and not self.server.shutting_down
        )

    async def _route(self) -> None:
        """Record the request, check it, and forward it along its route (or answer 404)."""
        server, request, ex = self.server, self.request, self.ex
        event = request.event
        host = messages.header_value(request.headers, b"host")
        match = self.match
        proxy_url = messages.proxy_url(server.listen_host, server.listen_port, host, ex.target)
        if match is not None:
            ex.upstream_url = match.upstream_url
        if self.rec is not None:
            self.rec.request(
                wall_ns=ex.wall_ns,
                method=ex.method,
                target=ex.target,
                head=request.head,
                client=self.client.addr,
                proxy_url=proxy_url,
                route=match.route.prefix if match else None,
                upstream_url=ex.upstream_url,
            )
        if event.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported: wirecap is a reverse proxy", status=501)
        problem = messages.smuggling_problem(request.headers, event.http_version)
        if problem is not None:
            raise BadRequest(f"request smuggling shape: {problem}")
        if match is None:
            routes = [r.prefix for r in server.router.routes]
            path = ex.target.partition("?")[0]
            await self._answer(404, "no_route", f"no route for {path}", routes=routes)
            return
        await self.forward(match.route, match.upstream_target, proxy_url)

    async def _answer(self, status: int, kind: str, message: str, **extra: object) -> None:
        """Send a JSON answer the proxy made itself (unless a response already started), and record
        it as the exchange's response. The client connection closes after it unless the request
        was read whole and the answer is not about a malformed one."""
        ex = self.ex
        if ex.responded:
            await trio.lowlevel.checkpoint()
            return
        if not ex.request_done and status not in (400, 408, 431):  # not malformed, not stalled
            await self._read_small_body()
        self.close_client = (
            not ex.request_done
            or status in (400, 408, 431, 501)
            or self.request.conn.their_state is h11.MUST_CLOSE
            or self.server.shutting_down
        )
        if ex.upstream_url is not None and status >= 500:
            extra.setdefault("upstream", ex.upstream_url)
        head, body = messages.error_answer(
            status, kind, message, close=self.close_client, exchange=ex.id, **extra
        )
        ex.status = status
        ex.advance(Phase.RESPONDING)
        self.server.stats.answered_by_proxy += 1
        ex.ttfb_ns = ex.ttft_ns = _now(ex)
        ex.res_bytes += len(body)
        if self.request.event.method == b"HEAD":
            body = b""  # the head says how long the body would be; a HEAD's answer has none
        if self.rec is not None:
            self.rec.response_head(status, head, by="proxy")
            if body:
                self.rec.body("res", body)
        with contextlib.suppress(*_BROKEN), trio.move_on_after(self.timeouts.write):
            await self.client.stream.send_all(head + body)
            self.answered = True
        ex.advance(Phase.DONE)

    async def _read_small_body(self) -> None:
        """Read the rest of a request body the proxy answers itself, so that the connection can
        carry the next request: up to ``--max-head`` bytes within ``--head-timeout``, unless the
        client waits for a 100 Continue first (then the connection closes after the answer)."""
        if self.request.conn.they_are_waiting_for_100_continue:
            await trio.lowlevel.checkpoint()
            return
        budget = self.server.config.limits.max_head
        with contextlib.suppress(BadRequest), trio.move_on_after(self.timeouts.client_head):
            while budget > 0:
                body, ended = self.take_request_body()
                if body and self.rec is not None:
                    self.rec.body("req", body)
                budget -= len(body)
                if ended:
                    return
                data = await self.client.receive()
                if not data:
                    return
                self.request.tap.feed(data)

    def _finish(self) -> None:
        """Record the end of the exchange and print its console line."""
        ex = self.ex
        if self.rec is not None:
            self.rec.end(
                ex.outcome,
                status=ex.status,
                error=ex.error,
                req_bytes=ex.req_bytes,
                res_bytes=ex.res_bytes,
                ttfb_ns=ex.ttfb_ns,
            )
        self.server.report(ex, captured=self.rec is not None)

    # -- the request ----------------------------------------------------------------------------------

    def take_request_body(self) -> tuple[bytes, bool]:
        """The raw request body bytes h11 accepted from what arrived, and whether the body ended.
        Raises :class:`BadRequest` for malformed framing; the caller records the bytes."""
        conn, tap, guard = self.request.conn, self.request.tap, self.request.chunk_guard
        raw: list[bytes] = []
        ended = False
        try:
            while not ended:
                event = conn.next_event()
                raw.append(tap.take())  # h11 may consume bytes and still need more (a CRLF)
                if guard is not None and (problem := guard.consumed(raw[-1], event)):
                    raise BadRequest(f"bad request body: {problem}")
                if event is h11.NEED_DATA:
                    break
                if type(event) is h11.Data:
                    self.ex.req_bytes += len(event.data)
                elif type(event) is h11.EndOfMessage:
                    ended = self.ex.request_done = True
        except h11.RemoteProtocolError as exc:
            raise BadRequest(f"bad request body: {exc}") from None
        return _joined(raw), ended

    async def forward(self, route: Route, upstream_target: str, proxy_url: str) -> bool:
        """Relay the exchange to ``route``'s upstream; returns whether the upstream connection ended
        cleanly and the client connection may carry another request."""
        ex = self.ex
        ex.advance(Phase.CONNECTING)
        try:
            upstream = await self.server.pool.acquire(route.upstream, route.connect_timeout)
        except ConnectTimeout as exc:
            raise UpstreamTimeout(str(exc)) from None
        except UpstreamConnectError as exc:
            raise UpstreamFailure(str(exc), kind="upstream_unreachable") from None
        relayed = False
        try:
            with self.watchdog:
                await self._send_request(upstream, route, upstream_target, proxy_url)
                if not ex.request_done:
                    self._start_helper(self._pump_request_body, upstream)
                await self._relay_response(upstream, route.read_timeout or self.timeouts.read)
            relayed = True
        finally:
            if self.helper is not None:
                await self._stop_helper()  # a send it had under way is cut off here
            if relayed and upstream.reusable and self.request_sent:
                await self.server.pool.release(upstream)
            else:
                await upstream.aclose()
        return not self.close_client

    async def _send_request(
        self, upstream: UpstreamConnection, route: Route, target: str, proxy_url: str
    ) -> None:
        """Send the edited head and the body bytes already here upstream, in one write."""
        request, ex = self.request, self.ex
        ex.advance(Phase.SENDING)
        drop = messages.not_forwarded(request.headers, upgrade=self.upgrade is not None)
        # A proxy sends its own HTTP version (RFC 9110 section 6.2): HTTP/1.1, whatever the client's.
        target_bytes = target.encode("latin-1")
        start_line = b" ".join((request.event.method, target_bytes, b"HTTP/1.1"))
        host = route.upstream.host_header_bytes
        proxy_path = proxy_url.encode("latin-1", "replace")
        path_line = [proxy_path_line(proxy_path)] if route.forward_proxy_path else []
        head = messages.edit_head(
            request.head, drop=drop, start_line=start_line, host=host, add=path_line
        )
        # The head goes on line by line as received, not as h11 would write it; h11's client
        # connection is told the request line, which is what it needs to read the answer (a
        # HEAD's has no body; the request's own framing is the client's, checked by h11 there).
        upstream.h11.send(_request_line(request.event.method, target_bytes, host, self.upgrade))
        upstream.h11.send(_END)
        body, ended = self.take_request_body()
        self.watchdog.expect(self.timeouts.write, UpstreamFailure, "upstream stopped reading")
        try:
            await upstream.stream.send_all(head + body)
        except _BROKEN as exc:
            raise UpstreamFailure(
                f"sending the request upstream failed: {_describe(exc)}"
            ) from None
        self.request_sent = ended
        if self.rec is not None:
            stored = head if path_line else messages.add_proxy_path_line(head, proxy_path)
            self.rec.upstream_head(stored, "forwarded" if path_line else "added")
            if body:
                self.rec.body("req", body)
        ex.advance(Phase.AWAITING)

    async def _pump_request_body(self, upstream: UpstreamConnection) -> None:
        """Helper task: the rest of the request body, client -> upstream, then watch the client."""
        try:
            while not self.ex.request_done:
                with trio.move_on_after(self.timeouts.client_body) as scope:
                    data = await self.client.receive()
                if scope.cancelled_caught:
                    raise ClientTimeout(
                        f"client sent no request body bytes for {self.timeouts.client_body:g}s"
                    )
                if not data:
                    raise ClientAbort("client closed the connection while sending the request body")
                self.request.tap.feed(data)
                raw, ended = self.take_request_body()
                if raw and self.upstream_writable:
                    try:
                        with trio.fail_after(self.timeouts.write):
                            await upstream.stream.send_all(raw)
                    except (*_BROKEN, trio.TooSlowError):
                        # The upstream stopped reading (it may be answering early, a 413): its
                        # answer is still relayed; the connection will not be reused.
                        self.upstream_writable = False
                self.request_sent = ended and self.upstream_writable
                if raw and self.rec is not None:
                    self.rec.body("req", raw)
                    if self.rec.backlogged:
                        await self.rec.wait_for_room()
        except RelayError as error:
            self.watchdog.stop(error)
            return
        await self._watch_client()

    async def _watch_client(self) -> None:
        """Helper task while the response is on its way: a read returns when the client pipelines
        more (kept for the next request) or goes away, which stops the exchange at once."""
        fed = 0
        while fed <= self.server.config.limits.max_head:
            data = await self.client.receive()
            if not data:
                with trio.move_on_after(CLIENT_CLOSE_GRACE):
                    await self.response_done.wait()
                if not self.response_done.is_set():
                    self.watchdog.stop(
                        ClientAbort("client closed the connection before the response ended")
                    )
                return
            fed += len(data)
            self.request.tap.feed(data)
        await trio.sleep_forever()  # enough is buffered for the next request: stop reading

    # -- the response ---------------------------------------------------------------------------------

    async def _receive(self, upstream: UpstreamConnection, read_timeout: float) -> None:
        """One read from the upstream into h11, under the read timeout. A read that waits longer
        than :data:`WATCH_CLIENT_AFTER` also starts watching the client, if nothing does yet (a
        streamed answer watches it from its first body bytes on: see :meth:`_relay_response`)."""
        ex = self.ex
        self.watchdog.expect(
            read_timeout,
            UpstreamTimeout,
            lambda: f"upstream sent nothing for {read_timeout:g}s {ex.where()}",
        )
        try:
            if self.helper is None:
                with trio.move_on_after(WATCH_CLIENT_AFTER):
                    await upstream.receive()
                    self.read_ns = _now(self.ex)
                    return
                self._start_helper(self._watch_client)
            await upstream.receive()
            self.read_ns = _now(self.ex)
        except _BROKEN as exc:
            raise UpstreamFailure(f"upstream failed {ex.where()}: {_describe(exc)}") from None

    async def _send_to_client(self, data: bytes) -> None:
        """Send ``data`` to the client. What its socket takes at once goes without a deadline or a
        yield (the relay's next read is the loop's checkpoint); only a send that has to wait for
        the client runs under the write timeout."""
        stream = self.client.stream
        await trio.lowlevel.checkpoint_if_cancelled()  # a stopped exchange sends nothing more
        try:
            sent = stream.send_nowait(data)
            if sent < len(data):
                timeout = self.timeouts.write
                self.watchdog.expect(
                    timeout, ClientAbort, f"client stopped reading for {timeout:g}s"
                )
                await stream.send_all(memoryview(data)[sent:])
        except _BROKEN:
            raise ClientAbort("client connection lost while receiving the response") from None

    async def _relay_response(self, upstream: UpstreamConnection, read_timeout: float) -> None:
        """Upstream -> client: each read's heads and body bytes, forwarded before the next read."""
        head, response = await self._relay_heads(upstream, read_timeout)
        if isinstance(response, h11.InformationalResponse):  # a 101: the protocol switches
            await self._relay_session(upstream, head)
            return
        dechunk = self.request.event.http_version == b"1.0" and _is_chunked(response.headers)
        out = [head]
        while True:
            read = self._take_response_body(upstream, dechunk)
            if read.forward:
                out.append(read.forward)
            if out:
                await self._send_to_client(_joined(out))
                out.clear()
            if read.raw and self.rec is not None:
                self.rec.body("res", read.raw, ns=self.read_ns)
            if read.error is not None:
                raise read.error
            if read.ended:
                self.ex.advance(Phase.DONE)
                self.response_done.set()
                return
            if self.rec is not None and self.rec.backlogged:
                self.watchdog.relax()  # waiting for capture is no peer's fault
                await self.rec.wait_for_room()
            if read.raw and self.helper is None:
                # A streamed answer: its client is watched from now on, instead of probing it
                # around every read (a cancel scope per read costs more than one task).
                self._start_helper(self._watch_client)
            await self._receive(upstream, read_timeout)

    async def _relay_session(self, upstream: UpstreamConnection, head: bytes) -> None:
        """After a 101: send its head to the client, then relay the WebSocket session (or other
        switched protocol) as raw bytes both ways until either side ends it (see tunnel.py)."""
        await self._stop_helper()  # the client watcher: the tunnel reads the client from now on
        client_early, client_closed = self.request.conn.trailing_data
        upstream_early = upstream.h11.trailing_data[0]
        await self._send_to_client(head)
        self.watchdog.relax()  # a quiet session is not cut: only writes have deadlines
        if client_closed and not client_early:
            raise ClientAbort("client closed the connection before the session began")
        tunnel = Tunnel(
            client=self.client.stream,
            upstream=upstream.stream,
            read_size=self.client.read_size,
            write_timeout=self.timeouts.write,
            state=self.ex,
            recorder=self.rec,
        )
        await tunnel.run(client_early, upstream_early, self.read_ns)
        self.ex.advance(Phase.DONE)
        self.response_done.set()

    async def _relay_heads(
        self, upstream: UpstreamConnection, read_timeout: float
    ) -> tuple[bytes, h11.Response | h11.InformationalResponse]:
        """Relay interim (1xx) heads; return the final head (or a 101 that switches protocols,
        when the client asked to) as it goes to the client, unsent."""
        ex, rec = self.ex, self.rec
        while True:
            event, raw = await self._next_head(upstream, read_timeout)
            status = event.status_code
            if ex.ttfb_ns is None:
                ex.ttfb_ns = self.read_ns
            if rec is not None:
                rec.response_head(status, raw, ns=self.read_ns)
            if status > 599:
                raise UpstreamFailure(f"upstream answered with status {status}")
            if isinstance(event, h11.InformationalResponse):
                if status == 101:
                    if self.upgrade is None:  # h11 refuses one the client did not ask for
                        raise UpstreamFailure("upstream switched protocols")
                    return self._switch_head(raw, event), event
                if self.request.event.http_version != b"1.0":
                    drop = messages.not_forwarded(event.headers)
                    await self._send_to_client(messages.edit_head(raw, drop=drop))
                continue
            return self._client_head(raw, event), event

    async def _next_head(
        self, upstream: UpstreamConnection, read_timeout: float
    ) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
        """The upstream's next response head (interim or final) and the raw bytes behind it."""
        while True:
            event = self._next_response_event(upstream)
            if event is not h11.NEED_DATA:
                break
            await self._receive(upstream, read_timeout)
        raw = upstream.tap.take()
        if not isinstance(event, h11.InformationalResponse | h11.Response):
            raise UpstreamFailure(f"upstream sent {type(event).__name__} {self.ex.where()}")
        return event, raw

    def _switch_head(self, raw: bytes, response: h11.InformationalResponse) -> bytes:
        """A 101 head as the client gets it: its Connection and Upgrade lines go on; the client
        connection ends with the session."""
        self.ex.status = response.status_code
        self.ex.advance(Phase.RESPONDING)
        self.close_client = True
        return messages.edit_head(raw, drop=messages.not_forwarded(response.headers, upgrade=True))

    def _client_head(self, raw: bytes, response: h11.Response) -> bytes:
        """The final response head as the client gets it; decides whether the connection closes."""
        request = self.request
        ex = self.ex
        ex.status = response.status_code
        ex.advance(Phase.RESPONDING)
        headers = list(response.headers)
        drop = messages.not_forwarded(headers)
        chunked = _is_chunked(headers)
        framed = chunked or messages.header_value(headers, b"content-length") is not None
        no_body = request.event.method == b"HEAD" or response.status_code in (204, 304)
        dechunk = request.event.http_version == b"1.0" and chunked
        if dechunk:
            drop |= {b"transfer-encoding"}
        self.close_client = (
            request.conn.their_state is h11.MUST_CLOSE
            or not ex.request_done  # an early answer (a 413): the rest of the body is not read
            or request.event.http_version == b"1.0"
            or not (framed or no_body)
            or self.server.shutting_down
        )
        close = [b"Connection: close\r\n"] if self.close_client else []
        return messages.edit_head(raw, drop=drop, add=close)

    def _next_response_event(self, upstream: UpstreamConnection) -> h11.Event | type[h11.NEED_DATA]:
        try:
            event = upstream.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamFailure(f"upstream failed {self.ex.where()}: {exc}") from None
        if event is h11.PAUSED:
            raise UpstreamFailure("upstream switched protocols")
        return event  # type: ignore[return-value]

    def _take_response_body(self, upstream: UpstreamConnection, dechunk: bool) -> BodyRead:
        """The raw body bytes h11 accepted from what arrived, and their payload when ``dechunk``.
        After a protocol error, the bytes before it and the error; the rest is not forwarded."""
        ex = self.ex
        read = BodyRead()
        raw: list[bytes] = []
        payload: list[bytes] = []
        try:
            while True:
                event = self._next_response_event(upstream)
                raw.append(upstream.tap.take())  # h11 may consume bytes and still need more
                if event is h11.NEED_DATA:
                    break
                if type(event) is h11.Data:
                    if ex.ttft_ns is None:
                        ex.ttft_ns = self.read_ns
                    ex.res_bytes += len(event.data)
                    if dechunk:
                        payload.append(bytes(event.data))
                elif type(event) is h11.EndOfMessage:
                    read.ended = True
                    break
        except UpstreamFailure as error:
            read.error = error
        read.raw = _joined(raw)
        read.forward = _joined(payload) if dechunk else read.raw
        return read

    # -- helper tasks -----------------------------------------------------------------------------

    def _start_helper(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``fn(*args)`` beside the exchange in the connection's nursery; the exchange stops it
        and waits for it before it ends (:meth:`_stop_helper`)."""
        scope = trio.CancelScope()
        done = trio.Event()
        self.helper, self.helper_done = scope, done

        async def helper() -> None:
            try:
                with scope:
                    await fn(*args)
            finally:
                done.set()

        self.client.nursery.start_soon(helper)

    async def _stop_helper(self) -> None:
        """Cancel the helper task and wait until it has ended."""
        if self.helper is not None and self.helper_done is not None:
            self.helper.cancel()
            with trio.CancelScope(shield=True):
                await self.helper_done.wait()
            self.helper = self.helper_done = None


@dataclasses.dataclass(slots=True)
class BodyRead:
    """What one pass over h11's events of a response body found."""

    raw: bytes = b""  # the bytes behind the events, as received
    forward: bytes = b""  # what goes to the client: ``raw``, or its payload for an HTTP/1.0 client
    ended: bool = False
    error: UpstreamFailure | None = None  # malformed framing after ``raw``


_END: Final = h11.EndOfMessage()


@functools.lru_cache(maxsize=1024)
def _request_line(
    method: bytes, target: bytes, host: bytes, upgrade: bytes | None = None
) -> h11.Request:
    """The request h11's upstream connection is told of (events are immutable: an API's few
    targets are validated once, not on every request). With ``upgrade``, it proposes the switch,
    so that h11 accepts a 101 and then hands the connection over."""
    headers = [(b"host", host)]
    if upgrade is not None:
        headers += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
    return h11.Request(method=method, target=target, headers=headers)


def _joined(parts: list[bytes]) -> bytes:
    """``parts`` as one bytes object, copied only when more than one of them holds bytes (a big
    body's read is usually one piece)."""
    pieces = [p for p in parts if p]
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _is_chunked(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    coding = messages.header_value(headers, b"transfer-encoding")
    return coding is not None and coding.lower() == b"chunked"


def _now(ex: ExchangeState) -> int:
    return time.perf_counter_ns() - ex.t0_ns


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{text} ({cause.strerror})" if text else cause.strerror
    return text or type(exc).__name__
