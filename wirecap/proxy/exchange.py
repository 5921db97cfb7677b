"""The model of one relayed exchange: its phase, its facts, and the errors that end it. Sans-IO.

Theory of operation. An exchange moves through the phases of :class:`Phase` in order, never back:
the request head is in and routed (``ROUTED``), an upstream connection is being opened
(``CONNECTING``), the request goes upstream (``SENDING``), the relay waits for the final response
head (``AWAITING``), that head has gone to the client and its body follows (``RESPONDING``), and
the response is complete (``DONE``). The request body may still be arriving in any phase after
``SENDING``: that is :attr:`ExchangeState.request_done`, a separate fact.

An exchange that fails ends with a :class:`RelayError` raised where the failure happened, which
carries the outcome recorded in the capture and, while no response has reached the client
(:attr:`ExchangeState.responded` is false), the status and kind of the JSON error it gets.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from wirecap.capture.records import Outcome


class Phase(enum.IntEnum):
    ROUTED = 1
    CONNECTING = 2
    SENDING = 3
    AWAITING = 4
    RESPONDING = 5
    DONE = 6


#: The answer's ``type`` for statuses h11 hints at.
KIND_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    408: "request_timeout",
    431: "request_header_fields_too_large",
    501: "not_implemented",
}


class RelayError(Exception):
    """Why an exchange failed: its recorded outcome and the answer a client still waiting gets."""

    outcome: ClassVar[Outcome]
    status: int = 502
    kind: str = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        **details: object,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
            self.kind = KIND_BY_STATUS.get(status, self.kind)
        if kind is not None:
            self.kind = kind
        #: Extra fields of the JSON answer (``upstream``, ``routes``).
        self.details = details


class BadRequest(RelayError):
    """The client's request is malformed, too big, or a shape the proxy does not forward."""

    outcome = "protocol_error"
    status = 400
    kind = "bad_request"


class ClientTimeout(RelayError):
    """The client did not send its head or body in time: it gets a 408, and the exchange is the
    client's abort (the upstream, if it got the request, is cut off)."""

    outcome = "client_abort"
    status = 408
    kind = "request_timeout"


class ClientAbort(RelayError):
    """The client closed its connection or stopped reading (it gets no answer)."""

    outcome = "client_abort"


class CutOff(RelayError):
    """The proxy stopped (its shutdown grace ran out) before the exchange ended."""

    outcome = "timeout"
    status = 503
    kind = "shutting_down"


class UpstreamFailure(RelayError):
    """The upstream could not be reached, broke the connection, or answered malformed HTTP."""

    outcome = "upstream_error"
    status = 502
    kind = "upstream_error"


class UpstreamTimeout(RelayError):
    """The upstream took longer than a timeout to connect or to send its next bytes."""

    outcome = "timeout"
    status = 504
    kind = "upstream_timeout"


@dataclasses.dataclass(slots=True, kw_only=True, eq=False)
class ExchangeState:
    """The facts of one exchange as the relay learns them, for its end record and console line."""

    id: str
    t0_ns: int  # perf_counter_ns at the first byte of the request head
    wall_ns: int
    method: str
    target: str
    upstream_url: str | None = None
    route: str | None = None  # the prefix of the route it matched
    phase: Phase = Phase.ROUTED
    request_done: bool = False  # the whole request body has been received
    status: int | None = None
    ttfb_ns: int | None = None  # first response head
    ttft_ns: int | None = None  # first response body byte
    req_bytes: int = 0  # request payload received
    res_bytes: int = 0  # response payload received
    outcome: Outcome = "ok"
    error: str | None = None
    kind: str | None = None  # the failure's kind (RelayError.kind), as its JSON answer names it
    fault: str | None = None  # the spec of the fault injected into it (``--fault``), if any

    @property
    def responded(self) -> bool:
        """A final response head has gone to the client: errors can only close the connection."""
        return self.phase >= Phase.RESPONDING

    def where(self) -> str:
        return "mid-response" if self.responded else "before responding"

    def advance(self, phase: Phase) -> None:
        if phase < self.phase:
            raise RuntimeError(
                f"exchange {self.id} cannot go back from {self.phase!r} to {phase!r}"
            )
        self.phase = phase

    def failed(self, error: RelayError) -> None:
        """Record the first failure (a later one is a consequence of it)."""
        if self.outcome == "ok":
            self.outcome = error.outcome
            self.error = str(error)
            self.kind = error.kind
