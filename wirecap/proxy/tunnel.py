"""A WebSocket session after the 101: raw bytes both ways, as they arrive, each read recorded.

Once the upstream has answered an Upgrade request with 101 Switching Protocols, neither connection
speaks HTTP any more (h11 reports SWITCHED_PROTOCOL). :class:`Tunnel` runs one task per direction:
each read is recorded as a ``body`` record (``"req"``: client to upstream, ``"res"``: upstream to
client) with its arrival time and forwarded to the other side at once. The proxy reads no frame,
not even a frame header: the reader decodes the recorded bytes with wsproto.

Time limits: a session may stay quiet for as long as its peers like, so no read has a deadline
(the body and read timeouts of HTTP do not apply); each write has the write timeout, so a peer
that stops reading ends the session. The proxy's shutdown grace applies as to any exchange.

How it ends: the first side whose connection ends decides, and a ``note`` record (kind
``"websocket"``, ``{"ended_by": "client"|"upstream"}``) says which it was. A connection that ends
with end of file ends the session ``ok`` as far as the transport goes; whether the closing handshake
came first is in the recorded frames, and the writer process judges it (capture/sessions.py: a side
that ended its connection without having sent a Close frame dropped the session, and the end record
says so). A connection that breaks (reset) or a peer that stops reading for the write timeout fails
it here: ``client_abort`` for the client, ``upstream_error`` for the upstream.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, Literal

import trio

from wirecap.proxy.exchange import ClientAbort, RelayError, UpstreamFailure

if TYPE_CHECKING:
    from wirecap.capture.recorder import ExchangeRecorder
    from wirecap.proxy.exchange import ExchangeState

Side = Literal["client", "upstream"]
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


def broken(side: Side, why: str) -> RelayError:
    """The failure of a session whose ``side`` broke it."""
    if side == "client":
        return ClientAbort(f"client {why} mid-session")
    return UpstreamFailure(f"upstream {why} mid-session")


class Tunnel:
    """Relays one WebSocket session between two streams until either side's connection ends."""

    def __init__(
        self,
        *,
        client: trio.abc.Stream,
        upstream: trio.abc.Stream,
        read_size: int,
        write_timeout: float,
        state: ExchangeState,
        recorder: ExchangeRecorder | None,
    ) -> None:
        self.streams: dict[Side, trio.abc.Stream] = {"client": client, "upstream": upstream}
        self.read_size = read_size
        self.write_timeout = write_timeout
        self.ex = state
        self.rec = recorder
        self._scope = trio.CancelScope()
        self._ended: tuple[Side, RelayError | None] | None = None

    async def run(self, client_early: bytes, upstream_early: bytes, upstream_ns: int) -> None:
        """Relay until the session ends; ``*_early`` are bytes each side sent with or right after
        the handshake (already read), the upstream's at ``upstream_ns``. Raises the
        :class:`RelayError` of a session that did not end with the closing handshake."""
        with self._scope:
            if upstream_early:
                await self._forward("upstream", upstream_early, upstream_ns)
            if client_early:
                await self._forward("client", client_early, self._now())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, "client")
                nursery.start_soon(self._pump, "upstream")
        if self._ended is not None and self._ended[1] is not None:
            raise self._ended[1]

    async def _pump(self, side: Side) -> None:
        """One direction: read from ``side``, forward, record, until ``side``'s connection ends."""
        source = self.streams[side]
        while True:
            try:
                data = bytes(await source.receive_some(self.read_size))
            except _BROKEN:
                self._end(side, broken(side, "broke the connection"))
                return
            if not data:
                self._end(side, None)
                return
            await self._forward(side, data, self._now())

    async def _forward(self, side: Side, data: bytes, ns: int) -> None:
        """Record one read of ``side``, then send it to the other side: a read the other side
        never took whole (it broke, or stopped reading) is in the capture all the same."""
        other: Side = "upstream" if side == "client" else "client"
        ex = self.ex
        if side == "client":
            ex.req_bytes += len(data)
        else:
            ex.res_bytes += len(data)
            if ex.ttft_ns is None:
                ex.ttft_ns = ns
        if self.rec is not None:
            self.rec.body("req" if side == "client" else "res", data, ns=ns)
        try:
            with trio.fail_after(self.write_timeout):
                await self.streams[other].send_all(data)
        except trio.TooSlowError:
            self._end(other, broken(other, f"stopped reading for {self.write_timeout:g}s"))
            return
        except _BROKEN:
            self._end(other, broken(other, "closed the connection before a write"))
            return
        if self.rec is not None and self.rec.backlogged:
            await self.rec.wait_for_room()

    def _end(self, side: Side, error: RelayError | None) -> None:
        """The session ends: ``side``'s connection ended first (the first call decides)."""
        if self._ended is None:
            self._ended = (side, error)
            if self.rec is not None:
                self.rec.note("websocket", {"ended_by": side})
        self._scope.cancel()

    def _now(self) -> int:
        return time.perf_counter_ns() - self.ex.t0_ns
