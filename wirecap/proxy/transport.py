"""Byte transports for the relay: a raw non-blocking socket driven by trio's low-level waits, or any
trio stream (TLS).

:class:`SocketTransport` is the hot path. trio's ``SocketStream`` checkpoints twice per call (a
scheduler round trip even when the kernel has the bytes ready) and wraps each call in a context
manager; here a ``recv`` or ``send`` is tried first and the task parks in ``wait_readable`` /
``wait_writable`` only when the kernel says it would block (or, with :meth:`receive_later`, when
the peer cannot have answered yet: parking at once saves a failing ``recv``). A transport that
keeps succeeding without waiting yields to the scheduler every :data:`YIELD_EVERY` calls, so that a
fast stream cannot starve the other connections (or the capture writer) and cancellation still
gets through.
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Final, Protocol

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable, wait_writable

#: Calls served without waiting before the transport yields to the scheduler anyway.
YIELD_EVERY: Final = 16


class Transport(Protocol):
    """What the relay needs from a connection. Errors are trio's: ``BrokenResourceError`` when the
    peer is gone, ``ClosedResourceError`` after :meth:`close`."""

    async def receive(self, max_bytes: int) -> bytes:
        """Bytes from the peer; ``b""`` at end of stream."""
        ...

    async def receive_later(self, max_bytes: int) -> bytes:
        """:meth:`receive` when the peer cannot have answered yet (a request just went out, a
        response was just sent): wait first, instead of a read that would fail."""
        ...

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Send what the kernel takes at once without waiting; returns how many bytes went."""
        ...

    async def send_all(self, data: bytes | memoryview) -> None: ...

    def readable_now(self) -> bool:
        """True when a read would not block (data, end of stream, or an error is pending)."""
        ...

    def close(self) -> None: ...


def _trio_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """trio's error for a failed socket call: closed by us, or a dead connection (raise it ``from``
    the OSError, which says why)."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the connection was closed")
    return trio.BrokenResourceError("socket connection broken")


def socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under ``stream`` (through any TLS layers), or None for other streams."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def readable_now(sock: socket.socket | trio.socket.SocketType) -> bool:
    """True when a read would not block (data, end of stream, or an error is pending)."""
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class SocketTransport:
    """A connected non-blocking socket, owned by this object."""

    __slots__ = ("_unyielded", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._unyielded = 0

    @classmethod
    def from_trio(cls, trio_socket: trio.socket.SocketType) -> SocketTransport:
        """Take over the descriptor of a trio socket (which becomes unusable)."""
        family, kind, proto = trio_socket.family, trio_socket.type, trio_socket.proto
        fd = trio_socket.detach()
        return cls(socket.socket(family, kind, proto, fileno=fd))

    async def _pace(self) -> None:
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await checkpoint()

    async def receive(self, max_bytes: int) -> bytes:
        sock = self.sock
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                self._unyielded = 0
                await wait_readable(sock)
                continue
            except OSError as exc:
                raise _trio_error(exc) from exc
            await self._pace()
            return data

    async def receive_later(self, max_bytes: int) -> bytes:
        # Skips a recv that fails with EAGAIN and the exception it raises: two per exchange in a
        # keep-alive request/response loop, ~2-3% of the proxy's CPU there.
        if self.sock.fileno() >= 0:  # closed: receive() raises the right error
            await self.wait_readable()
        return await self.receive(max_bytes)

    def receive_into_nowait(self, buffer: memoryview) -> int | None:
        """Receive into ``buffer`` without waiting (a capture ring's slot: the bytes are copied by
        no one): how many bytes came, 0 at end of stream, None when none are ready (then
        :meth:`wait_readable`)."""
        try:
            return self.sock.recv_into(buffer)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _trio_error(exc) from exc

    async def wait_readable(self) -> None:
        """Wait until a read would not block."""
        self._unyielded = 0
        await wait_readable(self.sock)

    def send_nowait(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _trio_error(exc) from exc

    async def send_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                self._unyielded = 0
                await wait_writable(sock)
                continue
            except OSError as exc:
                raise _trio_error(exc) from exc
            view = view[sent:]
        await self._pace()

    def readable_now(self) -> bool:
        return readable_now(self.sock)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            notify_closing(self.sock)  # wakes any task parked on this socket
            self.sock.close()


class StreamTransport:
    """Any trio stream (a TLS stream to an HTTPS upstream) behind the :class:`Transport` interface."""

    __slots__ = ("_sock", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._sock = socket_of(stream)

    async def receive(self, max_bytes: int) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def receive_later(self, max_bytes: int) -> bytes:
        return await self.receive(max_bytes)

    def send_nowait(self, data: bytes | memoryview) -> int:
        return 0  # a TLS stream cannot send part of a record synchronously

    async def send_all(self, data: bytes | memoryview) -> None:
        await self.stream.send_all(data)

    def readable_now(self) -> bool:
        return self._sock is not None and readable_now(self._sock)

    def close(self) -> None:
        # Closing a TLS stream politely needs I/O; the relay only closes what it gives up on.
        if self._sock is not None:
            self._sock.close()


def transport_for(stream: trio.abc.Stream) -> SocketTransport | StreamTransport:
    """The fastest transport for ``stream``: its raw socket when it is plain TCP."""
    if isinstance(stream, trio.SocketStream):
        return SocketTransport.from_trio(stream.socket)
    return StreamTransport(stream)
