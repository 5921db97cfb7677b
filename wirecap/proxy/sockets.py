"""A TCP connection as a trio stream, plus a send that neither waits nor yields.

``trio.SocketStream`` makes every call a full checkpoint: after a send that completed at once,
the task yields and queues for its next turn. A relay that reads an event, sends it on and reads
again (every SSE event of every stream) thus takes two turns of trio's run queue per event, one
of them only to give others a chance that its next read gives them anyway, and it sets a write
deadline per event that almost never matters. Under 2,000 concurrent streams that was a fifth of
the proxy's CPU (docs/PERFORMANCE.md, "Long streams beside short requests").

:class:`TcpStream` is a ``trio.abc.HalfCloseableStream`` on trio's own I/O primitives
(``trio.lowlevel.wait_readable`` / ``wait_writable``) that keeps trio's contract, checked by
``trio.testing.check_half_closeable_stream``: every call is a checkpoint, a read never loses bytes
to a cancellation, a broken connection raises ``trio.BrokenResourceError`` (the ``OSError`` as its
cause), a closed one ``trio.ClosedResourceError``, and two tasks sending (or reading) at once is a
``trio.BusyResourceError``. Two things differ:

- :meth:`TcpStream.send_nowait` sends what the socket takes at once and returns. The relay's
  response loop uses it; only when a client is slow to read does it wait, under its write
  timeout, with :meth:`~TcpStream.send_all`. That loop still yields once per turn, in its read.
- A read that follows one that drained the socket (got less than it asked for) waits for the
  socket before reading, instead of first trying a read that would most likely fail: a stream's
  next event is usually a while away.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import trio

Buffer = bytes | bytearray | memoryview

#: Read size when the caller gives none (trio's default).
DEFAULT_READ: Final = 65536
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


class TcpStream(trio.abc.HalfCloseableStream):
    """A connected, non-blocking TCP socket as a trio stream (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._sending = False
        self._receiving = False
        self._eof_sent = False
        self._drained = False

    @classmethod
    def adopt(cls, stream: trio.SocketStream) -> TcpStream:
        """Take over the connection of a ``trio.SocketStream`` (which must not be used again).
        Its socket options (TCP_NODELAY among them) stay set."""
        trio_socket = stream.socket
        family, kind, proto = trio_socket.family, trio_socket.type, trio_socket.proto
        return cls(socket.socket(family, kind, proto, fileno=trio_socket.detach()))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_READ
        elif max_bytes < 1:
            raise ValueError("max_bytes must be 1 or more")
        if self._receiving:
            raise trio.BusyResourceError("another task is reading from this stream")
        self._receiving = True
        try:
            if self._drained:  # the last read took all there was: wait before reading again
                self._check_open()
                data = await self._receive_when_readable(max_bytes)
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    data = self.socket.recv(max_bytes)
                except BlockingIOError:
                    data = await self._receive_when_readable(max_bytes)
                except OSError as exc:
                    raise _stream_error(exc) from exc
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            self._drained = len(data) < max_bytes
            return data
        finally:
            self._receiving = False

    async def _receive_when_readable(self, max_bytes: int) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.socket)
            try:
                return self.socket.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc

    def send_nowait(self, data: Buffer) -> int:
        """Send what the socket takes at once, without waiting or yielding; returns how many bytes
        went (all of them, unless the peer is slow to read). Raises like :meth:`send_all`."""
        self._check_can_send()
        return self._send(data)

    async def send_all(self, data: Buffer) -> None:
        self._check_can_send()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._sending = True
        try:
            with memoryview(data) as view:
                sent = self._send(view)
                if sent == len(view):
                    await trio.lowlevel.cancel_shielded_checkpoint()
                while sent < len(view):
                    await trio.lowlevel.wait_writable(self.socket)
                    sent += self._send(view[sent:])
        finally:
            self._sending = False
        self._drained = False  # others ran meanwhile: an answer may be here already

    def _check_can_send(self) -> None:
        self._check_not_sending()
        if self._eof_sent:
            raise trio.ClosedResourceError("cannot send after send_eof")

    def _check_not_sending(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")

    def _check_open(self) -> None:
        """Raises ClosedResourceError after :meth:`aclose` (waiting on a closed socket cannot)."""
        if self.socket.fileno() == -1:
            raise trio.ClosedResourceError("the connection was already closed")

    def _send(self, data: Buffer) -> int:
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _stream_error(exc) from exc

    def is_idle(self) -> bool:
        """Whether nothing waits to be read and the peer has neither closed nor reset the
        connection: a pooled connection that can carry the next request. Takes no bytes (one
        ``MSG_PEEK`` read)."""
        try:
            self.socket.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # a byte arrived, or the stream ended

    async def wait_send_all_might_not_block(self) -> None:
        self._check_not_sending()
        self._check_open()
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self.socket)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        self._check_not_sending()
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # already shut down, or the peer reset it
                raise _stream_error(exc) from exc

    async def aclose(self) -> None:
        if self.socket.fileno() != -1:
            # A task waiting on the socket wakes with ClosedResourceError.
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
        await trio.lowlevel.checkpoint()


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("the connection was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
