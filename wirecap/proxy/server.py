"""The reverse proxy: a trio listener, one task per client connection, bytes relayed as they arrive.

Hot path per exchange: :mod:`wirecap.proxy.http1` finds the request head in the client's bytes; the
head is rewritten for the upstream (Host, hop-by-hop headers) and goes out in one write with whatever
body bytes already arrived; the upstream's answer goes back one write per read, its head edited line
by line and its body bytes untouched (chunked stays chunked). Each read becomes one capture record,
handed to the writer right after the write that forwards its bytes, so capture work never sits
between a read and its write. Nothing parses a body, nothing touches the disk, nothing waits for the
end of a stream before forwarding it, and sockets are driven directly
(:class:`~wirecap.proxy.transport.SocketTransport`) rather than through trio's stream layer.

Tasks: one per client connection, plus one watchdog for the proxy. An exchange adds a helper task
(in its connection's nursery) only when its request body is still arriving (the helper relays the
rest and then watches the client) or when its response takes longer than :data:`WATCH_CLIENT_AFTER`
(the watchdog starts a helper that watches the client, so that a client hanging up aborts a long
generation at once instead of at its next chunk).

Timeouts on the hot path are not cancel scopes (see :mod:`wirecap.proxy.deadlines`): an idle
keep-alive connection and an exchange waiting on its upstream store a deadline that the watchdog
checks, and when it passes the watchdog closes the socket the wait is parked on. A helper that sees
the client go away stops the relay the same way (:meth:`ProxyServer._interrupt`). Rare waits (a
head arriving in pieces, a blocked send, a streamed request body) keep trio's scopes.
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
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, TextIO

import trio

from wirecap.capture import packing
from wirecap.capture.ring import RING_SLOT_BYTES
from wirecap.proxy import headers as hdr
from wirecap.proxy import http1
from wirecap.proxy.console import ExchangeSummary, format_json, format_text
from wirecap.proxy.deadlines import Deadlines
from wirecap.proxy.routing import Router
from wirecap.proxy.transport import SocketTransport, StreamTransport, Transport, transport_for
from wirecap.proxy.upstream import (
    ConnectionPool,
    UpstreamConnectError,
    UpstreamTimeout,
    make_ssl_context,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from wirecap.capture.records import Outcome
    from wirecap.capture.writer import RecordBuffer
    from wirecap.proxy.config import ProxyConfig, Route

logger = logging.getLogger("wirecap.proxy")

#: Bytes of a malformed or oversize head kept in its capture record (the rest is not needed to see why).
MAX_BAD_HEAD_RECORDED: Final = 64 * 1024
#: After a client closes its connection mid-response, how long the relay may still finish reading the
#: upstream's end of message before the exchange counts as a client abort.
CLIENT_CLOSE_GRACE: Final = 1.0
#: How long the relay waits on the upstream before it starts a task to watch the client for an abort
#: (quick answers never need one; an LLM thinking for seconds does).
WATCH_CLIENT_AFTER: Final = 0.05
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


_ids = random.Random(os.urandom(16))


def new_exchange_id() -> str:
    """12 hex digits: unique enough across millions of exchanges, short enough for a console line.
    (Seeded once from the OS; a system call per exchange bought nothing.)"""
    return f"{_ids.getrandbits(48):012x}"


class ClientGone(Exception):
    """The client closed its connection or stopped reading."""


class _Client:
    """The client side of a connection: its transport and the bytes received but not yet relayed."""

    __slots__ = (
        "addr",
        "buf",
        "eof",
        "head_started_ns",
        "head_wall_ns",
        "nursery",
        "read_size",
        "timed_out",
        "transport",
    )

    def __init__(
        self, transport: Transport, addr: str, read_size: int, nursery: trio.Nursery
    ) -> None:
        self.transport = transport
        #: Where an exchange's helper tasks run (a request body still arriving, a client watcher).
        self.nursery = nursery
        self.addr = addr
        self.read_size = read_size
        self.buf = bytearray()
        self.eof = False
        # When the first byte of the current head arrived: an exchange's clocks start there, not
        # while the connection sat idle between keep-alive requests.
        self.head_started_ns = 0
        self.head_wall_ns = 0
        self.timed_out = False  # its keep-alive wait expired (see Deadlines)

    def expire(self) -> None:
        self.timed_out = True
        self.transport.close()

    def mark_head_start(self) -> None:
        self.head_started_ns = time.perf_counter_ns()
        self.head_wall_ns = time.time_ns()

    async def read(self, *, later: bool = False) -> bool:
        """Read once into the buffer; False at end of stream. ``later``: the client cannot have
        sent anything yet (it is reading a response just sent), so wait before reading."""
        transport = self.transport
        data = await (transport.receive_later if later else transport.receive)(self.read_size)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def take(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data


class _Upstream:
    """A pooled connection to an upstream, as the relay uses it: a transport, no HTTP state between
    exchanges (each response is framed from its own head)."""

    __slots__ = ("idle_since", "origin", "reusable", "transport")

    def __init__(self, stream: trio.abc.Stream, origin: tuple[str, str, int]) -> None:
        self.transport: Transport = transport_for(stream)
        self.origin = origin
        self.idle_since = 0.0
        self.reusable = False

    def start_next_cycle(self) -> None:
        self.reusable = False

    def looks_alive(self) -> bool:
        """False when the idle socket is readable: the upstream closed it (or sent junk)."""
        return not self.transport.readable_now()

    async def aclose(self) -> None:
        transport = self.transport
        if isinstance(transport, StreamTransport):
            await trio.aclose_forcefully(transport.stream)
        else:
            transport.close()


@dataclasses.dataclass(slots=True, eq=False)
class _Exchange:
    """Mutable state of one exchange, shared by its relay tasks."""

    id: str
    t0: int  # perf_counter_ns at the start
    wall_ns: int
    method: str
    target: str
    writer: RecordBuffer | None  # None: this exchange is not captured
    head: http1.RequestHead | None = None
    upstream_url: str | None = None
    status: int | None = None
    ttfb_ns: int | None = None
    ttft_ns: int | None = None
    req_bytes: int = 0
    res_bytes: int = 0
    request_done: bool = False
    response_started: bool = False  # a final head went (or is going) to the client
    response_complete: bool = False  # ...and all of its body
    close_client: bool = False  # the response's framing ends with the connection
    upstream_send_failed: bool = False
    client_eof: bool = False
    response_done: trio.Event = dataclasses.field(default_factory=trio.Event)
    upstream: _Upstream | None = None  # while the exchange holds one
    reading: bool = False  # the relay is waiting on the upstream (else writing to the client)
    timed_out: bool = False  # the upstream sent nothing for the read timeout (see expire)
    interrupted: bool = False  # a helper stopped the relay (see ProxyServer._interrupt)
    relay_started: float = 0.0
    helper: trio.CancelScope | None = None  # the helper task's scope, while one runs
    helper_done: trio.Event | None = None
    #: Records of bytes not yet forwarded: handed to the writer right after the forwarding write.
    deferred: list[packing.PackedRecord] = dataclasses.field(default_factory=list)
    outcome: Outcome = "ok"
    error: str | None = None
    failure_status: int = 502
    failure_kind: str = "upstream_error"

    def now(self) -> int:
        return time.perf_counter_ns() - self.t0

    def expire(self) -> None:
        """The read deadline passed: if the relay still waits on the upstream, close that
        connection (the relay wakes and reports the timeout). A relay that is writing to its client
        instead is bounded by the write timeout."""
        if self.reading and self.upstream is not None:
            self.timed_out = True
            self.upstream.transport.close()

    def defer(self, record: packing.PackedRecord) -> None:
        """Keep ``record`` until the bytes it describes have been forwarded: capture work happens
        after each forwarding write, never between a read and the write that relays it."""
        if self.writer is not None:
            self.deferred.append(record)

    def flush_nowait(self) -> bool:
        """Offer the deferred records to the writer; False when its buffer is full (or it closed)
        and some are left for :meth:`flush`."""
        deferred = self.deferred
        if not deferred:
            return True
        assert self.writer is not None  # only captured exchanges defer records
        taken = self.writer.offer_all(deferred)
        if taken == len(deferred):
            deferred.clear()
            return True
        del deferred[:taken]
        return False

    async def flush(self) -> None:
        """Hand the deferred records to the writer, waiting for room if its buffer is full, and
        let the writer run when it has a batch ready (a relay whose reads and writes never wait
        would otherwise keep it from running until the buffer is full)."""
        if not self.deferred:
            return
        writer = self.writer
        assert writer is not None  # only captured exchanges defer records
        if not self.flush_nowait():
            deferred, self.deferred = self.deferred, []
            for record in deferred:
                await writer.submit(record)
        elif writer.due:
            await trio.lowlevel.checkpoint()

    def request_data(self, data: bytes) -> None:
        """Count request body bytes on their way upstream, and defer their record."""
        self.req_bytes += len(data)
        self.defer(packing.packed_body(x=self.id, dir="req", ns=self.now(), data=data))

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
        writer: RecordBuffer | None = None,
        *,
        console: TextIO | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.router = Router(config.routes)
        self.pool: ConnectionPool[_Upstream] = ConnectionPool(
            connect_timeout=config.timeouts.connect,
            idle_timeout=config.timeouts.pool_idle,
            read_size=config.limits.read_size,
            max_head=config.limits.max_head,
            max_idle_per_origin=config.limits.pool_size,
            ssl_context=make_ssl_context(config.upstream_ca) if config.upstream_ca else None,
            factory=_Upstream,
        )
        self.console = console if console is not None else sys.stdout
        self.stats = ProxyStatistics()
        self.listen_host = config.listen_host
        self.listen_port = config.listen_port
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        #: Connections waiting for their next request: shutdown() closes them.
        self._idle_clients: set[_Client] = set()
        #: Keep-alive and upstream-read deadlines, enforced by the watchdog.
        self._deadlines = Deadlines()
        #: Exchanges whose response is being relayed, for the watchdog (insertion order = age).
        self._relaying: dict[_Exchange, _Client] = {}
        self._wake_watchdog = trio.Event()  # set when there is something new to watch
        self._listeners: list[trio.SocketListener] = []
        self._read_size = config.limits.read_size
        self._max_head = config.limits.max_head

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = self._listeners or await self.bind()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._watchdog)
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
                outer.cancel_scope.cancel()
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
        for client in list(self._idle_clients):
            client.transport.close()  # its _receive_head returns None

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

    async def _watchdog(self) -> None:
        """One task for the whole proxy instead of a timer per exchange: it enforces the
        :class:`Deadlines`, and starts a client watcher for every exchange whose response has taken
        longer than :data:`WATCH_CLIENT_AFTER` (a long generation or stream)."""
        deadlines = self._deadlines
        while True:
            now = trio.current_time()
            deadlines.expire(now)
            wake_at = deadlines.next_due
            if self._relaying:
                due = now - WATCH_CLIENT_AFTER
                for ex, client in list(self._relaying.items()):
                    if ex.relay_started > due:
                        break  # the rest started later
                    del self._relaying[ex]
                    if ex.helper is None and not ex.response_done.is_set():
                        self._start_helper(client, ex, self._watch_client, client, ex)
                if self._relaying:
                    wake_at = min(wake_at, now + WATCH_CLIENT_AFTER / 2)
            self._wake_watchdog = trio.Event()
            with trio.move_on_at(wake_at):  # an idle proxy without deadlines does not tick
                await self._wake_watchdog.wait()

    def _set_deadline(self, item: _Client | _Exchange, deadline: float) -> None:
        if self._deadlines.set(item, deadline):
            self._wake_watchdog.set()  # earlier than the watchdog planned to look

    def _interrupt(self, ex: _Exchange, client: _Client | None = None) -> None:
        """Stop the relay of ``ex`` from a helper task (which has recorded why): close its upstream
        connection, and the client's when the client is gone. The relay, parked on either socket,
        wakes with ClosedResourceError; the upstream connection is not reused."""
        ex.interrupted = True
        if ex.upstream is not None:
            ex.upstream.transport.close()
        if client is not None:
            client.transport.close()

    def _start_helper(
        self,
        client: _Client,
        ex: _Exchange,
        fn: Callable[..., Awaitable[None]],
        *args: object,
    ) -> None:
        """Run ``fn(*args)`` beside the exchange, in the connection's nursery; the exchange cancels
        it and waits for it before it ends (see :meth:`_stop_helper`)."""
        scope = trio.CancelScope()
        done = trio.Event()
        ex.helper, ex.helper_done = scope, done

        async def helper() -> None:
            try:
                with scope:
                    await fn(*args)
            except Exception:
                self.stats.errors += 1
                logger.exception("unexpected error beside an exchange")
            finally:
                done.set()

        client.nursery.start_soon(helper)

    async def _stop_helper(self, ex: _Exchange) -> None:
        self._relaying.pop(ex, None)
        if ex.helper is not None and ex.helper_done is not None:
            ex.helper.cancel()
            with trio.CancelScope(shield=True):
                await ex.helper_done.wait()
            ex.helper = ex.helper_done = None

    async def _handle_client(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        try:
            peer = stream.socket.getpeername()
            client_addr = f"{peer[0]}:{peer[1]}"
        except OSError:
            client_addr = ""
        transport = transport_for(stream)
        try:
            async with trio.open_nursery() as nursery:
                client = _Client(transport, client_addr, self._read_size, nursery)
                try:
                    await self._serve_client(client)
                except (*_BROKEN, ClientGone):
                    pass
                except Exception:
                    self.stats.errors += 1
                    logger.exception("unexpected error on a client connection")
        finally:
            transport.close()

    # -- per connection -----------------------------------------------------------------------------

    async def _serve_client(self, client: _Client) -> None:
        first = True
        while True:
            try:
                head = await self._receive_head(client, first)
            except _HeadTimeout:
                await self._reject(
                    client,
                    408,
                    f"request head not completed within {self.config.timeouts.client_head:g}s",
                    outcome="timeout",
                )
                return
            except http1.ProtocolError as exc:
                await self._reject(client, exc.status, str(exc))
                return
            if head is None:
                return  # the client closed between requests: a normal end of keep-alive
            first = False
            if not await self._exchange(client, head) or self.shutting_down:
                return

    def _head_clock(self, client: _Client) -> tuple[int, int]:
        """(perf_counter_ns, wall ns) of the current head's first byte, or now if none arrived."""
        if client.buf and client.head_started_ns:
            return client.head_started_ns, client.head_wall_ns
        return time.perf_counter_ns(), time.time_ns()

    async def _receive_head(self, client: _Client, first: bool) -> http1.RequestHead | None:
        """The next request head; None when the client closed the connection cleanly between
        requests. Raises :class:`_HeadTimeout` or :class:`http1.ProtocolError`."""
        timeouts = self.config.timeouts
        client.head_started_ns = 0
        if client.buf:
            client.mark_head_start()  # pipelined: it is already here
        head_deadline = math.inf
        idle_deadline = trio.current_time() + (
            timeouts.client_head if first else timeouts.keepalive
        )
        while True:
            if client.buf:
                http1.skip_empty_lines(client.buf)
                head = http1.parse_request_head(client.buf, self._max_head)
                if head is not None:
                    del client.buf[: len(head.raw)]
                    return head
                if head_deadline == math.inf:
                    head_deadline = trio.current_time() + timeouts.client_head
            if client.eof:
                if client.buf:
                    raise http1.ProtocolError("the client closed the connection mid-head")
                return None
            if client.buf:  # part of a head: rare enough for a cancel scope
                with trio.CancelScope(deadline=head_deadline) as scope:
                    await client.read()
                if scope.cancelled_caught:
                    raise _HeadTimeout
                continue
            if self.shutting_down:
                return None
            # Idle between requests: the deadline is the watchdog's, which closes the connection.
            self._set_deadline(client, idle_deadline)
            self._idle_clients.add(client)
            try:
                await client.read(later=not first)
            except _BROKEN:
                if client.timed_out or self.shutting_down:
                    return None
                raise
            finally:
                self._deadlines.clear(client)
                self._idle_clients.discard(client)
            if client.buf:
                client.mark_head_start()

    async def _reject(
        self, client: _Client, status: int, reason: str, outcome: Outcome = "protocol_error"
    ) -> None:
        """Answer a request we cannot parse (400, 431, 408...), record it, and close."""
        t0, started_ns = self._head_clock(client)
        ex = _Exchange(
            id=new_exchange_id(),
            t0=t0,
            wall_ns=started_ns,
            method="-",
            target="-",
            writer=self.writer,
        )
        raw = bytes(client.buf[:MAX_BAD_HEAD_RECORDED])
        ex.defer(
            packing.packed_request(
                x=ex.id,
                wall_ns=started_ns,
                method="-",
                target="-",
                head=raw,
                client=client.addr,
                proxy_url="",
                route=None,
                upstream_url=None,
            )
        )
        kinds = {408: "request_timeout", 431: "request_header_fields_too_large"}
        ex.fail(outcome, reason)
        await self._respond_error(client, ex, status, kinds.get(status, "bad_request"), reason)
        await self._finish(ex)

    # -- per exchange ---------------------------------------------------------------------------------

    async def _exchange(self, client: _Client, head: http1.RequestHead) -> bool:
        """Relay one exchange; True when the client connection can carry the next request."""
        t0, started_ns = self._head_clock(client)
        method = head.method.decode("ascii")
        target = head.target.decode("latin-1")
        host_header = head.host
        match = self.router.match(
            method, host_header.decode("latin-1") if host_header else None, target
        )
        route = match.route if match else None
        ex = _Exchange(
            id=new_exchange_id(),
            t0=t0,
            wall_ns=started_ns,
            method=method,
            target=target,
            writer=self.writer if self._should_capture(route) else None,
            head=head,
            upstream_url=match.upstream_url if match else None,
        )
        self.stats.exchanges += 1
        self.stats.active += 1
        try:
            proxy_url = hdr.proxy_url(self.listen_host, self.listen_port, host_header, target)
            ex.defer(
                packing.packed_request(
                    x=ex.id,
                    wall_ns=started_ns,
                    method=method,
                    target=target,
                    head=head.raw,
                    client=client.addr,
                    proxy_url=proxy_url,
                    route=route.prefix if route else None,
                    upstream_url=ex.upstream_url,
                )
            )
            if head.framing_problem is not None:
                ex.fail("protocol_error", head.framing_problem)
                await self._respond_error(client, ex, 400, "bad_request", head.framing_problem)
                return False
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
            else:
                await self._forward(client, ex, route, match.upstream_target, proxy_url)
        finally:
            self.stats.active -= 1
            await self._finish(ex)
        return (
            ex.request_done
            and ex.response_complete
            and head.keep_alive
            and not ex.close_client
            and not client.eof
        )

    async def _read_request_body(
        self, client: _Client, ex: _Exchange, *, wait: bool = True
    ) -> None:
        """Read (and record) a small request body the proxy answers itself, so the connection can be
        reused; give up quietly on a large, slow or 100-continue body (the connection then closes).
        With ``wait=False`` only the bytes already received are used."""
        head = ex.head
        assert head is not None
        body = head.body()
        if body.done:
            ex.request_done = True
            return
        if head.expect_continue and not client.buf:
            return
        budget = self._max_head
        with trio.move_on_after(self.config.timeouts.client_head):
            try:
                while budget > 0:
                    if client.buf:
                        budget -= len(_take_request_body(client, ex, body))
                        if body.done:
                            ex.request_done = True
                            return
                    if not wait or not await client.read():
                        return
            except (http1.ProtocolError, *_BROKEN):
                return

    async def _forward(
        self,
        client: _Client,
        ex: _Exchange,
        route: Route,
        upstream_target: str,
        proxy_url: str,
    ) -> None:
        head = ex.head
        assert head is not None
        timeouts = self.config.timeouts
        try:
            upstream = await self.pool.acquire(route.upstream, route.connect_timeout)
        except UpstreamTimeout as exc:
            ex.fail("timeout", str(exc), 504, "upstream_timeout")
            await self._read_request_body(client, ex, wait=False)
            await self._respond_error(
                client, ex, 504, "upstream_timeout", str(exc), upstream=ex.upstream_url
            )
            return
        except UpstreamConnectError as exc:
            ex.fail("upstream_error", str(exc), 502, "upstream_unreachable")
            await self._read_request_body(client, ex, wait=False)
            await self._respond_error(
                client, ex, 502, "upstream_unreachable", str(exc), upstream=ex.upstream_url
            )
            return
        ex.upstream = upstream
        proxy_url_bytes = proxy_url.encode("latin-1", "replace")
        up_head = head.upstream_head(
            upstream_target.encode("latin-1"),
            route.upstream.host_header_bytes,
            proxy_url_bytes if route.forward_proxy_path else None,
        )
        body = head.body()
        reusable = False
        try:
            try:
                await self._send_request(
                    client, upstream, ex, body, up_head, route, proxy_url_bytes
                )
            except (*_BROKEN, trio.TooSlowError) as exc:
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
            except http1.ProtocolError as exc:
                ex.fail("protocol_error", f"bad request body: {exc}", 400, "bad_request")
                await self._respond_error(client, ex, 400, "bad_request", ex.error or "")
                return
            read_timeout = route.read_timeout or timeouts.read
            if not body.done:
                self._start_helper(client, ex, self._relay_request_body, client, upstream, ex, body)
            try:
                reusable = await self._relay_response(client, upstream, ex, read_timeout)
            finally:
                self._deadlines.clear(ex)
            await self._stop_helper(ex)
            if ex.outcome != "ok" and not ex.response_started:
                await self._respond_error(
                    client,
                    ex,
                    ex.failure_status,
                    ex.failure_kind,
                    ex.error or "",
                    upstream=ex.upstream_url,
                )
        finally:
            await self._stop_helper(ex)
            ex.upstream = None
            if (
                reusable
                and ex.outcome == "ok"
                and ex.request_done
                and not ex.upstream_send_failed
                and not ex.interrupted
            ):
                upstream.reusable = True
                await self.pool.release(upstream)
            else:
                await upstream.aclose()

    async def _send_request(
        self,
        client: _Client,
        upstream: _Upstream,
        ex: _Exchange,
        body: http1.LengthBody | http1.ChunkedBody,
        up_head: bytes,
        route: Route,
        proxy_url_bytes: bytes,
    ) -> None:
        """Send the head and whatever body bytes already arrived, in one write (for LLM calls the
        whole body usually arrives with the head)."""
        ex.defer(
            packing.packed_upstream(
                x=ex.id,
                ns=ex.now(),
                head=up_head
                if route.forward_proxy_path
                else hdr.add_proxy_path_line(up_head, proxy_url_bytes),
                proxy_path="forwarded" if route.forward_proxy_path else "added",
            )
        )
        out = up_head
        if client.buf and not body.done:
            out += _take_request_body(client, ex, body)
        if body.done:
            ex.request_done = True
        await _send(upstream.transport, out, self.config.timeouts.write)
        await ex.flush()

    async def _relay_request_body(
        self,
        client: _Client,
        upstream: _Upstream,
        ex: _Exchange,
        body: http1.LengthBody | http1.ChunkedBody,
    ) -> None:
        """Client -> upstream: the rest of the body as it arrives; then watch the client."""
        timeouts = self.config.timeouts
        try:
            while not body.done:
                with trio.fail_after(timeouts.read):
                    if not await client.read():
                        raise ClientGone(
                            "client closed the connection while sending the request body"
                        )
                data = _take_request_body(client, ex, body)
                if not ex.upstream_send_failed:
                    try:
                        await _send(upstream.transport, data, timeouts.write)
                    except (*_BROKEN, trio.TooSlowError):
                        # The upstream stopped reading (it may already be answering, e.g. 413):
                        # keep reading its response; the connection will not be reused.
                        ex.upstream_send_failed = True
                await ex.flush()
            ex.request_done = True
        except (ClientGone, *_BROKEN) as exc:
            ex.fail("client_abort", str(exc) or "client connection lost")
            self._interrupt(ex, client)
            return
        except trio.TooSlowError:
            ex.fail(
                "timeout",
                f"client sent no request body bytes for {timeouts.read:g}s",
                408,
                "request_timeout",
            )
            self._interrupt(ex)  # the client gets the 408
            return
        except http1.ProtocolError as exc:
            ex.fail("protocol_error", f"bad request body: {exc}", 400, "bad_request")
            self._interrupt(ex)  # the client gets the 400
            return
        await self._watch_client(client, ex)

    async def _watch_client(self, client: _Client, ex: _Exchange) -> None:
        """While the response is on its way: a read returns only when the client sends more
        (pipelining, kept in the buffer) or goes away, which aborts the exchange at once instead of
        at the next chunk of a long stream."""
        max_pipelined = self._max_head
        try:
            while True:
                if len(client.buf) > max_pipelined:
                    await trio.sleep_forever()  # enough buffered for the next request; stop reading
                if not await client.read():
                    # Clients often hang up the moment they have what they need (an SDK stops at
                    # "data: [DONE]" before the chunked terminator): give the relay a moment to see
                    # the upstream end; it reports an abort if any body byte was still to come.
                    ex.client_eof = True
                    with trio.move_on_after(CLIENT_CLOSE_GRACE):
                        await ex.response_done.wait()
                    if not ex.response_done.is_set():
                        raise ClientGone("client closed the connection before the response ended")
                    return
        except (ClientGone, *_BROKEN) as exc:
            ex.fail("client_abort", str(exc) or "client connection lost")
            self._interrupt(ex, client)

    async def _relay_response(
        self, client: _Client, upstream: _Upstream, ex: _Exchange, read_timeout: float
    ) -> bool:
        """Upstream -> client: heads and body bytes forwarded as soon as they arrive.

        Everything one upstream read produced goes to the client in one write, so nothing is held
        back and small answers cost one send. Each upstream read has the read timeout (a deadline
        the watchdog enforces, see :meth:`_Exchange.expire`), each blocked send the write timeout.
        Returns True when the upstream connection can be reused (its response ended by its
        framing, with nothing after it).
        """
        head = ex.head
        assert head is not None
        write_timeout = self.config.timeouts.write
        receive = upstream.transport.receive_later  # the request has just gone out
        read_size = self._read_size
        http10_client = head.version == b"1.0"
        buf = bytearray()  # upstream bytes before the final head is complete
        body: http1.LengthBody | http1.ChunkedBody | http1.UntilClose | None = None
        response: http1.ResponseHead | None = None
        trailing_junk = False  # the upstream sent more than its response: not reusable
        dechunk = False
        # A captured body whose bytes are all payload is received straight into the capture
        # writer's shared ring when it has one (see _receive_into_ring): from a plain socket.
        writer = ex.writer
        into_ring = upstream.transport if isinstance(upstream.transport, SocketTransport) else None
        if ex.helper is None:
            ex.relay_started = trio.current_time()
            if not self._relaying:
                self._wake_watchdog.set()
            self._relaying[ex] = client  # the watchdog adds a client watcher if this takes long
        try:
            while True:
                ex.reading = True
                self._set_deadline(ex, trio.current_time() + read_timeout)
                in_ring = None
                if (
                    writer is not None
                    and into_ring is not None
                    and body is not None
                    and (size := _ring_size(body))
                ):
                    in_ring = await _receive_into_ring(into_ring, writer, size)
                data: bytes | memoryview
                data = in_ring[0] if in_ring is not None else await receive(read_size)
                receive = upstream.transport.receive
                ex.reading = False
                now = ex.now()
                out: list[bytes | memoryview] = []
                if not data:
                    problem = body.eof() if body is not None else "the connection closed"
                    if problem is not None:
                        where = "mid-response" if ex.response_started else "before responding"
                        ex.fail("upstream_error", f"upstream failed {where}: {problem}")
                        return False
                elif body is None:
                    buf += data
                    while body is None:
                        response = http1.parse_response_head(buf, head.method, self._max_head)
                        if response is None:
                            break
                        del buf[: len(response.raw)]
                        if ex.ttfb_ns is None:
                            ex.ttfb_ns = now
                        ex.defer(
                            packing.packed_response(
                                x=ex.id,
                                ns=now,
                                status=response.status,
                                head=response.raw,
                                by="upstream",
                            )
                        )
                        if response.informational:
                            if response.status == 101:
                                raise http1.ProtocolError("upstream switched protocols")
                            if not http10_client and not ex.response_started:
                                out.append(response.client_head(close=False))
                            continue
                        ex.status = response.status
                        ex.response_started = True
                        dechunk = response.chunked and http10_client
                        ex.close_client = (
                            not head.keep_alive
                            or (response.length is None and not response.chunked)
                        ) or dechunk
                        out.append(
                            response.client_head(
                                close=ex.close_client or self.shutting_down, dechunk=dechunk
                            )
                        )
                        body = response.body()
                    data = bytes(buf) if body is not None else b""
                    buf.clear()
                if data and body is not None:
                    payload: bytes | memoryview
                    recorded: bytes | tuple[int, int]
                    if isinstance(data, memoryview):  # in the ring, all of it payload (_ring_size)
                        assert in_ring is not None
                        assert not isinstance(body, http1.ChunkedBody)
                        used, payload = body.feed(data)
                        recorded = in_ring[1]
                    else:
                        used, payload = body.feed(data)
                        recorded = payload
                    if payload:
                        if ex.ttft_ns is None:
                            ex.ttft_ns = now
                        ex.res_bytes += len(payload)
                        ex.defer(packing.packed_body(x=ex.id, dir="res", ns=now, data=recorded))
                        if ex.client_eof:
                            ex.fail(
                                "client_abort",
                                "client closed the connection before the response ended",
                            )
                            return False
                    if dechunk:
                        out.append(payload)
                    else:
                        out.append(data if used == len(data) else data[:used])
                    if isinstance(body, http1.ChunkedBody) and body.error is not None:
                        # Malformed framing after good bytes: the good ones go, then the relay fails.
                        await _send(client.transport, _joined(out), write_timeout)
                        raise body.error
                    if used < len(data):
                        trailing_junk = True  # bytes after the end of the response
                finished = body is not None and body.done
                if finished:
                    ex.response_done.set()
                    if ex.client_eof:
                        return False  # every body byte reached the client; only framing is left
                if out:
                    await _send(client.transport, _joined(out), write_timeout)
                if finished:  # its records go with the exchange's end, in one offer (_finish)
                    ex.response_complete = True
                    return response is not None and response.keep_alive and not trailing_junk
                await ex.flush()
        except (*_BROKEN, http1.ProtocolError) as exc:
            where = "mid-response" if ex.response_started else "before responding"
            if ex.timed_out:
                ex.fail(
                    "timeout",
                    f"upstream sent nothing for {read_timeout:g}s {where}",
                    504,
                    "upstream_timeout",
                )
            elif ex.reading or isinstance(exc, http1.ProtocolError):
                ex.fail("upstream_error", f"upstream failed {where}: {_describe(exc)}")
            else:
                ex.fail("client_abort", "client connection lost while receiving the response")
            return False
        except trio.TooSlowError:
            ex.fail("client_abort", f"client stopped reading for {write_timeout:g}s")
            return False

    async def _respond_error(
        self,
        client: _Client,
        ex: _Exchange,
        status: int,
        kind: str,
        message: str,
        **extra: object,
    ) -> None:
        """Send a JSON error the proxy made itself, and record it as the exchange's response."""
        if ex.response_started:
            return
        headers, body = hdr.error_body(status, kind, message, exchange=ex.id, **extra)
        keep = ex.request_done and status not in (400, 408, 431) and not self.shutting_down
        if ex.head is None or not ex.head.keep_alive or not keep:
            headers.append((b"Connection", b"close"))
            ex.close_client = True
        head = http1.serialize_head(
            b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode()), headers
        )
        ex.status = status
        ex.response_started = True
        now = ex.now()
        if ex.ttfb_ns is None:
            ex.ttfb_ns = now
        ex.defer(packing.packed_response(x=ex.id, ns=now, status=status, head=head, by="proxy"))
        ex.res_bytes += len(body)
        ex.defer(packing.packed_body(x=ex.id, dir="res", ns=now, data=body))
        with contextlib.suppress(*_BROKEN, trio.TooSlowError):
            await _send(client.transport, head + body, self.config.timeouts.write)
            ex.response_complete = True
        await ex.flush()

    async def _finish(self, ex: _Exchange) -> None:
        """Record the end of the exchange (even while the connection is being cancelled) and print
        its console line."""
        duration = ex.now()
        end = packing.packed_end(
            x=ex.id,
            ns=duration,
            outcome=ex.outcome,
            status=ex.status,
            error=ex.error,
            req_bytes=ex.req_bytes,
            res_bytes=ex.res_bytes,
            ttfb_ns=ex.ttfb_ns,
        )
        ex.defer(end)
        if not ex.flush_nowait():
            with trio.CancelScope(shield=True):
                await ex.flush()
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
            captured=ex.writer is not None,
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


