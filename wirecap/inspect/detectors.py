"""Issue detectors: one small function per code, each looking at one analyzed exchange.

A detector returns the one-line messages of what it found (usually zero or one); :func:`detect` turns
them into :class:`Finding` objects with the detector's code and severity. ``duplicate-request`` needs
to see several exchanges and is the stateful :class:`DuplicateTracker`. Codes are stable: tools and CI
configurations match on them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final, Literal

from wirecap.inspect.words import plural
from wirecap.llm.streams import ENDS_INSIDE_AN_EVENT

if TYPE_CHECKING:
    from wirecap.inspect.analysis import Analyzed

Severity = Literal["info", "warning", "error"]
SEVERITY_RANK: Final[dict[str, int]] = {"info": 0, "warning": 1, "error": 2}


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    id: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "id": self.id,
            "message": self.message,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    slow_ttft_s: float = 10.0
    stall_s: float = 5.0
    duplicate_window_s: float = 30.0
    duplicate_count: int = 3  # this many identical requests within the window is a retry storm


Detector = Callable[["Analyzed", Thresholds], Iterable[str]]
_REGISTRY: dict[str, tuple[Severity, Detector]] = {}
#: Detectors that judge a stream by all of its events: they pass over an exchange whose analysis
#: stopped early (``analysis-stopped`` says so instead).
_WHOLE_STREAM: set[str] = set()


def detector(
    code: str, severity: Severity, *, whole_stream: bool = False
) -> Callable[[Detector], Detector]:
    def register(fn: Detector) -> Detector:
        _REGISTRY[code] = (severity, fn)
        if whole_stream:
            _WHOLE_STREAM.add(code)
        return fn

    return register


LLM_APIS: Final = (
    "openai.chat",
    "openai.responses",
    "anthropic.messages",
    "ollama.chat",
    "ollama.generate",
)


def _is_llm_success(a: Analyzed) -> bool:
    return a.facts.api in LLM_APIS and a.status is not None and 200 <= a.status < 300


@detector("http-error", "error")
def http_error(a: Analyzed, t: Thresholds) -> Iterable[str]:
    status = a.status
    injected = a.by_proxy and bool(a.exchange.notes_of("fault"))  # the proxy's fault stands in
    if status is None or (a.by_proxy and not injected) or status == 429 or status < 400:
        return
    error = a.facts.api_error or {}
    detail = error.get("message") or error.get("type") or ""
    source = "injected by the proxy" if injected else "from the upstream"
    yield f"HTTP {status} {source}" + (f": {str(detail)[:200]}" if detail else "")


@detector("rate-limited", "warning")
def rate_limited(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.status != 429:
        return
    retry = a.response_head.get("retry-after") if a.response_head else None
    yield "HTTP 429 rate limited" + (f", retry-after {retry}" if retry else "")


@detector("upstream-failure", "error")
def upstream_failure(a: Analyzed, t: Thresholds) -> Iterable[str]:
    end = a.exchange.end
    if a.by_proxy and a.status in (502, 504):
        yield f"proxy answered {a.status}: {end.error if end and end.error else 'upstream unavailable'}"
    elif a.outcome in ("upstream_error", "timeout") and not a.by_proxy:
        yield a.error or (
            "upstream timed out" if a.outcome == "timeout" else "upstream connection lost"
        )


@detector("truncated-stream", "error")
def truncated_stream(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.outcome == "client_abort" or a.by_proxy:
        return
    if a.facts.streamed and a.facts.terminated is False and a.status is not None and a.status < 400:
        marker = {
            "openai.chat": "data: [DONE]",
            "openai.responses": "response.completed",
            "anthropic.messages": "message_stop",
            "ollama.chat": '"done": true',
            "ollama.generate": '"done": true',
            "openai.realtime": "a Close frame and a response.done for every response",
            "websocket": "a Close frame",
        }.get(a.facts.api, "its terminator")
        yield f"stream ended without {marker} after {plural(a.facts.events, 'event')}"
    elif (
        a.outcome in ("upstream_error", "timeout", "incomplete") and a.exchange.response is not None
    ):
        yield f"response body cut off ({a.outcome})"


@detector("malformed-sse", "error")
def malformed_sse(a: Analyzed, t: Thresholds) -> Iterable[str]:
    """Bytes that are not SSE, whatever the outcome (a client may hang up because of them); a
    stream that ends inside an event only when nothing cut it."""
    problems = a.facts.malformed_sse
    if a.outcome != "ok":
        problems = [p for p in problems if p != ENDS_INSIDE_AN_EVENT]
    if problems:
        yield "; ".join(problems)[:300]


@detector("malformed-json", "error")
def malformed_json(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if not a.facts.malformed_json or a.outcome != "ok":
        return
    if a.facts.api == "http" and not (
        a.response_head and a.response_head.content_type.endswith("json")
    ):
        return
    problems = a.facts.malformed_json
    more = len(problems) - 3 + a.facts.more_malformed_json
    yield "; ".join(problems[:3])[:300] + (f" (and {more} more)" if more > 0 else "")


@detector("invalid-tool-arguments", "error", whole_stream=True)
def invalid_tool_arguments(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.outcome != "ok":
        return
    for call in a.facts.tool_calls:
        try:
            json.loads(call.arguments)
        except ValueError as exc:
            yield f"tool call {call.name or call.id or '?'}: arguments are not JSON ({exc}): {call.arguments[:80]!r}"


@detector("output-truncated", "warning")
def output_truncated(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.facts.finish_reason in ("length", "max_tokens", "max_output_tokens"):
        yield f"output cut by the token limit (finish reason {a.facts.finish_reason})"


@detector("content-filtered", "warning")
def content_filtered(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.facts.finish_reason in ("content_filter", "refusal"):
        yield f"output stopped by the provider's filter (finish reason {a.facts.finish_reason})"


@detector("empty-completion", "warning", whole_stream=True)
def empty_completion(a: Analyzed, t: Thresholds) -> Iterable[str]:
    quiet = not a.facts.text.strip() and not a.facts.tool_calls
    ok = _is_llm_success(a) and a.outcome == "ok" and a.facts.api_error is None
    if quiet and ok and a.facts.terminated is not False:  # a cut stream is truncated-stream
        yield "the model returned no text and no tool call"


@detector("analysis-stopped", "info")
def analysis_stopped(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.facts.analysis_stopped:
        yield a.facts.analysis_stopped


@detector("usage-missing", "info", whole_stream=True)
def usage_missing(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if _is_llm_success(a) and a.outcome == "ok" and a.facts.usage is None:
        hint = (
            " (request stream_options.include_usage)"
            if a.facts.api == "openai.chat" and a.facts.streamed
            else ""
        )
        yield f"no token usage in the response{hint}"


@detector("usage-inconsistent", "warning", whole_stream=True)
def usage_inconsistent(a: Analyzed, t: Thresholds) -> Iterable[str]:
    u = a.facts.usage
    if u is None:
        return
    if (
        u.total is not None
        and u.input is not None
        and u.output is not None
        and u.total != u.input + u.output
    ):
        yield f"total tokens {u.total} != input {u.input} + output {u.output}"
    for name, value in (("input", u.input), ("output", u.output), ("cached", u.cached)):
        if value is not None and value < 0:
            yield f"negative {name} token count {value}"
    if (
        u.cached is not None
        and u.input is not None
        and u.cached > u.input
        and a.facts.api.startswith("openai")
    ):
        yield f"cached tokens {u.cached} exceed input tokens {u.input}"


#: A snapshot's suffix: a date (``-2024-07-18``, ``-20240307``), OpenAI's older month-day
#: (``gpt-4-0613``, ``gpt-3.5-turbo-0125``), or ``latest``.
_DATE_SUFFIX: Final = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-[01]\d[0-3]\d|-latest|:latest)$")


def model_family(model: str) -> str:
    """``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``; ``gpt-4-0613`` -> ``gpt-4``;
    ``openai/gpt-4o`` -> ``gpt-4o``; ``llama3:latest`` -> ``llama3``."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    while (stripped := _DATE_SUFFIX.sub("", name)) != name:
        name = stripped
    return name


