"""Connections to upstreams, pooled per origin; the h11 client connection the replay tools use."""

from __future__ import annotations

import logging
import os
import ssl
from typing import TYPE_CHECKING

import h11
import trio

from wirecap.proxy.errors import resolver_failure
from wirecap.proxy.messages import RawTap
from wirecap.proxy.sockets import TcpStream

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.proxy.config import Upstream

logger = logging.getLogger("wirecap.proxy")

Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange."""


class UpstreamConnectError(UpstreamError):
    """Connecting (TCP or TLS) to the upstream failed."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamConnection:
    """One connection to an upstream: a trio stream and the h11 client state machine over it.

    :meth:`next_event` also returns the raw bytes behind each event, exactly as received, which h11
    does not keep (see :class:`~wirecap.proxy.messages.RawTap`).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        origin: tuple[str, str, int],
        *,
        read_size: int,
        max_head: int,
    ) -> None:
        self.stream = stream
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        self.tap = RawTap(self.h11)
        self.read_size = read_size
        self.idle_since = 0.0

    async def send(self, event: h11.Event) -> bytes:
        """Serialize ``event`` with h11 and send it; returns the bytes sent."""
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)
        return data or b""

    async def next_event(self) -> tuple[Event, bytes]:
        """The next h11 event from the upstream, with the raw bytes behind it."""
        while True:
            event, raw = self.next_event_nowait()
            if event is not h11.NEED_DATA:
                return event, raw
            await self.receive()

    def next_event_nowait(self) -> tuple[Event, bytes]:
        """Like :meth:`next_event` without I/O: ``NEED_DATA`` when h11 needs more bytes."""
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            return event, b""
        return event, self.tap.take()

    async def receive(self) -> bytes:
        """Read once from the upstream into h11 (an empty read tells h11 the connection closed)."""
        data = bytes(await self.stream.receive_some(self.read_size))
        self.tap.feed(data)
        return data

    def start_next_cycle(self) -> None:
        self.h11.start_next_cycle()

    @property
    def reusable(self) -> bool:
        """Both sides finished their messages cleanly, and nothing arrived after the response."""
        conn = self.h11
        return (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        )

    def looks_alive(self) -> bool:
        """False when the idle socket is readable: the upstream closed it (or sent junk)."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        return stream.is_idle() if isinstance(stream, TcpStream) else True

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def make_ssl_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The context for HTTPS upstreams: system trust store, plus ``ca_file`` when given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class ConnectionPool:
    """Idle upstream connections kept per origin (scheme, host, port), reused in LIFO order."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        idle_timeout: float,
        read_size: int,
        max_head: int,
        max_idle_per_origin: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.read_size = read_size
        self.max_head = max_head
        self.max_idle = max_idle_per_origin
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        self.connections_opened = 0

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context()
        return self._ssl_context

    async def acquire(
        self, upstream: Upstream, connect_timeout: float | None = None
    ) -> UpstreamConnection:
        """A live idle connection to ``upstream``, or a new one.

        Raises :class:`UpstreamConnectError` or :class:`UpstreamTimeout`.
        """
        idle = self._idle.get(upstream.origin)
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_timeout and conn.looks_alive():
                return conn
            await conn.aclose()
        return await self._connect(upstream, connect_timeout or self.connect_timeout)

    async def _connect(self, upstream: Upstream, timeout: float) -> UpstreamConnection:
        try:
            with trio.fail_after(timeout):
                stream: trio.abc.Stream = TcpStream.adopt(
                    await trio.open_tcp_stream(upstream.host, upstream.port)
                )
                if upstream.scheme == "https":
                    tls = trio.SSLStream(
                        stream,
                        self.ssl_context,
                        server_hostname=upstream.host,
                        https_compatible=True,
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise UpstreamTimeout(
                f"connecting to {upstream.host}:{upstream.port} took longer than {timeout:g}s"
            ) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            reason = (
                exc.__cause__
                if isinstance(exc, trio.BrokenResourceError) and exc.__cause__
                else exc
            )
            raise UpstreamConnectError(
                f"cannot connect to {upstream.host}:{upstream.port}: {_describe(reason)}"
            ) from exc
        self.connections_opened += 1
        return UpstreamConnection(
            stream, upstream.origin, read_size=self.read_size, max_head=self.max_head
        )

    async def release(self, conn: UpstreamConnection) -> None:
        """Return ``conn`` to the pool if its exchange finished cleanly; close it otherwise."""
        if not conn.reusable:
            await conn.aclose()
            return
        conn.start_next_cycle()
        conn.idle_since = trio.current_time()
        idle = self._idle.setdefault(conn.origin, [])
        idle.append(conn)
        if len(idle) > self.max_idle:
            await idle.pop(0).aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()


def _describe(exc: BaseException) -> str:
    """The most specific reason inside ``exc`` (trio wraps per-address errors in a group)."""
    if (resolver := resolver_failure(exc)) is not None:
        return resolver
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # trio's strerror repeats the address; the caller names it
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, BaseExceptionGroup) and inner.exceptions:
        return _describe(inner.exceptions[0])
    if isinstance(inner, BaseException):
        return _describe(inner)
    return str(exc) or type(exc).__name__
