"""What the LLM adapters take in (an exchange as plain bytes) and give out (facts). Sans-IO."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import TYPE_CHECKING, Any, Final, Protocol

from wirecap.llm.http import decode_content

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from wirecap.llm.http import Head
    from wirecap.llm.websocket import WsSession


@dataclasses.dataclass(frozen=True, slots=True)
class TimedChunks:
    """A body as timed chunks ``(ns since the exchange began, bytes)``, read afresh by every
    iteration: a body kept in a capture file is streamed from it, never held here.

    ``times`` are the chunks' arrival times, ``size`` their total length. A body that was read
    once and not kept (a large replayed answer) has no chunks to give, only its ``digest``.
    """

    read: Callable[[], Iterable[tuple[int, bytes]]]
    times: Sequence[int]
    size: int
    digest: str | None = None  # SHA-256 (hex) of the bytes, when known without reading them

    @classmethod
    def held(cls, chunks: Iterable[tuple[int, bytes]]) -> TimedChunks:
        """Chunks already in memory."""
        items = tuple(chunks)
        return cls(lambda: items, tuple(ns for ns, _ in items), sum(len(c) for _, c in items))

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return iter(self.read())

    def __len__(self) -> int:
        return len(self.times)

    def __bool__(self) -> bool:
        return bool(self.times)

    @property
    def first_ns(self) -> int | None:
        return self.times[0] if self.times else None

    @property
    def last_ns(self) -> int | None:
        return self.times[-1] if self.times else None

    def decoded(self, coding: str | None) -> TimedChunks:
        """This body with its content coding (``Content-Encoding``) undone: one chunk at the first
        chunk's time and an empty one at the last's, so that times still span the body. Raises
        :class:`~wirecap.llm.http.DecodeError` when the coding cannot be undone."""
        if not coding or not self.times:
            return self
        decoded = decode_content(self.join(), coding)
        first, last = self.times[0], self.times[-1]
        return TimedChunks.held(
            ((first, decoded),) if len(self.times) == 1 else ((first, decoded), (last, b""))
        )

    def join(self) -> bytes:
        """The whole body in one string (built in place: no list of chunks beside it)."""
        out = io.BytesIO()
        for _, chunk in self:
            out.write(chunk)
        return out.getvalue()

    def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes (fewer if the body is shorter), reading no further."""
        out = bytearray()
        for _, chunk in self:
            out += chunk[: limit - len(out)]
            if len(out) >= limit:
                break
        return bytes(out)

    def sha256(self) -> str:
        """SHA-256 (hex) of the body, streamed when not known already."""
        if self.digest is not None:
            return self.digest
        hasher = hashlib.sha256()
        for _, chunk in self:
            hasher.update(chunk)
        return hasher.hexdigest()


#: An analysis pass parses at most one SSE event, NDJSON line or WebSocket frame per EVENT_BYTES
#: bytes of the capture it reads, plus one per byte of its first EVENT_SLACK bytes (so that the
#: slack of many small segments adds up to no more than their size). Real streams store some 40
#: bytes an event; a few KB of repetitive events can decompress into millions of tiny ones, each a
#: few microseconds of Python to parse.
EVENT_BYTES: Final = 4
EVENT_SLACK: Final = 100_000


class EventAllowance:
    """The events an analysis pass over a capture may still parse: one allowance is shared by the
    exchanges of the pass, so that the work stays in proportion to the file's size."""

    __slots__ = ("left",)

    def __init__(self, events: int) -> None:
        self.left = events

    @classmethod
    def for_stored(cls, size: int) -> EventAllowance:
        """The allowance of ``size`` bytes of capture files."""
        return cls(size // EVENT_BYTES + min(size, EVENT_SLACK))

    @classmethod
    def for_files(cls, files: Iterable[Sized]) -> EventAllowance:
        """The allowance of these capture files together."""
        return cls.for_stored(sum(f.size for f in files))

    def spend(self, events: int = 1) -> bool:
        """Spend ``events``; False when the allowance no longer covers them."""
        self.left -= events
        return self.left >= 0

    @staticmethod
    def stopped(after: int, what: str) -> str:
        """Why analysis stopped after ``after`` ``what`` (events, messages)."""
        return (
            f"{what} after the first {after} are not analyzed: the capture's allowance (one event "
            f"per {EVENT_BYTES} bytes of file, plus one per byte of its first {EVENT_SLACK:,}) is "
            "spent"
        )


class Sized(Protocol):
    """Anything with a size in bytes (a capture file)."""

    @property
    def size(self) -> int: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeInput:
    """One exchange as the adapters see it: heads, the request body, and the response body as timed
    chunks, all with content codings already undone. ``response_chunks`` may be given as a tuple
    of ``(ns, bytes)``; it is kept as :class:`TimedChunks`."""

    method: str
    path: str  # request path (and query) as the client sent it
    request_head: Head | None
    request_body: bytes
    status: int | None
    response_head: Head | None
    response_chunks: TimedChunks
    complete: bool = True  # the exchange ended normally (outcome ok)
    #: A WebSocket session after a 101, decoded into messages (None for plain HTTP).
    session: WsSession | None = None
    #: What the response's events may cost (None: no bound, for bodies already in memory).
    allowance: EventAllowance | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.response_chunks, TimedChunks):
            object.__setattr__(self, "response_chunks", TimedChunks.held(self.response_chunks))

    @property
    def response_body(self) -> bytes:
        """The response body joined (a body streamed from a file is read into memory here)."""
        return self.response_chunks.join()

    @property
    def content_type(self) -> str:
        return self.response_head.content_type if self.response_head else ""

    def request_json(self) -> Any:
        """The request body as JSON, or None when it is not JSON."""
        if not self.request_body:
            return None
        try:
            return json.loads(self.request_body)
        except (ValueError, UnicodeDecodeError):
            return None