@detector("model-mismatch", "warning")
def model_mismatch(a: Analyzed, t: Thresholds) -> Iterable[str]:
    asked, got = a.facts.model_requested, a.facts.model_returned
    if asked and got and model_family(asked) != model_family(got):
        yield f"asked for {asked}, got {got}"


@detector("slow-ttft", "warning")
def slow_ttft(a: Analyzed, t: Thresholds) -> Iterable[str]:
    ttft = a.facts.ttft_ns
    if ttft is not None and ttft / 1e9 > t.slow_ttft_s:
        yield f"time to first token {ttft / 1e9:.1f}s (threshold {t.slow_ttft_s:g}s)"


@detector("stream-stall", "warning")
def stream_stall(a: Analyzed, t: Thresholds) -> Iterable[str]:
    stall_times = a.facts.stall_times
    times = a.response_payload.times if stall_times is None else stall_times
    if len(times) < 2:
        return
    gap, after = max((b - p, i) for i, (p, b) in enumerate(itertools.pairwise(times)))
    if gap / 1e9 > t.stall_s:
        yield f"stream stalled {gap / 1e9:.1f}s after chunk {after + 1} (threshold {t.stall_s:g}s)"


@detector("session-error", "error")
def session_error(a: Analyzed, t: Thresholds) -> Iterable[str]:
    """An error event (or a failed response) inside a WebSocket session that answered 101."""
    error = a.facts.api_error
    if a.session is not None and error:
        detail = error.get("message") or error.get("type") or error.get("code") or ""
        yield f"error in the session: {str(detail)[:200]}"


