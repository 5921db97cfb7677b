"""An exchange read from a capture, with its HTTP and LLM facts worked out once.

Bridges the two ground floors: :mod:`wirecap.capture` gives exchanges as records, :mod:`wirecap.llm`
takes bytes and times. Content codings are undone here, on copies, for analysis only.
"""

from __future__ import annotations

import array
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Final

from wirecap.capture.sessions import closes_sent, dropped_by
from wirecap.llm import (
    DecodeError,
    EventAllowance,
    ExchangeInput,
    Head,
    LLMFacts,
    TimedChunks,
    analyze,
    decode_content,
    parse_head,
)
from wirecap.llm.websocket import WsSession, decode_session

if TYPE_CHECKING:
    from collections.abc import Iterator

    from wirecap.capture import Exchange


EMPTY: Final = TimedChunks.held(())


@dataclasses.dataclass(slots=True)
class Analyzed:
    """One exchange and what it means."""

    exchange: Exchange
    input: ExchangeInput  # what the adapters saw: also what replay compares against
    request_head: Head | None
    response_head: Head | None
    request_body: bytes  # decoded
    response_chunks: TimedChunks  # decoded (a coded body becomes one chunk); streamed, not held
    facts: LLMFacts
    #: The exchange's outcome: the end record's, or for a WebSocket session the reader's
    #: judgement of how it ended (:func:`judged_outcome`).
    outcome: str = "incomplete"
    decode_error: str | None = None
    #: Each side's payload as it crossed the wire (before any content coding was undone): sizes
    #: and chunk times for timings, the bytes streamed again when asked for.
    request_payload: TimedChunks = EMPTY
    response_payload: TimedChunks = EMPTY

    @property
    def id(self) -> str:
        return self.exchange.id

    @property
    def session(self) -> WsSession | None:
        """The WebSocket session after a 101, decoded into messages (None for plain HTTP)."""
        return self.input.session

    @property
    def status(self) -> int | None:
        return self.exchange.status

    @property
    def error(self) -> str | None:
        """What went wrong, in one line: the end record's error, or the reader's judgement of a
        session's end (see :func:`judged_outcome`)."""
        end = self.exchange.end
        if end is not None and end.error:
            return end.error
        if self.outcome != self.exchange.outcome:
            side = "client" if self.outcome == "client_abort" else "upstream"
            return f"{side} closed the connection mid-session, without a Close frame"
        return None

    @property
    def route(self) -> str | None:
        return self.exchange.request.route if self.exchange.request else None

    @property
    def model(self) -> str | None:
        return self.facts.model_returned or self.facts.model_requested

    @property
    def by_proxy(self) -> bool:
        response = self.exchange.response
        return response is not None and response.by == "proxy"

    def row(self) -> dict[str, Any]:
        """The JSON row of ``wirecap inspect --json``: HTTP facts plus LLM facts."""
        ex = self.exchange
        usage = self.facts.usage
        return {
            "id": ex.id,
            "start": iso_time(ex.wall_ns),
            "start_ns": ex.wall_ns,
            "method": ex.method,
            "path": ex.target,
            "route": self.route,
            "upstream_url": ex.upstream_url,
            "status": ex.status,
            "outcome": self.outcome,
            "duration_ms": ms(ex.duration_ns),
            "ttfb_ms": ms(ex.ttfb_ns),
            "request_bytes": ex.end.req_bytes if ex.end else self.request_payload.size,
            "response_bytes": ex.end.res_bytes if ex.end else self.response_payload.size,
            "api": self.facts.api,
            "streamed": self.facts.streamed,
            "model": self.model,
            "model_requested": self.facts.model_requested,
            "input_tokens": usage.input if usage else None,
            "output_tokens": usage.output if usage else None,
            "cached_tokens": usage.cached if usage else None,
            "ttft_ms": ms(self.facts.ttft_ns),
            "tokens_per_second": None
            if self.facts.tokens_per_second is None
            else round(self.facts.tokens_per_second, 2),
            "finish_reason": self.facts.finish_reason,
            "tool_calls": len(self.facts.tool_calls),
            # what the tool that made the exchange says (import provenance, injected faults)
            "notes": [{"kind": n.kind, "detail": dict(n.detail)} for n in ex.notes],
        }


def iso_time(wall_ns: int | None) -> str | None:
    if wall_ns is None:
        return None
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


def ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def payload_chunks(exchange: Exchange, direction: str) -> TimedChunks:
    """One direction's payload of ``exchange`` as :class:`TimedChunks` that stream it from the
    capture each time they are read; measured here in one pass (times and size), holding one
    chunk. A body the exchange holds anyway (a small one) is simply kept."""
    if exchange.holds_bodies:
        return TimedChunks.held((c.ns, c.data) for c in exchange.iter_payload(direction))
    times = array.array("q")
    size = 0
    for chunk in exchange.iter_payload(direction):
        times.append(chunk.ns)
        size += len(chunk.data)

    def read() -> Iterator[tuple[int, bytes]]:
        return ((c.ns, c.data) for c in exchange.iter_payload(direction))

    return TimedChunks(read, times, size)


def session_of(exchange: Exchange, allowance: EventAllowance | None = None) -> WsSession | None:
    """The WebSocket session of an exchange the upstream answered with 101, decoded from the
    stored reads of both directions (see FORMAT.md 3.10) while ``allowance`` lasts; None for any
    other exchange."""
    switch = next((head for head in exchange.responses if head.status == 101), None)
    if switch is None:
        return None
    reads = ((c.dir, c.ns, c.data) for c in exchange.iter_wire())
    return decode_session(switch.head, reads, allowance)


def judged_outcome(exchange: Exchange, allowance: EventAllowance | None = None) -> str:
    """The outcome of ``exchange``: the end record's, except for a WebSocket session whose end
    says ``ok`` but whose side that ended its connection first (the ``websocket`` note) had sent no
    Close frame: that side dropped the session. The proxy's writer process already writes that
    judgement into the end record; this makes the same one, with the same Close-frame watch
    (capture/sessions.py), for a file written without it, while ``allowance`` lasts (one event a
    frame; past it, the end record's outcome stands)."""
    outcome = exchange.outcome
    switch = next((head for head in exchange.responses if head.status == 101), None)
    if switch is None or outcome != "ok":
        return outcome
    ended_by = next((n.get("ended_by") for n in exchange.notes_of("websocket")), None)
    if dropped_by(ended_by, frozenset()) is None:  # no side named that could have dropped it
        return outcome
    reads = ((c.dir, c.data) for c in exchange.iter_wire())
    closes = closes_sent(switch.head, reads, allowance)
    if closes is None:
        return outcome
    dropped = dropped_by(ended_by, closes)
    return outcome if dropped is None else dropped[0]


def _own_allowance(exchange: Exchange) -> EventAllowance | None:
    size = exchange.stored_size()
    return None if size is None else EventAllowance.for_stored(size)


def analyze_exchange(exchange: Exchange, allowance: EventAllowance | None = None) -> Analyzed:
    """Parse heads, undo content codings, and run the LLM adapter for ``exchange``.

    The response body is not read into memory unless an adapter parses it whole (a JSON answer);
    the request body is. ``allowance`` bounds the events parsed, shared by a pass over a capture;
    without one, the exchange gets that of the files it was read from."""
    request_head = parse_head(exchange.request.head) if exchange.request else None
    final = exchange.response
    response_head = parse_head(final.head) if final else None
    problems: list[str] = []
    request_payload = payload_chunks(exchange, "req")
    request_body = request_payload.join()
    if request_head is not None and request_head.get("content-encoding"):
        try:
            request_body = decode_content(request_body, request_head.get("content-encoding"))
        except DecodeError as exc:
            problems.append(f"request: {exc}")
    response_payload = chunks = payload_chunks(exchange, "res")
    coding = response_head.get("content-encoding") if response_head else None
    try:
        chunks = chunks.decoded(coding)
    except DecodeError as exc:
        problems.append(f"response: {exc}")
    allowance = allowance or _own_allowance(exchange)
    session = session_of(exchange, allowance)
    outcome = judged_outcome(exchange, allowance)
    inp = ExchangeInput(
        method=exchange.method or "",
        path=exchange.target or "",
        request_head=request_head,
        request_body=request_body,
        status=exchange.status,
        response_head=response_head,
        response_chunks=chunks,
        complete=outcome == "ok",
        session=session,
        allowance=allowance,
    )
    return Analyzed(
        exchange=exchange,
        input=inp,
        request_head=request_head,
        response_head=response_head,
        request_body=request_body,
        response_chunks=chunks,
        facts=analyze(inp),
        outcome=outcome,
        decode_error="; ".join(problems) or None,
        request_payload=request_payload,
        response_payload=response_payload,
    )