def _take_request_body(
    client: _Client, ex: _Exchange, body: http1.LengthBody | http1.ChunkedBody
) -> bytes:
    """Feed the client's buffered bytes to the request body's framing and return the ones that
    belong to it (raw, as they go upstream); bytes after its end stay buffered (a pipelined
    request), and its payload is counted and recorded. Raises the framing's ProtocolError."""
    data = client.take()
    used, payload = body.feed(data)
    if isinstance(body, http1.ChunkedBody) and body.error is not None:
        raise body.error
    if used < len(data):
        client.buf += data[used:]
        data = data[:used]
    if payload:
        ex.request_data(payload)
    return data


class _HeadTimeout(Exception):
    """Part of a request head arrived, and not the rest within the client-head timeout (an idle
    connection that times out just closes)."""


def _ring_size(body: http1.LengthBody | http1.ChunkedBody | http1.UntilClose) -> int:
    """How much of ``body`` to receive into the capture ring next, or 0: only bodies whose every
    byte is payload qualify (a chunked body's record holds the bytes without their framing), and
    only big ones (small answers take the usual, cheaper way)."""
    if type(body) is http1.LengthBody:
        remaining = body.remaining
        return min(RING_SLOT_BYTES, remaining) if remaining >= packing.BIG_BODY_BYTES else 0
    return RING_SLOT_BYTES if type(body) is http1.UntilClose else 0