@detector("client-abort", "info")
def client_abort(a: Analyzed, t: Thresholds) -> Iterable[str]:
    if a.outcome == "client_abort":
        yield f"client went away: {a.error or 'connection closed'}"


@dataclasses.dataclass(frozen=True, slots=True)
class SecretShape:
    """A credential shape, found fast in large bodies: a shape starting with a case-sensitive
    literal is tried only where :data:`_STARTS` (one pass for all of them) found one; a
    ``folded`` shape is matched against the lower-cased bytes, and only when its ``needle`` is
    there. Word boundaries are checked on each match (a leading ``\\b`` or ``(?i)`` makes ``re``
    try every byte: a 200 MiB body took seconds)."""

    label: str
    pattern: re.Pattern[bytes]
    bounded_start: bool = False  # a word boundary before the match (\b)
    bounded_end: bool = False  # a word boundary after it
    folded: bool = False
    needle: bytes = b""  # in every match of a folded shape

    def first(
        self, data: bytes, lowered: bytes, starts: list[int], *, at_start: bool, at_end: bool
    ) -> re.Match[bytes] | None:
        """The first match in ``data`` (``lowered``: the same lower-cased; ``starts``: where
        :data:`_STARTS` matched). ``data`` is a window of a body: a match touching an edge that
        is not the body's own is left to the window that overlaps it there."""
        if self.folded:
            matches: Iterable[re.Match[bytes] | None] = (
                self.pattern.finditer(lowered) if self.needle in lowered else ()
            )
        else:
            matches = (self.pattern.match(data, pos) for pos in starts)
        for match in matches:
            if match is None:
                continue
            start, end = match.span()
            if (start == 0 and not at_start) or (end == len(data) and not at_end):
                continue
            if self.bounded_start and not _boundary(data, start):
                continue
            if self.bounded_end and not _boundary(data, end):
                continue
            return match
        return None


def _word(data: bytes, i: int) -> bool:
    return 0 <= i < len(data) and (data[i : i + 1].isalnum() or data[i] == 0x5F)


def _boundary(data: bytes, i: int) -> bool:
    return _word(data, i - 1) != _word(data, i)


#: Credential shapes that should never be in a capture (placeholders start with "[redacted").
SECRET_PATTERNS: Final = (
    SecretShape("OpenAI key", re.compile(rb"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}")),
    SecretShape("Anthropic key", re.compile(rb"sk-ant-[A-Za-z0-9_\-]{20,}")),
    SecretShape(
        "bearer token",
        re.compile(rb"bearer\s+(?!\[redacted)[a-z0-9._~+/\-]{16,}=*"),
        bounded_start=True,
        folded=True,
        needle=b"bearer",
    ),
    SecretShape("AWS access key", re.compile(rb"AKIA[0-9A-Z]{16}"), True, True),
    SecretShape("GitHub token", re.compile(rb"gh[pousr]_[A-Za-z0-9]{36,}"), True, True),
    SecretShape("Google API key", re.compile(rb"AIza[0-9A-Za-z_\-]{35}"), True, True),
)
#: Where a shape that is not folded can start: the literal each of them begins with.
_STARTS: Final = re.compile(rb"sk-|AKIA|gh[pousr]_|AIza")
_CREDENTIAL_HEADER: Final = re.compile(
    rb"(?im)^(authorization|proxy-authorization|x-api-key|api-key|cookie|set-cookie):[ \t]*(?!\[redacted)(?!Bearer \[redacted)(\S.*)$"
)
#: Bytes each window of a body scan shares with the one before, so a secret split between two
#: reads is still seen whole: far more than the longest credential shape needs.
_SCAN_OVERLAP: Final = 4096