@dataclasses.dataclass(slots=True, kw_only=True)
class Usage:
    input: int | None = None
    output: int | None = None
    cached: int | None = None
    total: int | None = None  # as reported by the provider, when it reports one

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "cached": self.cached,
            "total": self.total,
        }


#: Tool calls one streamed response may assemble; more is no model's answer, only a cost.
MAX_STREAMED_CALLS: Final = 1024


@dataclasses.dataclass(slots=True, kw_only=True)
class ToolCall:
    name: str | None
    arguments: str  # the argument string exactly as the model produced it (JSON text, or not)
    id: str | None = None
    index: int | None = None
    #: Streamed pieces not yet in ``arguments``: joined once by :meth:`settle`, because adding
    #: each piece to the string would copy it whole every time (quadratic in a long stream).
    pieces: list[str] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def settle(self) -> ToolCall:
        """Move the streamed pieces into ``arguments``."""
        if self.pieces:
            self.arguments += "".join(self.pieces)
            self.pieces.clear()
        return self

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


#: Malformations of one exchange kept word for word; past this they are only counted, so that a
#: stream of millions of bad events costs a counter, not a message each.
KEPT_PROBLEMS: Final = 10


@dataclasses.dataclass(slots=True, kw_only=True)
class LLMFacts:
    """What an exchange says as an LLM call. Fields a provider does not give stay None."""

    api: str = (
        "http"  # openai.chat, openai.responses, anthropic.messages, ollama.chat, ollama.generate
    )
    streamed: bool = False
    model_requested: str | None = None
    model_returned: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    text: str = ""
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)
    ttft_ns: int | None = None
    last_chunk_ns: int | None = None
    tokens_per_second: float | None = None
    terminated: bool | None = (
        None  # a stream ended with its terminator ([DONE], message_stop, done)
    )
    malformed_sse: list[str] = dataclasses.field(default_factory=list)
    malformed_json: list[str] = dataclasses.field(default_factory=list)
    more_malformed_json: int = 0  # JSON problems past the first KEPT_PROBLEMS, counted only
    calls_left_out: int = 0  # streamed tool call pieces past MAX_STREAMED_CALLS calls
    #: Why the stream's events were not all parsed (the pass's EventAllowance ran out), or None.
    analysis_stopped: str | None = None
    api_error: dict[str, Any] | None = None  # an error object in the body or the stream
    events: int = 0  # SSE events or NDJSON lines
    #: Arrival times a stall is measured over, when not the response body's reads (a session's
    #: output events; empty: stalls do not apply).
    stall_times: tuple[int, ...] | None = None

    def json_problem(self, message: str) -> None:
        """Note a body, event or line that is not the JSON it should be."""
        if len(self.malformed_json) < KEPT_PROBLEMS:
            self.malformed_json.append(message)
        else:
            self.more_malformed_json += 1

    def room_for_call(self, calls: Mapping[Any, ToolCall], key: object) -> bool:
        """Whether a stream that has assembled ``calls`` may take a piece of the call at ``key``:
        one it has, or a new one while there are fewer than MAX_STREAMED_CALLS."""
        if key in calls or len(calls) < MAX_STREAMED_CALLS:
            return True
        self.calls_left_out += 1
        return False

    def finish(self) -> LLMFacts:
        """Settle streamed tool calls and derive tokens per second once everything is known."""
        for call in self.tool_calls:
            call.settle()
        if self.calls_left_out:
            self.json_problem(
                f"{self.calls_left_out} tool call piece(s) past the first {MAX_STREAMED_CALLS} "
                "calls are left out"
            )
        if (
            self.streamed
            and self.usage is not None
            and self.usage.output
            and self.ttft_ns is not None
            and self.last_chunk_ns is not None
            and self.last_chunk_ns > self.ttft_ns
        ):
            self.tokens_per_second = self.usage.output / ((self.last_chunk_ns - self.ttft_ns) / 1e9)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "streamed": self.streamed,
            "model_requested": self.model_requested,
            "model": self.model_returned,
            "usage": self.usage.to_json() if self.usage else None,
            "finish_reason": self.finish_reason,
            "text": self.text,
            "tool_calls": [t.to_json() for t in self.tool_calls],
            "ttft_ms": None if self.ttft_ns is None else round(self.ttft_ns / 1e6, 3),
            "tokens_per_second": None
            if self.tokens_per_second is None
            else round(self.tokens_per_second, 2),
            "terminated": self.terminated,
            "api_error": self.api_error,
        }


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
