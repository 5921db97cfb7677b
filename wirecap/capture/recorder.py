"""The recorder of one exchange: all that the proxy's relay knows about capture.

The relay calls one method per thing that crossed a wire, right after forwarding it, and
:meth:`ExchangeRecorder.wait_for_room` before its next read when the writer asks producers to wait.
Times are ns since the exchange began, from the recorder's clock, which starts at the first byte of
the request head.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from wirecap.capture.records import (
    BodyChunk,
    Direction,
    ExchangeEnd,
    ExchangeNote,
    Outcome,
    ProxyPathMode,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from wirecap.capture.writer import RecordWriter


class ExchangeRecorder:
    """Turns what happened in one exchange into records for a capture writer."""

    __slots__ = ("_t0", "_writer", "x")

    def __init__(self, writer: RecordWriter, x: str, t0_ns: int) -> None:
        self._writer = writer
        self._t0 = t0_ns  # time.perf_counter_ns() at the exchange's first byte
        self.x = x

    def now(self) -> int:
        """ns since the exchange began."""
        return time.perf_counter_ns() - self._t0

    @property
    def backlogged(self) -> bool:
        """The writer is full: await :meth:`wait_for_room` before reading more."""
        return self._writer.full

    async def wait_for_room(self) -> None:
        await self._writer.wait_for_room()

    def request(
        self,
        *,
        wall_ns: int,
        method: str,
        target: str,
        head: bytes,
        client: str,
        proxy_url: str,
        route: str | None,
        upstream_url: str | None,
    ) -> None:
        """The client's request head, exactly as received."""
        self._writer.submit_nowait(
            RequestReceived(
                x=self.x,
                wall_ns=wall_ns,
                method=method,
                target=target,
                head=head,
                client=client,
                proxy_url=proxy_url,
                route=route,
                upstream_url=upstream_url,
            )
        )

    def upstream_head(self, head: bytes, proxy_path: ProxyPathMode) -> None:
        """The request head as sent upstream, with its X-Proxy-Path line (see FORMAT.md)."""
        self._writer.submit_nowait(
            UpstreamRequest(x=self.x, ns=self.now(), head=head, proxy_path=proxy_path)
        )

    def response_head(
        self, status: int, head: bytes, *, by: str = "upstream", ns: int | None = None
    ) -> None:
        """A response head (1xx included) as received at ``ns``, or as the proxy made it."""
        ns = self.now() if ns is None else ns
        self._writer.submit_nowait(ResponseHead(x=self.x, ns=ns, status=status, head=head, by=by))

    def body(self, direction: Direction, data: bytes, *, ns: int | None = None) -> None:
        """The body bytes of one read, as they crossed the wire, read at ``ns`` (default: now)."""
        ns = self.now() if ns is None else ns
        self._writer.submit_nowait(BodyChunk(x=self.x, dir=direction, ns=ns, data=data))

    def note(self, kind: str, detail: Mapping[str, Any]) -> None:
        """What the proxy says about the exchange (``kind="fault"``: the fault it injected)."""
        self._writer.submit_nowait(ExchangeNote(x=self.x, kind=kind, detail=detail))

    def end(
        self,
        outcome: Outcome,
        *,
        status: int | None,
        error: str | None,
        req_bytes: int,
        res_bytes: int,
        ttfb_ns: int | None,
    ) -> None:
        """How the exchange ended."""
        self._writer.submit_nowait(
            ExchangeEnd(
                x=self.x,
                ns=self.now(),
                outcome=outcome,
                status=status,
                error=error,
                req_bytes=req_bytes,
                res_bytes=res_bytes,
                ttfb_ns=ttfb_ns,
            )
        )