async def _receive_into_ring(
    transport: SocketTransport, writer: RecordBuffer, size: int
) -> tuple[memoryview, tuple[int, int]] | None:
    """Receive up to ``size`` bytes into a slot of ``writer``'s shared ring: the bytes (a view of
    the slot, valid until the chunk's record has gone to the writer) and where they lie, for the
    record. When the ring is full the relay waits for the writer process to free some, as it
    would wait for a full capture buffer (``block``); None when there is no ring to wait for
    (the caller receives the usual way).

    A slot is filled, or given back when no bytes are ready, before any other task runs, so slots
    are filled in the order they were claimed and none is left half-used. The proxy never copies
    these bytes: the kernel puts them in the ring, and the client is sent them from there.
    """
    while True:
        slot = writer.ring_slot(size)
        if slot is None:
            if await writer.wait_for_ring():
                continue
            return None
        start, view = slot  # the view may be smaller than asked (a small ring)
        try:
            got = transport.receive_into_nowait(view)
        except BaseException:
            writer.ring_filled(start, len(view), 0)
            raise
        writer.ring_filled(start, len(view), got or 0)
        if got is not None:
            return view[:got], (start, got)
        await transport.wait_readable()


def _joined(parts: list[bytes | memoryview]) -> bytes | memoryview:
    """``parts`` as one buffer, copied only when there are several."""
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _send(transport: Transport, data: bytes | memoryview, timeout: float) -> None:
    """Send ``data``; only when the kernel cannot take it all at once does a timeout scope start."""
    sent = transport.send_nowait(data)
    if sent < len(data):
        with trio.fail_after(timeout):
            await transport.send_all(memoryview(data)[sent:])


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{text} ({cause.strerror})" if text else cause.strerror
    return text or type(exc).__name__
