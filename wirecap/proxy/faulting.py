"""The proxy's side of fault injection: an exchange relay that carries out a fault plan.

:class:`FaultingRelay` is the relay a proxy with ``--fault`` uses for every exchange (one without
faults never builds it, so the hot path pays nothing). A routed request the plan picks gets, by
the fault's mode:

- ``answer`` (429, 500, 503): the proxy answers itself with the provider-shaped error (recorded as
  the proxy's answer, ``by="proxy"``); nothing goes upstream.
- ``silence`` (timeout): nothing goes upstream and no answer comes, until the client gives up
  (recorded as a ``timeout``) or the route's read timeout passes (then the usual 504).
- ``body`` (the stream kinds): the request goes upstream as usual and the answer is transformed as
  it passes. Under a fault the answer is re-framed: its payload is de-chunked, transformed, and
  framed again by h11 (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0); the capture
  holds the head and bytes as the client got them. ``bad-tool-args`` and ``length`` rewrite what
  the answer has; an answer without a tool call (or a finish reason) gets one added in its own
  shape (:mod:`wirecap.faults.additions`; the tool is the first the request offers), and its
  note says ``"synthesized": true``.

Every body fault's note says whether it was ``applied``. ``"applied": false`` is left for answers
that cannot carry the fault: ``bad-tool-args`` and ``length`` on an answer whose status is not 2xx
(an error keeps its own body) or that is not an LLM answer of the path's API (a JSON body of
another kind, HTML, a stream with no event in the API's shape, an empty body: a HEAD's, a 204);
a kind other than ``slow-ttft`` on a compressed answer whose coding does not decode (it passes
as it came); and ``stall`` or ``malformed-sse`` whose ``after-events=`` is past the end of a
short stream.

A request that asks to switch protocols (a WebSocket handshake) gets no fault: its session is
relayed as without ``--fault``. Every injected exchange gets a ``note`` record (kind ``fault``) before its end: the fault's kind,
its spec and parameters. A ``model=`` selector reads the request body until its ``model`` has
arrived (at most 64 KiB), so it picks the same requests however their bytes arrive.
"""

from __future__ import annotations

import contextlib
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import h11
import trio

from wirecap.capture.payload import request_payload
from wirecap.capture.records import BodyChunk
from wirecap.faults import BodyFault, Cut, Pause, Send, error_answer
from wirecap.faults.plan import MODEL_SCAN, request_model
from wirecap.proxy import messages
from wirecap.proxy.exchange import Phase, UpstreamFailure, UpstreamTimeout
from wirecap.proxy.relay import ExchangeRelay, _now

if TYPE_CHECKING:
    from wirecap.faults import Answer, FaultSpec, Step
    from wirecap.proxy.config import Route
    from wirecap.proxy.upstream import UpstreamConnection

_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
#: Response headers a re-framed answer does not keep (h11 frames it again).
_REFRAMED: Final = frozenset({b"content-length", b"transfer-encoding"})
#: How much of a request body ``bad-tool-args`` keeps to find the request's first tool; past it
#: the added tool call takes the fixed name (memory stays bounded for requests with large inputs).
REQUEST_KEPT: Final = 8 * 1024 * 1024


