"""A fault applied to an answer's body as it passes: payload in, steps out. Sans-IO.

:class:`BodyFault` is fed the answer's payload (de-chunked) as it arrives and returns
:data:`Step` objects for the I/O shell to carry out in order: :class:`Send` bytes, :class:`Pause`
(a gap the shell sleeps), :class:`Cut` (close the connection without ending the message; nothing
more follows). When :meth:`BodyFault.close` returns no :class:`Cut`, the shell ends the message
normally. The body is re-framed under a fault: the shell drops the answer's Content-Length (and
Content-Encoding when :attr:`BodyFault.decoded`) and lets its HTTP library frame what it sends.

A stream (SSE, NDJSON) is handled an event at a time (an SSE event ends at a blank line, an NDJSON
value at a newline); ``disconnect`` and ``truncate`` hold the latest event back, so the event they
leave out is always the stream's last (its terminator). A JSON answer, and a compressed one
(decoded first), is handled whole at its end. On a JSON answer ``disconnect`` and ``truncate``
send the first half and cut the connection, ``stall`` pauses between the halves, and
``malformed-sse`` drops the last byte (the JSON no longer parses: ``malformed-json``).

``bad-tool-args`` and ``length`` rewrite what the answer has (:mod:`wirecap.faults.rewrite`). Given
the request's body (the proxy's case), a 2xx answer with nothing to rewrite gets the fault added
instead (:mod:`wirecap.faults.additions`: a tool call, a finish reason, in the answer's shape;
:attr:`BodyFault.synthesized`); without it (``wirecap serve``, which synthesizes a whole answer
then) such an answer passes unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Final, Literal

from wirecap.faults.additions import additions_for
from wirecap.faults.answers import api_of, encode_sse, request_json, tool_name
from wirecap.faults.rewrite import REWRITERS
from wirecap.llm import DecodeError, decode_content

if TYPE_CHECKING:
    from wirecap.faults.additions import Additions
    from wirecap.faults.answers import SSEEvent
    from wirecap.faults.spec import FaultSpec


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Cut:
    reason: str


Step = Send | Pause | Cut
Framing = Literal["sse", "ndjson", "whole"]

#: The event a ``malformed-sse`` fault adds: bytes that are not UTF-8 inside JSON that never closes.
MALFORMED_SSE: Final = b'data: {"wirecap_fault": "malformed-sse \xff\xfe\n\n'
MALFORMED_NDJSON: Final = b'{"wirecap_fault": "malformed\n'
_NDJSON_TYPES: Final = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def framing_of(content_type: str) -> Framing:
    media = content_type.partition(";")[0].strip().lower()
    if media == "text/event-stream":
        return "sse"
    return "ndjson" if media in _NDJSON_TYPES else "whole"


def _next_boundary(buf: bytes | bytearray, framing: Framing) -> int:
    """The end of the first complete event in ``buf`` (after its separator), or -1."""
    if framing == "ndjson":
        end = buf.find(b"\n")
        return end + 1 if end >= 0 else -1
    ends = [(i + len(sep)) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := buf.find(sep)) >= 0]
    return min(ends) if ends else -1


#: What an answer under a body fault may hold back at once: a whole body (JSON, or a coded one that
#: is decoded first), or an event that has not ended. Past it the answer is cut (memory stays
#: bounded; faults are for testing clients with answers of ordinary size).
MAX_HELD_BYTES: Final = 64 * 1024 * 1024


class BodyFault:
    """One answer's body under a ``body`` fault (see the module docstring)."""

    def __init__(
        self,
        spec: FaultSpec,
        *,
        target: str,
        content_type: str,
        content_encoding: str | None = None,
        status: int = 200,
        request_body: bytes | None = None,
    ) -> None:
        self.spec = spec
        self.api = api_of(target)
        framing = framing_of(content_type)
        coded = (content_encoding or "identity").strip().lower() != "identity"
        #: The payload is decoded before it is transformed: the answer loses its Content-Encoding.
        self.decoded = coded
        self.encoding = content_encoding if coded else None
        self.stream_framing: Framing = framing
        self.framing: Framing = "whole" if coded else framing
        #: Whether the fault changed anything (a rewrite found its target, a gap or cut happened).
        self.applied = False
        #: Whether the fault was added (a rewrite found nothing to change; see the module docstring).
        self.synthesized = False
        self.additions: Additions | None = None
        if spec.kind in REWRITERS and request_body is not None and 200 <= status < 300:
            tool = tool_name(request_json(request_body))
            self.additions = additions_for(spec.kind, self.api, tool)
        self.events = 0  # events sent
        self._buf = bytearray()
        self._held: bytes | None = None
        self._done = False  # cut: nothing more is sent
        self._started = False
        self._seen: set[Any] = set()
        self._after = int(spec.params.get("after-events", 0))

    # -- the shell's side -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Step]:
        """Steps for the next payload bytes of the answer."""
        if self._done or not data:
            return []
        steps = self._start()
        self._buf += data
        if len(self._buf) > MAX_HELD_BYTES:
            self._done = True
            self._buf.clear()
            held = f"{MAX_HELD_BYTES >> 20} MiB"
            return [*steps, Cut(f"answer held back over {held} under a fault: cut")]
        if self.framing == "whole":
            return steps
        while (end := _next_boundary(self._buf, self.framing)) >= 0:
            event = bytes(self._buf[:end])
            del self._buf[:end]
            steps += self._event(event)
            if self._done:
                break
        return steps

    def close(self) -> list[Step]:
        """Steps for the end of the answer; a :class:`Cut` among them means no clean end."""
        if self._done:
            return []
        steps = self._start()
        if self.framing == "whole":
            body = bytes(self._buf)
            self._buf.clear()  # a coded stream's decoded events are fed again from empty
            return steps + self._whole(body)
        rest = bytes(self._buf)
        kind = self.spec.kind
        if kind in ("disconnect", "truncate"):  # the held-back last event is left out
            self.applied = self._done = True
            if kind == "disconnect":
                steps.append(Cut(f"injected disconnect after {self.events} events"))
            return steps
        if self._held is not None:
            steps.append(Send(self._held))
        last = self._event(rest) if rest else []  # a terminator without its blank line
        if self.additions is not None and not self.applied:
            steps += self._added(self.additions.end())  # before an unfinished event, if any
        return steps + last

    # -- events -----------------------------------------------------------------------------------

    def _start(self) -> list[Step]:
        if self._started:
            return []
        self._started = True
        if self.spec.kind == "slow-ttft":
            self.applied = True
            return [Pause(self.spec.params["ms"] / 1000)]
        if (
            self.spec.kind in ("stall", "malformed-sse")
            and self._after == 0
            and self.framing != "whole"
        ):
            return self._inject()
        return []

    def _inject(self) -> list[Step]:
        self.applied = True
        if self.spec.kind == "stall":
            return [Pause(self.spec.params["ms"] / 1000)]
        return [Send(MALFORMED_NDJSON if self.framing == "ndjson" else MALFORMED_SSE)]

    def _event(self, event: bytes) -> list[Step]:
        kind = self.spec.kind
        if kind in ("disconnect", "truncate"):
            held, self._held = self._held, event
            steps: list[Step] = []
            if held is not None:
                steps.append(Send(held))
                self.events += 1
            if kind == "disconnect" and self.events >= self._after:
                self.applied = self._done = True
                steps.append(Cut(f"injected disconnect after {self.events} events"))
            return steps
        before: list[Step] = []
        if kind in REWRITERS:
            before, event = self._rewrite_event(event)
        self.events += 1
        steps = [*before, Send(event)]
        if kind in ("stall", "malformed-sse") and self.events == self._after:
            steps += self._inject()
        return steps

    def _rewrite_event(self, event: bytes) -> tuple[list[Step], bytes]:
        """What goes before ``event`` (additions) and the event itself, rewritten if it carries
        what the fault changes."""
        if self.framing == "ndjson":
            lines: list[str] = []
            value = data = _loads(event)
        else:
            lines = event.decode("utf-8", "surrogateescape").splitlines()
            text = "\n".join(
                line[5:].removeprefix(" ") for line in lines if line.startswith("data:")
            )
            value = _loads(text.encode("utf-8", "surrogateescape"))
            data = text if value is None else value
        old_type = value.get("type") if isinstance(value, dict) else None
        changed = value is not None and REWRITERS[self.spec.kind](self.api, value, self._seen)
        before: list[Step] = []
        if changed:
            self.applied = True
        elif self.additions is not None and not self.applied:
            added = self.additions.before(data)
            if added is not None:
                before = self._added(added)
                self.applied = self.synthesized = True
                changed = isinstance(value, dict | list)
        if not changed:
            return before, event
        if self.framing == "ndjson":
            return before, json.dumps(value).encode() + b"\n"
        # The event's other fields (event:, id:); the blank line that ends it is written again below.
        kept = [line for line in lines if line and not line.startswith("data:")]
        new_type = value.get("type") if isinstance(value, dict) else None
        if new_type != old_type:
            kept = [f"event: {new_type}" if line.startswith("event:") else line for line in kept]
        encoded = "\n".join([*kept, f"data: {json.dumps(value)}"]) + "\n\n"
        return before, encoded.encode("utf-8", "surrogateescape")

    def _added(self, events: list[SSEEvent]) -> list[Step]:
        """``events`` (from :attr:`additions`) as bytes of this stream's framing."""
        if not events:
            return []
        self.applied = self.synthesized = True
        if self.framing == "ndjson":
            return [Send(b"".join(json.dumps(data).encode() + b"\n" for _, data in events))]
        return [Send(encode_sse(events))]

    # -- a whole body -----------------------------------------------------------------------------

    def _whole(self, body: bytes) -> list[Step]:
        if self.decoded:
            try:
                body = decode_content(body, self.encoding)
            except DecodeError:
                self.decoded = False  # sent as it came; the header stays right
                return [Send(body)]
        if self.stream_framing != "whole":
            self.framing = self.stream_framing
            return self.feed(body) + self.close()
        kind, half = self.spec.kind, len(body) // 2
        self.applied = kind not in REWRITERS
        if kind in ("disconnect", "truncate"):
            self._done = True
            return [Send(body[:half]), Cut(f"injected {kind}: body cut after {half} bytes")]
        if kind == "stall":
            return [Send(body[:half]), Pause(self.spec.params["ms"] / 1000), Send(body[half:])]
        if kind == "malformed-sse":
            return [Send(body[:-1])]
        if kind in REWRITERS:
            value = _loads(body)
            if value is not None and REWRITERS[kind](self.api, value, self._seen):
                self.applied = True
                return [Send(json.dumps(value).encode())]
            if value is not None and self.additions is not None and self.additions.body(value):
                self.applied = self.synthesized = True
                return [Send(json.dumps(value).encode())]
        return [Send(body)]


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
