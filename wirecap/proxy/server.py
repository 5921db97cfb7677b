"""The reverse proxy's listener and connections: one task per client connection, one exchange at a time.

Each request head is parsed by a fresh ``h11.Connection(h11.SERVER)``, fed the bytes left over
from the previous request (pipelining); the relay writes responses as raw bytes, so that connection
parses exactly one request and its body. Whether the client connection carries another request is
decided by h11's view of the request (``their_state``), the response's framing, and shutdown.

Shutdown (hypercorn's shape): stop accepting, cancel the waits of idle connections, give exchanges
in flight ``shutdown_grace`` seconds, cancel the rest, then close the pool and the capture writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sys
import time
from typing import TYPE_CHECKING, Final, TextIO

import h11
import trio

from wirecap.capture.recorder import ExchangeRecorder
from wirecap.faults import FaultPlan
from wirecap.proxy import messages
from wirecap.proxy.console import ExchangeSummary, format_json, format_text
from wirecap.proxy.exchange import BadRequest, ClientTimeout, ExchangeState, RelayError
from wirecap.proxy.faulting import FaultingRelay
from wirecap.proxy.relay import ExchangeRelay, IncomingRequest
from wirecap.proxy.routing import Router
from wirecap.proxy.sockets import TcpStream
from wirecap.proxy.upstream import ConnectionPool, make_ssl_context

if TYPE_CHECKING:
    from wirecap.capture.writer import RecordWriter, WriterStatistics
    from wirecap.proxy.config import ProxyConfig
    from wirecap.proxy.metrics import ProxyMetrics
    from wirecap.proxy.routing import RouteMatch

logger = logging.getLogger("wirecap.proxy")

#: Bytes of a malformed or oversize head kept in its capture record (the rest is not needed to see why).
MAX_BAD_HEAD_RECORDED: Final = 64 * 1024
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
_ids = random.Random(os.urandom(16))
# A forked worker (``--workers``) draws ids of its own, not its siblings' sequence.
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))


def new_exchange_id() -> str:
    """12 hex digits: unique enough across millions of exchanges, short enough for a console line."""
    return f"{_ids.getrandbits(48):012x}"


class ClientConnection:
    """The client side of a connection: its stream, and the bytes after its last request."""

    __slots__ = ("addr", "leftover", "nursery", "read_size", "stream")

    def __init__(self, stream: TcpStream, addr: str, read_size: int, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.addr = addr
        self.read_size = read_size
        #: Where an exchange's helper tasks run (a request body still arriving, a client watcher).
        self.nursery = nursery
        self.leftover = b""

    async def receive(self) -> bytes:
        """One read; ``b""`` when the client closed or reset the connection."""
        try:
            return bytes(await self.stream.receive_some(self.read_size))
        except _BROKEN:
            return b""


@dataclasses.dataclass(slots=True)
class ProxyStatistics:
    exchanges: int = 0  # every request the proxy answered or relayed, malformed ones included
    answered_by_proxy: int = (
        0  # of those, the ones the proxy answered itself (400, 404, 408, 502...)
    )
    active: int = 0
    connections: int = 0
    errors: int = 0


class ProxyServer:
    """The recording reverse proxy.

    ``await nursery.start(server.run)`` binds the listener and returns the bound (host, port); the
    server then runs until :meth:`shutdown`, which stops accepting, gives exchanges in flight
    ``shutdown_grace`` seconds, cancels the rest, and closes the capture writer.
    """

    def __init__(
        self,
        config: ProxyConfig,
        writer: RecordWriter | None = None,
        *,
        console: TextIO | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.router = Router(config.routes)
        self.pool = ConnectionPool(
            connect_timeout=config.timeouts.connect,
            idle_timeout=config.timeouts.pool_idle,
            read_size=config.limits.upstream_read_size,
            max_head=config.limits.max_head,
            max_idle_per_origin=config.limits.pool_size,
            ssl_context=make_ssl_context(config.upstream_ca) if config.upstream_ca else None,
        )
        self.console = console if console is not None else sys.stdout
        self.stats = ProxyStatistics()
        self.metrics: ProxyMetrics | None = None  # set when the admin listener serves /metrics
        self.listen_host = config.listen_host
        self.listen_port = config.listen_port
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self._idle_waits: set[trio.CancelScope] = set()  # connections between requests
        self._listeners: list[trio.SocketListener] = []
        #: With ``--fault``, every exchange goes through the relay that injects them.
        self.faults = FaultPlan(config.faults) if config.faults else None
        self._relay: type[ExchangeRelay] = FaultingRelay if config.faults else ExchangeRelay

    # -- lifecycle ------------------------------------------------------------------------------------

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
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                await self.pool.aclose()
                if self.writer is not None:
                    await self.writer.aclose()
            self._stopped.set()

    async def bind(self) -> list[trio.SocketListener]:
        """Open the listening sockets (raises OSError when the address is taken), unless
        :meth:`adopt` gave some."""
        if not self._listeners:
            self.adopt(
                await trio.open_tcp_listeners(self.config.listen_port, host=self.config.listen_host)
            )
        return self._listeners

    def adopt(self, listeners: list[trio.SocketListener]) -> None:
        """Accept on ``listeners``, bound already (a ``--workers`` worker's inherited sockets)."""
        self._listeners = listeners
        self.listen_port = listeners[0].socket.getsockname()[1]

    def not_accepting(self) -> str | None:
        """Why the proxy takes no new connections; None while it does."""
        return "the proxy is shutting down" if self.shutting_down else None

    def capture_statistics(self) -> WriterStatistics | None:
        """The capture writer's statistics; None when capture is off."""
        return self.writer.statistics() if self.writer is not None else None

    def shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent): stop accepting, close idle connections, and let
        exchanges in flight finish within the grace period."""
        self._shutdown.set()
        for scope in list(self._idle_waits):
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
                stream = TcpStream.adopt(await listener.accept())
            except OSError as exc:
                logger.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            handlers.start_soon(self._handle_client, stream)

    # -- per connection -------------------------------------------------------------------------------

    async def _handle_client(self, stream: TcpStream) -> None:
        self.stats.connections += 1
        try:
            host, port = stream.socket.getpeername()[:2]
            addr = f"{host}:{port}"
        except OSError:
            addr = ""
        try:
            async with trio.open_nursery() as nursery:
                client = ClientConnection(stream, addr, self.config.limits.read_size, nursery)
                await self._serve(client)
        except Exception:
            self.stats.errors += 1
            logger.exception("unexpected error on a client connection")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, client: ClientConnection) -> None:
        first = True
        while not self.shutting_down or client.leftover:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.limits.max_head)
            tap = messages.RawTap(conn, client.leftover)
            client.leftover = b""
            try:
                request = await self._next_request(client, tap, first)
            except RelayError as error:
                await self._reject(client, tap, error)
                return
            if request is None:
                return  # the client closed between requests: a normal end of keep-alive
            first = False
            if not await self._exchange(client, request):
                return
            client.leftover = conn.trailing_data[0]

    async def _next_request(
        self, client: ClientConnection, tap: messages.RawTap, first: bool
    ) -> IncomingRequest | None:
        """The next request head; None when the client closes or idles out between requests.
        Raises :class:`BadRequest` (malformed or oversize) or :class:`ClientTimeout`."""
        timeouts = self.config.timeouts
        started = (time.perf_counter_ns(), time.time_ns()) if tap.unaccounted else None
        deadline = trio.current_time() + (timeouts.client_head if first else timeouts.keepalive)
        while True:
            try:
                event = tap.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequest(str(exc), status=exc.error_status_hint) from None
            if isinstance(event, h11.Request):
                assert started is not None
                size = len(tap.unaccounted) - len(tap.conn.trailing_data[0])
                if size > self.config.limits.max_head:  # h11 bounds only incomplete heads
                    limit = self.config.limits.max_head
                    raise BadRequest(f"request head larger than {limit} bytes", status=431)
                headers = list(event.headers)
                coding = messages.header_value(headers, b"transfer-encoding")
                return IncomingRequest(
                    tap=tap,
                    event=event,
                    headers=headers,
                    head=tap.take(),
                    t0_ns=started[0],
                    wall_ns=started[1],
                    chunk_guard=messages.ChunkSizeGuard() if coding is not None else None,
                )
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed before any byte of a request
            with trio.move_on_at(deadline) as wait:
                if started is None:
                    self._idle_waits.add(wait)
                try:
                    data = await client.receive()
                finally:
                    self._idle_waits.discard(wait)
            if wait.cancelled_caught:
                if started is None:
                    return None  # idle past the keep-alive timeout, or shutting down
                raise ClientTimeout(f"request head not completed within {timeouts.client_head:g}s")
            if not data and started is not None:
                raise BadRequest("the client closed the connection mid-head")
            if started is None:
                started = (time.perf_counter_ns(), time.time_ns())
                deadline = trio.current_time() + timeouts.client_head
            tap.feed(data)

    async def _exchange(self, client: ClientConnection, request: IncomingRequest) -> bool:
        """Relay one exchange; True when the client connection can carry the next request."""
        ex = ExchangeState(
            id=new_exchange_id(),
            t0_ns=request.t0_ns,
            wall_ns=request.wall_ns,
            method=request.event.method.decode("ascii"),
            target=request.event.target.decode("latin-1"),
        )
        host = messages.header_value(request.headers, b"host")
        match = self.router.match(ex.method, host.decode("latin-1") if host else None, ex.target)
        if match is not None:
            ex.route = match.route.prefix
        recorder = None
        if self.writer is not None and _should_capture(match):
            recorder = ExchangeRecorder(self.writer, ex.id, request.t0_ns)
        self.stats.exchanges += 1
        self.stats.active += 1
        try:
            return await self._relay(self, client, request, ex, match, recorder).run()
        finally:
            self.stats.active -= 1

    async def _reject(
        self, client: ClientConnection, tap: messages.RawTap, error: RelayError
    ) -> None:
        """Answer a request head that could not be parsed (400, 431, 408), record it, and close."""
        t0, wall = time.perf_counter_ns(), time.time_ns()
        self.stats.exchanges += 1
        self.stats.answered_by_proxy += 1
        ex = ExchangeState(id=new_exchange_id(), t0_ns=t0, wall_ns=wall, method="-", target="-")
        ex.failed(error)
        ex.status = error.status
        head, body = messages.error_answer(
            error.status, error.kind, str(error), close=True, exchange=ex.id
        )
        if self.writer is not None:
            rec = ExchangeRecorder(self.writer, ex.id, t0)
            rec.request(
                wall_ns=wall,
                method="-",
                target="-",
                head=tap.unaccounted[:MAX_BAD_HEAD_RECORDED],
                client=client.addr,
                proxy_url="",
                route=None,
                upstream_url=None,
            )
            rec.response_head(error.status, head, by="proxy")
            rec.body("res", body)
            rec.end(
                ex.outcome,
                status=ex.status,
                error=ex.error,
                req_bytes=0,
                res_bytes=len(body),
                ttfb_ns=0,
            )
        with contextlib.suppress(*_BROKEN), trio.move_on_after(self.config.timeouts.write):
            await client.stream.send_all(head + body)
        self.report(ex, captured=self.writer is not None)

    # -- console --------------------------------------------------------------------------------------

    def report(self, ex: ExchangeState, *, captured: bool) -> None:
        """Count a finished exchange in the metrics and print its console line."""
        duration_ns = time.perf_counter_ns() - ex.t0_ns
        if self.metrics is not None:
            self.metrics.observe(ex, duration_ns)
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
            duration_ns=duration_ns,
            ttfb_ns=ex.ttfb_ns,
            ttft_ns=ex.ttft_ns,
            req_bytes=ex.req_bytes,
            res_bytes=ex.res_bytes,
            captured=captured,
            error=ex.error,
            fault=ex.fault,
        )
        line = format_json(summary) if self.config.log_format == "json" else format_text(summary)
        with contextlib.suppress(OSError, ValueError):
            print(line, file=self.console, flush=True)


def _should_capture(match: RouteMatch | None) -> bool:
    """Whether an exchange is captured: unrouted ones are (their 404 is worth seeing), routed ones
    by their route's ``capture`` and ``sample``."""
    if match is None:
        return True
    route = match.route
    if not route.capture:
        return False
    return route.sample >= 1.0 or random.random() < route.sample
