"""The reverse proxy: a trio listener, one task per client connection, one h11 machine per side.

Hot path per exchange: h11 frames the client's request; the head is rewritten for the upstream and
sent; body bytes are relayed in both directions as they arrive (a task for each direction), and each
read becomes one capture record handed to the writer's channel. Nothing parses a body, nothing touches
the disk, and nothing waits for the end of a stream before forwarding it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, TextIO

import h11
import trio

from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    Outcome,
    Record,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.proxy import headers as hdr
from wirecap.proxy.console import ExchangeSummary, format_json, format_text
from wirecap.proxy.routing import Router
from wirecap.proxy.upstream import (
    ConnectionPool,
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamTimeout,
    make_ssl_context,
)

if TYPE_CHECKING:
    from wirecap.capture.writer import CaptureWriter
    from wirecap.proxy.config import ProxyConfig, Route

logger = logging.getLogger("wirecap.proxy")

Submit = Callable[[Record], Awaitable[None]]
#: Bytes of a malformed or oversize head kept in its capture record (the rest is not needed to see why).
MAX_BAD_HEAD_RECORDED: Final = 64 * 1024
#: After a client closes its connection mid-response, how long the relay may still finish reading the
#: upstream's end of message before the exchange counts as a client abort.
CLIENT_CLOSE_GRACE: Final = 1.0
#: How long the relay waits on the upstream before it starts a task to watch the client for an abort
#: (quick answers never need one; an LLM thinking for seconds does).
WATCH_CLIENT_AFTER: Final = 0.05


async def _discard(record: Record) -> None:
    """Submit function for exchanges that are not captured."""


def new_exchange_id() -> str:
    """12 hex digits: unique enough across millions of exchanges, short enough for a console line."""
    return os.urandom(6).hex()


class ClientGone(Exception):
    """The client closed its connection or stopped reading."""


class _ClientConnection:
    """The client side of a connection: a stream, an h11 server machine, and raw head tracking."""

    def __init__(self, stream: trio.abc.Stream, *, read_size: int, max_head: int) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.read_size = read_size
        self.head_buf = bytearray()
        self.want_head = True
        # When the first byte of the current head arrived: an exchange's clocks start there, not
        # while the connection sat idle between keep-alive requests.
        self.head_started_ns = 0
        self.head_wall_ns = 0

    def _mark_head_start(self) -> None:
        self.head_started_ns = time.perf_counter_ns()
        self.head_wall_ns = time.time_ns()

    async def read(self) -> None:
        data = await self.stream.receive_some(self.read_size)
        if self.want_head:
            if data and not self.head_buf:
                self._mark_head_start()
            self.head_buf += data
        self.h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes any bytes-like

    def take_head(self) -> bytes:
        """The raw bytes of the request head just parsed."""
        cut = len(self.head_buf) - len(self.h11.trailing_data[0])
        raw = bytes(self.head_buf[:cut])
        self.head_buf = bytearray()
        self.want_head = False
        return raw

    def expect_next_head(self) -> None:
        """The request body is over: whatever h11 still buffers begins the next head."""
        self.want_head = True
        self.head_buf = bytearray(self.h11.trailing_data[0])
        if self.head_buf:
            self._mark_head_start()  # a pipelined request: it is already here

    async def send(self, event: h11.Event) -> bytes:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)
        return data or b""

    @property
    def can_respond(self) -> bool:
        return self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)


@dataclasses.dataclass(slots=True)
class _Exchange:
    """Mutable state of one exchange, shared by its two relay tasks."""

    id: str
    t0: int  # perf_counter_ns at the start
    wall_ns: int
    method: str
    target: str
    submit: Submit
    upstream_url: str | None = None
    status: int | None = None
    ttfb_ns: int | None = None
    ttft_ns: int | None = None
    req_bytes: int = 0
    res_bytes: int = 0
    request_done: bool = False
    response_started: bool = False
    upstream_send_failed: bool = False
    client_eof: bool = False
    response_done: trio.Event = dataclasses.field(default_factory=trio.Event)
    outcome: Outcome = "ok"
    error: str | None = None
    failure_status: int = 502
    failure_kind: str = "upstream_error"

    def now(self) -> int:
        return time.perf_counter_ns() - self.t0

    async def request_data(self, data: bytes | bytearray) -> None:
        """Count and record request body bytes on their way upstream."""
        self.req_bytes += len(data)
        await self.submit(BodyChunk(x=self.id, dir="req", ns=self.now(), data=data))

    def fail(
        self, outcome: Outcome, error: str, status: int = 502, kind: str = "upstream_error"
    ) -> None:
        if self.outcome == "ok":
            self.outcome, self.error = outcome, error
            self.failure_status, self.failure_kind = status, kind


@dataclasses.dataclass(slots=True)
class ProxyStatistics:
    exchanges: int = 0
    active: int = 0
    connections: int = 0
    errors: int = 0


class ProxyServer:
    """The recording reverse proxy.

    ``await nursery.start(server.run)`` binds the listener and returns the bound (host, port); the
    server then runs until :meth:`shutdown`, which stops accepting, gives exchanges in flight
    ``shutdown_grace`` seconds, cancels the rest, and lets the capture writer finish its file.
    """

    def __init__(
        self,
        config: ProxyConfig,
        writer: CaptureWriter | None = None,
        *,
        console: TextIO | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.router = Router(config.routes)
        self.pool = ConnectionPool(
            connect_timeout=config.timeouts.connect,
            idle_timeout=config.timeouts.pool_idle,
            read_size=config.limits.read_size,
            max_head=config.limits.max_head,
            max_idle_per_origin=config.limits.pool_size,
            ssl_context=make_ssl_context(config.upstream_ca) if config.upstream_ca else None,
        )
        self.console = console if console is not None else sys.stdout
        self.stats = ProxyStatistics()
        self.listen_host = config.listen_host
        self.listen_port = config.listen_port
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self._idle_scopes: set[trio.CancelScope] = set()
        self._listeners: list[trio.SocketListener] = []

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = self._listeners or await self.bind()
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as accept:
                    for listener in listeners:
                        accept.start_soon(self._accept_loop, listener, handlers)
                    task_status.started((self.listen_host, self.listen_port))
                    await self._shutdown.wait()
                    accept.cancel_scope.cancel()
                handlers.cancel_scope.deadline = (
                    trio.current_time() + self.config.timeouts.shutdown_grace
                )
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            with trio.CancelScope(shield=True):
                await self.pool.aclose()
                if self.writer is not None:
                    await self.writer.aclose()
            self._stopped.set()

    async def bind(self) -> list[trio.SocketListener]:
        """Open the listening sockets (raises OSError when the address is taken)."""
        self._listeners = await trio.open_tcp_listeners(
            self.config.listen_port, host=self.config.listen_host
        )
        self.listen_port = self._listeners[0].socket.getsockname()[1]
        return self._listeners

    def shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent): stop accepting, close idle connections, and let
        exchanges in flight finish within the grace period."""
        self._shutdown.set()
        for scope in list(self._idle_scopes):
            scope.cancel()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has finished (the capture writer has been told to close)."""
        await self._stopped.wait()

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                logger.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            handlers.start_soon(self._handle_client, stream)

    async def _handle_client(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        try:
            peer = stream.socket.getpeername()
            client_addr = f"{peer[0]}:{peer[1]}"
        except OSError:
            client_addr = ""
        client = _ClientConnection(
            stream, read_size=self.config.limits.read_size, max_head=self.config.limits.max_head
        )
        try:
            await self._serve_client(client, client_addr)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass
        except Exception:
            self.stats.errors += 1
            logger.exception("unexpected error on a client connection")
        finally:
            await trio.aclose_forcefully(stream)

    # -- per connection -----------------------------------------------------------------------------

    async def _serve_client(self, client: _ClientConnection, client_addr: str) -> None:
        first = True
        while True:
            try:
                event = await self._receive_head(client, first)
            except (h11.RemoteProtocolError, _HeadTimeout) as exc:
                t0, started_ns = self._head_clock(client)
                if isinstance(exc, _HeadTimeout):
                    if exc.partial:
                        await self._reject(
                            client,
                            client_addr,
                            t0,
                            started_ns,
                            408,
                            f"request head not completed within {self.config.timeouts.client_head:g}s",
                            outcome="timeout",
                        )
                    return
                await self._reject(
                    client, client_addr, t0, started_ns, exc.error_status_hint, str(exc)
                )
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed between requests: a normal end of keep-alive
            t0, started_ns = self._head_clock(client)
            first = False
            raw_head = client.take_head()
            if len(raw_head) > self.config.limits.max_head:
                # h11 bounds only heads that arrive in pieces; one that arrives whole is checked here.
                client.head_buf = bytearray(raw_head)
                await self._reject(
                    client,
                    client_addr,
                    t0,
                    started_ns,
                    431,
                    f"request head is {len(raw_head)} bytes; the limit is {self.config.limits.max_head}",
                )
                return
            await self._exchange(client, event, raw_head, client_addr, t0, started_ns)
            if (
                client.h11.our_state is h11.DONE
                and client.h11.their_state is h11.DONE
                and not self.shutting_down
            ):
                client.h11.start_next_cycle()
            else:
                return

    @staticmethod
    def _head_clock(client: _ClientConnection) -> tuple[int, int]:
        """(perf_counter_ns, wall ns) of the current head's first byte, or now if none arrived."""
        if client.head_buf and client.head_started_ns:
            return client.head_started_ns, client.head_wall_ns
        return time.perf_counter_ns(), time.time_ns()

    async def _receive_head(self, client: _ClientConnection, first: bool) -> h11.Event:
        timeouts = self.config.timeouts
        idle_deadline = trio.current_time() + (
            timeouts.client_head if first else timeouts.keepalive
        )
        head_deadline = math.inf
        while True:
            event = client.h11.next_event()
            if event is h11.PAUSED:
                return h11.ConnectionClosed()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)
                return event
            if client.head_buf and head_deadline == math.inf:
                head_deadline = trio.current_time() + timeouts.client_head
            idle = not client.head_buf
            if idle and self.shutting_down:
                return h11.ConnectionClosed()
            with trio.move_on_at(head_deadline if not idle else idle_deadline) as scope:
                if idle:
                    self._idle_scopes.add(scope)  # shutdown() closes idle keep-alive connections
                try:
                    await client.read()
                finally:
                    self._idle_scopes.discard(scope)
            if scope.cancelled_caught:
                if idle and self.shutting_down:
                    return h11.ConnectionClosed()
                raise _HeadTimeout(bool(client.head_buf))

    async def _reject(
        self,
        client: _ClientConnection,
        client_addr: str,
        t0: int,
        started_ns: int,
        status: int,
        reason: str,
        outcome: Outcome = "protocol_error",
    ) -> None:
        """Answer a request we cannot parse (400, 431, 408...), record it, and close."""
        ex = _Exchange(
            id=new_exchange_id(),
            t0=t0,
            wall_ns=started_ns,
            method="-",
            target="-",
            submit=self._submit(),
        )
        raw = bytes(client.head_buf[:MAX_BAD_HEAD_RECORDED])
        await ex.submit(
            RequestReceived(
                x=ex.id, wall_ns=started_ns, method="-", target="-", head=raw, client=client_addr
            )
        )
        kinds = {408: "request_timeout", 431: "request_header_fields_too_large"}
        ex.fail(outcome, reason)
        await self._respond_error(client, ex, status, kinds.get(status, "bad_request"), reason)
        await self._finish(ex, captured=self.writer is not None)

    # -- per exchange ---------------------------------------------------------------------------------

    async def _exchange(
        self,
        client: _ClientConnection,
        request: h11.Request,
        raw_head: bytes,
        client_addr: str,
        t0: int,
        started_ns: int,
    ) -> None:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("latin-1")
        host_header = _header(request, b"host")
        match = self.router.match(
            method, host_header.decode("latin-1") if host_header else None, target
        )
        route = match.route if match else None
        captured = self._should_capture(route)
        ex = _Exchange(
            id=new_exchange_id(),
            t0=t0,
            wall_ns=started_ns,
            method=method,
            target=target,
            submit=self._submit() if captured else _discard,
            upstream_url=match.upstream_url if match else None,
        )
        self.stats.exchanges += 1
        self.stats.active += 1
        try:
            proxy_url = hdr.proxy_url(self.listen_host, self.listen_port, host_header, target)
            await ex.submit(
                RequestReceived(
                    x=ex.id,
                    wall_ns=started_ns,
                    method=method,
                    target=target,
                    head=raw_head,
                    client=client_addr,
                    proxy_url=proxy_url,
                    route=route.prefix if route else None,
                    upstream_url=ex.upstream_url,
                )
            )
            problem = hdr.framing_error(request.headers.raw_items())
            if problem is not None:
                ex.fail("protocol_error", problem)
                await self._respond_error(client, ex, 400, "bad_request", problem)
                return
            if match is None or route is None:
                await self._read_request_body(client, ex)
                await self._respond_error(
                    client,
                    ex,
                    404,
                    "no_route",
                    f"no route for {target.partition('?')[0]}",
                    routes=[r.prefix for r in self.router.routes],
                )
                return
            await self._forward(client, request, ex, route, match.upstream_target, proxy_url)
        finally:
            self.stats.active -= 1
            with trio.CancelScope(shield=True):
                await self._finish(ex, captured)

    async def _read_request_body(self, client: _ClientConnection, ex: _Exchange) -> None:
        """Read (and record) a small request body the proxy answers itself, so the connection can be
        reused; give up quietly on a large, slow or 100-continue body (the connection then closes)."""
        if client.h11.they_are_waiting_for_100_continue:
            return
        budget = self.config.limits.max_head
        with trio.move_on_after(self.config.timeouts.client_head):
            try:
                while budget > 0:
                    event = client.h11.next_event()
                    if event is h11.NEED_DATA:
                        await client.read()
                    elif isinstance(event, h11.Data):
                        budget -= len(event.data)
                        await ex.request_data(event.data)
                    else:
                        if isinstance(event, h11.EndOfMessage):
                            client.expect_next_head()
                        return
            except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _forward(
        self,
        client: _ClientConnection,
        request: h11.Request,
        ex: _Exchange,
        route: Route,
        upstream_target: str,
        proxy_url: str,
    ) -> None:
        timeouts = self.config.timeouts
        try:
            upstream = await self.pool.acquire(route.upstream, route.connect_timeout)
        except UpstreamTimeout as exc:
            ex.fail("timeout", str(exc), 504, "upstream_timeout")
            await self._respond_error(
                client, ex, 504, "upstream_timeout", str(exc), upstream=ex.upstream_url
            )
            return
        except UpstreamConnectError as exc:
            ex.fail("upstream_error", str(exc), 502, "upstream_unreachable")
            await self._respond_error(
                client, ex, 502, "upstream_unreachable", str(exc), upstream=ex.upstream_url
            )
            return
        proxy_url_bytes = proxy_url.encode("latin-1", "replace")
        up_request = h11.Request(
            method=request.method,
            target=upstream_target.encode("latin-1"),
            headers=hdr.upstream_request_headers(
                request.headers.raw_items(),
                route.upstream.host_header.encode("ascii"),
                proxy_url_bytes if route.forward_proxy_path else None,
            ),
        )
        released = False
        try:
            try:
                body_done = await self._send_request(
                    client, upstream, ex, up_request, route, proxy_url_bytes
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                ex.fail("upstream_error", f"sending the request upstream failed: {_describe(exc)}")
                await self._respond_error(
                    client,
                    ex,
                    502,
                    "upstream_unreachable",
                    ex.error or "",
                    upstream=ex.upstream_url,
                )
                return
            except h11.RemoteProtocolError as exc:
                ex.fail("protocol_error", f"bad request body: {exc}", 400, "bad_request")
                await self._respond_error(client, ex, 400, "bad_request", ex.error or "")
                return
            except ClientGone as exc:
                ex.fail("client_abort", str(exc))
                return
            read_timeout = route.read_timeout or timeouts.read
            async with trio.open_nursery() as nursery:
                if not body_done:
                    nursery.start_soon(
                        self._relay_request_body, client, upstream, ex, nursery.cancel_scope
                    )
                await self._relay_response(
                    client, upstream, ex, read_timeout, nursery, watching=not body_done
                )
                nursery.cancel_scope.cancel()
            if ex.outcome != "ok" and not ex.response_started:
                await self._respond_error(
                    client,
                    ex,
                    ex.failure_status,
                    ex.failure_kind,
                    ex.error or "",
                    upstream=ex.upstream_url,
                )
            if ex.outcome == "ok":
                released = True
                await self.pool.release(upstream)
        finally:
            if not released:
                await upstream.aclose()

    async def _send_request(
        self,
        client: _ClientConnection,
        upstream: UpstreamConnection,
        ex: _Exchange,
        up_request: h11.Request,
        route: Route,
        proxy_url_bytes: bytes,
    ) -> bool:
        """Send the head and whatever body h11 already holds, in one write. True when the whole
        request went (the usual case for LLM calls: the body arrives with the head)."""
        head = upstream.h11.send(up_request) or b""
        await ex.submit(
            UpstreamRequest(
                x=ex.id,
                ns=ex.now(),
                head=head
                if route.forward_proxy_path
                else hdr.add_proxy_path_line(head, proxy_url_bytes),
                proxy_path="forwarded" if route.forward_proxy_path else "added",
            )
        )
        out = [head]
        done = False
        conn = client.h11
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                await ex.request_data(event.data)
                out.append(upstream.h11.send(event) or b"")
            elif isinstance(event, h11.EndOfMessage):
                out.append(upstream.h11.send(h11.EndOfMessage()) or b"")
                done = True
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ClientGone("client closed the connection while sending the request body")
            else:
                break  # NEED_DATA: the rest of the body is still on its way
        with trio.fail_after(self.config.timeouts.write):
            await upstream.stream.send_all(b"".join(out))
        if done:
            ex.request_done = True
            client.expect_next_head()
        return done

    async def _relay_request_body(
        self,
        client: _ClientConnection,
        upstream: UpstreamConnection,
        ex: _Exchange,
        scope: trio.CancelScope,
    ) -> None:
        """Client -> upstream: the rest of the body as it arrives; then watch the client."""
        timeouts = self.config.timeouts
        conn = client.h11
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(timeouts.read):
                        await client.read()
                    continue
                if isinstance(event, h11.Data):
                    await ex.request_data(event.data)
                    if not ex.upstream_send_failed:
                        await self._send_upstream(upstream, event, ex)
                elif isinstance(event, h11.EndOfMessage):
                    if not ex.upstream_send_failed:
                        await self._send_upstream(upstream, h11.EndOfMessage(), ex)
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ClientGone("client closed the connection while sending the request body")
            ex.request_done = True
            client.expect_next_head()
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            ex.fail("client_abort", str(exc) or "client connection lost")
            scope.cancel()
            return
        except trio.TooSlowError:
            ex.fail(
                "timeout",
                f"client sent no request body bytes for {timeouts.read:g}s",
                408,
                "request_timeout",
            )
            scope.cancel()
            return
        except h11.RemoteProtocolError as exc:
            ex.fail("protocol_error", f"bad request body: {exc}", 400, "bad_request")
            scope.cancel()
            return
        await self._watch_client(client, ex, scope)

    async def _watch_client(
        self, client: _ClientConnection, ex: _Exchange, scope: trio.CancelScope
    ) -> None:
        """While the response is on its way: a read returns only when the client sends more
        (pipelining, kept in h11's buffer) or goes away, which aborts the exchange at once instead of
        at the next chunk of a long stream."""
        max_pipelined = self.config.limits.max_head
        try:
            while True:
                if len(client.head_buf) > max_pipelined:
                    await trio.sleep_forever()  # enough buffered for the next request; stop reading
                await client.read()
                if client.h11.trailing_data[1]:
                    # Clients often hang up the moment they have what they need (an SDK stops at
                    # "data: [DONE]" before the chunked terminator): give the relay a moment to see
                    # the upstream end; it reports an abort if any body byte was still to come.
                    ex.client_eof = True
                    with trio.move_on_after(CLIENT_CLOSE_GRACE):
                        await ex.response_done.wait()
                    if not ex.response_done.is_set():
                        raise ClientGone("client closed the connection before the response ended")
                    return
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            ex.fail("client_abort", str(exc) or "client connection lost")
            scope.cancel()

    async def _send_upstream(
        self, upstream: UpstreamConnection, event: h11.Event, ex: _Exchange
    ) -> None:
        try:
            with trio.fail_after(self.config.timeouts.write):
                await upstream.send(event)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            h11.LocalProtocolError,
        ):
            # The upstream stopped reading (it may already be answering, e.g. 413): keep reading its
            # response; the connection will not be reused.
            ex.upstream_send_failed = True

    async def _relay_response(
        self,
        client: _ClientConnection,
        upstream: UpstreamConnection,
        ex: _Exchange,
        read_timeout: float,
        nursery: trio.Nursery,
        *,
        watching: bool,
    ) -> None:
        """Upstream -> client: heads and body chunks forwarded as soon as they arrive.

        Everything one upstream read produced goes to the client in one write, just before the relay
        waits for the next read, so nothing is held back and small answers cost one send. When the
        upstream keeps the relay waiting, a task starts watching the client for an abort.
        """
        write_timeout = self.config.timeouts.write
        submit = ex.submit
        send = client.h11.send
        out: list[bytes] = []
        reading = True
        with trio.CancelScope() as scope:
            try:
                while True:
                    event, raw = upstream.next_event_nowait()
                    if event is h11.NEED_DATA:
                        if out:
                            reading = False
                            scope.deadline = trio.current_time() + write_timeout
                            await client.stream.send_all(b"".join(out))
                            out = []
                        reading = True
                        scope.deadline = trio.current_time() + read_timeout
                        if not watching:
                            with trio.move_on_after(WATCH_CLIENT_AFTER):
                                await upstream.receive()
                                continue
                            nursery.start_soon(self._watch_client, client, ex, nursery.cancel_scope)
                            watching = True
                        await upstream.receive()
                        continue
                    now = ex.now()
                    reading = False
                    if isinstance(event, h11.Data):
                        if ex.ttft_ns is None:
                            ex.ttft_ns = now
                        ex.res_bytes += len(event.data)
                        await submit(BodyChunk(x=ex.id, dir="res", ns=now, data=event.data))
                        if ex.client_eof:
                            ex.fail(
                                "client_abort",
                                "client closed the connection before the response ended",
                            )
                            return
                        out.append(send(h11.Data(data=event.data)) or b"")
                    elif isinstance(event, h11.Response):
                        if ex.ttfb_ns is None:
                            ex.ttfb_ns = now
                        ex.status = event.status_code
                        await submit(
                            ResponseHead(x=ex.id, ns=now, status=event.status_code, head=raw)
                        )
                        ex.response_started = True
                        out.append(
                            send(
                                h11.Response(
                                    status_code=event.status_code,
                                    headers=hdr.response_headers(event.headers.raw_items()),
                                    reason=event.reason,
                                )
                            )
                            or b""
                        )
                    elif isinstance(event, h11.InformationalResponse):
                        if ex.ttfb_ns is None:
                            ex.ttfb_ns = now
                        await submit(
                            ResponseHead(x=ex.id, ns=now, status=event.status_code, head=raw)
                        )
                        if event.status_code != 101 and client.can_respond:
                            out.append(
                                send(
                                    h11.InformationalResponse(
                                        status_code=event.status_code,
                                        headers=hdr.response_headers(event.headers.raw_items()),
                                        reason=event.reason,
                                    )
                                )
                                or b""
                            )
                    elif isinstance(event, h11.EndOfMessage):
                        ex.response_done.set()
                        if ex.client_eof:
                            return  # every body byte reached the client; only framing is left
                        out.append(send(h11.EndOfMessage()) or b"")
                        scope.deadline = trio.current_time() + write_timeout
                        await client.stream.send_all(b"".join(out))
                        return
                    elif isinstance(event, h11.ConnectionClosed):
                        reading = True
                        raise trio.BrokenResourceError("upstream closed the connection")
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                h11.RemoteProtocolError,
            ) as exc:
                if reading:
                    if out and not ex.client_eof:
                        # Deliver what did arrive before the upstream broke off.
                        with (
                            trio.move_on_after(write_timeout),
                            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                        ):
                            await client.stream.send_all(b"".join(out))
                    where = "mid-response" if ex.response_started else "before responding"
                    ex.fail("upstream_error", f"upstream failed {where}: {_describe(exc)}")
                else:
                    ex.fail("client_abort", "client connection lost while receiving the response")
                return
            except h11.LocalProtocolError as exc:
                ex.fail("upstream_error", f"upstream response cannot be relayed: {exc}")
                return
        if scope.cancelled_caught:
            if reading:
                where = "mid-response" if ex.response_started else "before responding"
                ex.fail(
                    "timeout",
                    f"upstream sent nothing for {read_timeout:g}s {where}",
                    504,
                    "upstream_timeout",
                )
            else:
                ex.fail("client_abort", f"client stopped reading for {write_timeout:g}s")

    async def _respond_error(
        self,
        client: _ClientConnection,
        ex: _Exchange,
        status: int,
        kind: str,
        message: str,
        **extra: object,
    ) -> None:
        """Send a JSON error the proxy made itself, and record it as the exchange's response."""
        if not client.can_respond:
            return
        headers, body = hdr.error_body(status, kind, message, exchange=ex.id, **extra)
        ex.status = status
        try:
            with trio.fail_after(self.config.timeouts.write):
                head = await client.send(
                    h11.Response(
                        status_code=status, headers=headers, reason=HTTPStatus(status).phrase
                    )
                )
                now = ex.now()
                if ex.ttfb_ns is None:
                    ex.ttfb_ns = now
                await ex.submit(ResponseHead(x=ex.id, ns=now, status=status, head=head, by="proxy"))
                ex.res_bytes += len(body)
                await ex.submit(BodyChunk(x=ex.id, dir="res", ns=now, data=body))
                await client.send(h11.Data(data=body))
                await client.send(h11.EndOfMessage())
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            h11.LocalProtocolError,
        ):
            pass

    async def _finish(self, ex: _Exchange, captured: bool) -> None:
        duration = ex.now()
        await ex.submit(
            ExchangeEnd(
                x=ex.id,
                ns=duration,
                outcome=ex.outcome,
                status=ex.status,
                error=ex.error,
                req_bytes=ex.req_bytes,
                res_bytes=ex.res_bytes,
                ttfb_ns=ex.ttfb_ns,
            )
        )
        if self.config.log_format == "quiet":
            return
        summary = ExchangeSummary(
            id=ex.id,
            wall_ns=ex.wall_ns,
            method=ex.method,
            target=ex.target,
            upstream_url=ex.upstream_url,
            status=ex.status,
            outcome=ex.outcome,
            duration_ns=duration,
            ttfb_ns=ex.ttfb_ns,
            ttft_ns=ex.ttft_ns,
            req_bytes=ex.req_bytes,
            res_bytes=ex.res_bytes,
            captured=captured,
            error=ex.error,
        )
        line = format_json(summary) if self.config.log_format == "json" else format_text(summary)
        with contextlib.suppress(OSError, ValueError):
            print(line, file=self.console, flush=True)

    # -- capture policy -----------------------------------------------------------------------------

    def _should_capture(self, route: Route | None) -> bool:
        if self.writer is None:
            return False
        if route is None:
            return True
        if not route.capture:
            return False
        return route.sample >= 1.0 or random.random() < route.sample

    def _submit(self) -> Submit:
        return self.writer.submit if self.writer is not None else _discard


class _HeadTimeout(Exception):
    def __init__(self, partial: bool) -> None:
        super().__init__("request head timeout")
        self.partial = partial


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{text} ({cause.strerror})" if text else cause.strerror
    return text or type(exc).__name__