def find_secret(pieces: Iterable[bytes]) -> tuple[str, bytes] | None:
    """The first credential shape (in :data:`SECRET_PATTERNS` order) found anywhere in the bytes of
    ``pieces``, with what matched; the pieces stream through with a small overlap, so a body
    of any size is scanned in the memory of one read."""
    found: dict[int, bytes] = {}
    pending = list(enumerate(SECRET_PATTERNS))
    tail = b""
    at_start = True
    for piece in itertools.chain(pieces, [None]):
        window = tail if piece is None else tail + piece
        lowered = window.lower()
        starts = [m.start() for m in _STARTS.finditer(window)]
        for i, shape in list(pending):
            match = shape.first(window, lowered, starts, at_start=at_start, at_end=piece is None)
            if match is not None:
                found[i] = window[match.start() : match.end()]
                pending.remove((i, shape))
        best_left = min((i for i, _ in pending), default=len(SECRET_PATTERNS))
        if piece is None or (found and min(found) < best_left):
            break
        tail = window[-_SCAN_OVERLAP:]
        at_start = at_start and len(tail) == len(window)
    if not found:
        return None
    first = min(found)
    return SECRET_PATTERNS[first].label, found[first]


@detector("secret-in-capture", "error")
def secret_in_capture(a: Analyzed, t: Thresholds) -> Iterable[str]:
    ex = a.exchange
    places: list[tuple[str, bytes | Iterable[bytes]]] = [
        ("request head", ex.request.head if ex.request else b""),
        ("upstream head", ex.upstream.head if ex.upstream else b""),
        ("request body", (c.data for c in ex.iter_payload("req"))),
        ("response head", b"".join(h.head for h in ex.responses)),
        ("response body", (c.data for c in ex.iter_payload("res"))),
    ]
    if a.session is not None:  # client frames are masked: look in the decoded messages
        places.append(("session messages", [m.data for m in a.session.messages]))
    for where, data in places:
        if isinstance(data, bytes):
            header = _CREDENTIAL_HEADER.search(data)
            if header is not None:
                yield f"{header.group(1).decode()} header stored unredacted in the {where}"
                continue
            data = [data]
        found = find_secret(data)
        if found is not None:
            yield f"{found[0]} stored unredacted in the {where} ({_mask(found[1])})"


def _mask(secret: bytes) -> str:
    text = secret.decode("latin-1")
    return text[:6] + "..." + f"({len(text)} chars)"


CODES: Final = (*_REGISTRY, "duplicate-request")


def detect(a: Analyzed, thresholds: Thresholds) -> list[Finding]:
    """Every per-exchange finding for ``a``, in registry order."""
    findings = []
    for code, (severity, fn) in _REGISTRY.items():
        if a.facts.analysis_stopped and code in _WHOLE_STREAM:
            continue
        for message in fn(a, thresholds):
            level: Severity = severity
            if code == "http-error" and a.status is not None and a.status < 500:
                level = "warning"  # an unexpected 4xx is the client's to fix; a 5xx is an outage
            findings.append(Finding(code, level, a.id, message))
    return findings


def request_key(a: Analyzed) -> bytes | None:
    """What makes two requests the same: method, target and body (None: no body, never a
    duplicate)."""
    ex = a.exchange
    if not a.request_body:
        return None
    return hashlib.sha256(f"{ex.method} {ex.target}\n".encode() + a.request_body).digest()


class DuplicateTracker:
    """Spots the same request body sent again and again within a short window (retry storms).

    Keeps only the requests inside the window, so memory is bounded by the request rate.
    """

    def __init__(self, thresholds: Thresholds) -> None:
        self.window_ns = int(thresholds.duplicate_window_s * 1e9)
        self.count = thresholds.duplicate_count
        self._seen: dict[bytes, collections.deque[int]] = {}
        self._order: collections.deque[tuple[int, bytes]] = collections.deque()

    def observe(self, a: Analyzed) -> Finding | None:
        return self.observe_request(a.id, a.exchange.wall_ns, request_key(a))

    def observe_request(self, x: str, wall_ns: int | None, key: bytes | None) -> Finding | None:
        """Note exchange ``x``'s request (its :func:`request_key`, sent at ``wall_ns``); a finding
        when it makes a retry storm."""
        if wall_ns is None or key is None:
            return None
        now = wall_ns
        while self._order and self._order[0][0] < now - self.window_ns:
            _at, old = self._order.popleft()
            times = self._seen.get(old)
            if times:
                times.popleft()
                if not times:
                    del self._seen[old]
        times = self._seen.setdefault(key, collections.deque())
        times.append(now)
        self._order.append((now, key))
        if len(times) >= self.count:
            span = (times[-1] - times[0]) / 1e9
            return Finding(
                "duplicate-request",
                "warning",
                x,
                f"same request sent {len(times)} times within {span:.1f}s (retry storm?)",
            )
        return None


def detect_all(analyzed: Iterable[Analyzed], thresholds: Thresholds) -> Iterator[Finding]:
    """Findings for a stream of exchanges, in exchange order."""
    duplicates = DuplicateTracker(thresholds)
    for a in analyzed:
        yield from detect(a, thresholds)
        dup = duplicates.observe(a)
        if dup is not None:
            yield dup