class FaultingRelay(ExchangeRelay):
    """An :class:`ExchangeRelay` that injects the faults of ``server.faults``."""

    fault: FaultSpec | None = None
    applied: bool | None = None  # for a body fault: whether it found what it changes
    synthesized = False  # a body fault added what carries it (the answer had nothing to rewrite)
    #: Under a body fault, the payload the client got, which the end's ``res_bytes`` counts (the
    #: capture holds the answer as the client got it); None: the upstream's, as without a fault.
    delivered: int | None = None
    #: The request body's wire bytes so far, kept for ``bad-tool-args`` (None: not kept).
    kept_request: bytearray | None = None

    async def forward(self, route: Route, upstream_target: str, proxy_url: str) -> bool:
        plan = self.server.faults
        assert plan is not None  # the server uses this relay only with a fault plan
        if self.upgrade is not None:  # a protocol switch (WebSocket) is relayed as it is
            return await super().forward(route, upstream_target, proxy_url)
        if plan.needs_body:
            await self._read_model()
        self.fault = plan.choose(self.ex.target, self.request.conn.trailing_data[0])
        if self.fault is not None and self.fault.kind == "bad-tool-args":
            self.kept_request = bytearray()
        if self.fault is None or self.fault.mode == "body":
            return await super().forward(route, upstream_target, proxy_url)
        if self.fault.mode == "answer":
            await self._answer_fault(error_answer(self.fault, self.ex.target))
            return not self.close_client
        await self._stay_silent(route.read_timeout or self.timeouts.read)
        return False

    async def _read_model(self) -> None:
        """For a ``model=`` selector: read the request body until its ``model`` has arrived (or
        :data:`MODEL_SCAN` bytes, or the body's end; within the head timeout). The bytes stay in
        h11's buffer: the relay forwards them as it does any body bytes."""
        conn = self.request.conn
        if conn.they_are_waiting_for_100_continue:
            return
        length = messages.header_value(self.request.headers, b"content-length")
        declared = int(length) if length is not None else None
        with trio.move_on_after(self.timeouts.client_head):
            while True:
                here = conn.trailing_data[0]
                ended = declared is not None and len(here) >= declared
                if ended or len(here) >= MODEL_SCAN or request_model(here) is not None:
                    return
                if declared is None and here.endswith(b"0\r\n\r\n"):
                    return  # the last chunk of a chunked body
                data = await self.client.receive()
                if not data:
                    return
                self.request.tap.feed(data)

    def take_request_body(self) -> tuple[bytes, bool]:
        """As the relay's, keeping the bytes for ``bad-tool-args`` (up to :data:`REQUEST_KEPT`)."""
        raw, ended = super().take_request_body()
        kept = self.kept_request
        if kept is not None and raw:
            if len(kept) + len(raw) > REQUEST_KEPT:
                self.kept_request = None
            else:
                kept += raw
        return raw, ended

    def _request_body(self) -> bytes:
        """The request body's payload as far as it was kept (de-chunked), for the fault's tool."""
        if not self.kept_request:
            return b""
        chunk = BodyChunk(x=self.ex.id, dir="req", ns=0, data=bytes(self.kept_request))
        return b"".join(c.data for c in request_payload(self.request.head, [chunk]))

    def _finish(self) -> None:
        if self.fault is not None:
            self.ex.fault = self.fault.text
        if self.delivered is not None:
            self.ex.res_bytes = self.delivered
        if self.fault is not None and self.rec is not None:
            extra: dict[str, bool] = {} if self.applied is None else {"applied": self.applied}
            if self.synthesized:
                extra["synthesized"] = True
            self.rec.note("fault", self.fault.note(**extra))
        super()._finish()

    # -- answer and silence -----------------------------------------------------------------------

    async def _answer_fault(self, answer: Answer) -> None:
        """Send ``answer`` as the proxy's own (the request body read first, as for its errors)."""
        ex = self.ex
        await self._read_small_body()
        self.close_client = (
            not ex.request_done
            or self.request.conn.their_state is h11.MUST_CLOSE
            or self.server.shutting_down
        )
        lines = [b"HTTP/1.1 %d %s" % (answer.status, HTTPStatus(answer.status).phrase.encode())]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in answer.headers]
        lines.append(b"Content-Length: %d" % len(answer.body))
        if self.close_client:
            lines.append(b"Connection: close")
        head, body = b"\r\n".join(lines) + b"\r\n\r\n", answer.body
        ex.status = answer.status
        ex.advance(Phase.RESPONDING)
        self.server.stats.answered_by_proxy += 1
        ex.ttfb_ns = ex.ttft_ns = _now(ex)
        ex.res_bytes += len(body)
        if self.request.event.method == b"HEAD":
            body = b""
        if self.rec is not None:
            self.rec.response_head(answer.status, head, by="proxy")
            self.rec.body("res", body)
        with contextlib.suppress(*_BROKEN), trio.move_on_after(self.timeouts.write):
            await self.client.stream.send_all(head + body)
            self.answered = True
        ex.advance(Phase.DONE)

    async def _stay_silent(self, read_timeout: float) -> None:
        """Answer nothing: until the client closes (a ``timeout`` with no answer) or
        ``read_timeout`` passes (:class:`UpstreamTimeout`: the client gets the usual 504)."""
        await self._read_small_body()
        with trio.move_on_after(read_timeout):
            while await self.client.receive():
                pass  # what a client sends while it waits is not a request of this exchange
            self.ex.failed(UpstreamTimeout("injected timeout: no answer; the client gave up"))
            return
        raise UpstreamTimeout(f"injected timeout: no answer for {read_timeout:g}s")

    # -- a transformed answer ---------------------------------------------------------------------

    async def _relay_response(self, upstream: UpstreamConnection, read_timeout: float) -> None:
        if self.fault is None:
            return await super()._relay_response(upstream, read_timeout)
        response = await self._final_head(upstream, read_timeout)
        values = {k.lower(): v for k, v in response.headers}
        transform = BodyFault(
            self.fault,
            target=self.ex.target,
            content_type=values.get(b"content-type", b"").decode("latin-1"),
            content_encoding=values.get(b"content-encoding", b"").decode("latin-1") or None,
            status=response.status_code,
            request_body=self._request_body(),
        )
        framer = self._framer()
        drop = _REFRAMED | messages.not_forwarded(response.headers)
        if transform.decoded:
            drop |= {b"content-encoding"}
        headers = [(k, v) for k, v in response.headers.raw_items() if k.lower() not in drop]
        headers.append((b"X-Wirecap-Fault", self.fault.kind.encode()))
        if self.close_client:
            headers.append((b"Connection", b"close"))
        head = framer.send(
            h11.Response(status_code=response.status_code, headers=headers, reason=response.reason)
        )
        await self._send(head or b"", head=response.status_code)
        self.delivered = 0
        while True:
            read = self._take_response_body(upstream, dechunk=True)
            await self._carry_out(framer, transform.feed(read.forward))
            if read.error is not None:
                raise read.error
            if read.ended:
                await self._carry_out(framer, transform.close())
                self.applied = transform.applied
                self.synthesized = transform.synthesized
                await self._send(framer.send(h11.EndOfMessage()) or b"")
                self.ex.advance(Phase.DONE)
                self.response_done.set()
                return
            if self.rec is not None and self.rec.backlogged:
                self.watchdog.relax()
                await self.rec.wait_for_room()
            await self._receive(upstream, read_timeout)

    async def _final_head(self, upstream: UpstreamConnection, read_timeout: float) -> h11.Response:
        """The upstream's final response head (interim 1xx heads are dropped under a fault)."""
        while True:
            event, raw = await self._next_head(upstream, read_timeout)
            if isinstance(event, h11.InformationalResponse):
                continue
            if self.ex.ttfb_ns is None:
                self.ex.ttfb_ns = self.read_ns
            self._client_head(raw, event)  # sets the status, the phase and close_client
            return event

    def _framer(self) -> h11.Connection:
        """An h11 server connection that frames the answer for this client's request."""
        framer = h11.Connection(h11.SERVER)
        event = self.request.event
        framer.receive_data(b"%s / HTTP/%s\r\nHost: x\r\n\r\n" % (event.method, event.http_version))
        framer.next_event()
        framer.next_event()
        return framer

    async def _carry_out(self, framer: h11.Connection, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, Send):
                if step.data and framer.our_state is h11.SEND_BODY:
                    await self._send(framer.send(h11.Data(data=step.data)) or b"")
                    self.delivered = (self.delivered or 0) + len(step.data)
            elif isinstance(step, Pause):
                self.watchdog.relax()
                await trio.sleep(step.seconds)
            elif isinstance(step, Cut):
                self.applied = True
                raise UpstreamFailure(step.reason)

    async def _send(self, data: bytes, head: int | None = None) -> None:
        """Send ``data`` to the client and record it (as the response head when ``head``)."""
        if not data:
            return
        await self._send_to_client(data)
        if self.rec is not None:
            if head is not None:
                self.rec.response_head(head, data)
            else:
                self.rec.body("res", data)
