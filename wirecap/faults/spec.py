"""Fault specs: ``KIND[,key=value...]`` parsed into a :class:`FaultSpec`. Sans-IO.

A spec names one kind of failure and, optionally, its parameters and the selectors that say which
requests get it. :data:`KINDS` is the one table of what each kind accepts; :func:`parse_fault`
checks a spec against it and raises :class:`FaultSpecError` with a one-line message for an unknown
kind or key and for a bad value.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


class FaultSpecError(ValueError):
    """A ``--fault`` spec that cannot be used; the message says why, in one line."""


Mode = Literal["answer", "silence", "body"]


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """What a fault kind does and which parameters it takes (name -> default)."""

    mode: Mode  # answer: an error answer instead of the real one; silence: no answer; body: a transform
    params: Mapping[str, float | int | None]
    doc: str


#: Every fault kind. ``answer`` kinds are answered without an upstream or a recording; ``body``
#: kinds transform a real answer (a recorded one, or the upstream's).
KINDS: Final[Mapping[str, Kind]] = {
    "429": Kind("answer", {"retry-after": 1}, "HTTP 429 with the provider's rate-limit error body"),
    "500": Kind("answer", {"retry-after": None}, "HTTP 500 with the provider's server error body"),
    "503": Kind(
        "answer", {"retry-after": None}, "HTTP 503 with the provider's overload error body"
    ),
    "timeout": Kind("silence", {}, "never answers (the client's timeout ends it)"),
    "disconnect": Kind("body", {"after-events": 1}, "closes the connection after N events"),
    "truncate": Kind("body", {}, "a stream that ends cleanly without its terminator"),
    "stall": Kind("body", {"ms": 6000, "after-events": 1}, "a gap of ms after N events"),
    "slow-ttft": Kind("body", {"ms": 11000}, "waits ms before the first body byte"),
    "malformed-sse": Kind("body", {"after-events": 1}, "an event that is not valid UTF-8 or JSON"),
    "bad-tool-args": Kind("body", {}, "tool call arguments that are not JSON"),
    "length": Kind("body", {}, "the finish reason of an answer cut by the token limit"),
}

#: Selector keys any kind takes: which requests get the fault.
SELECTORS: Final = ("every", "after", "rate", "seed", "route", "model")


def _count(name: str, low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise FaultSpecError(f"{name}={text}: not a whole number") from None
        if value < low:
            raise FaultSpecError(f"{name}={text}: must be at least {low}")
        return value

    return parse


def _seconds(name: str) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = float(text)
        except ValueError:
            raise FaultSpecError(f"{name}={text}: not a number of seconds") from None
        if not 0 <= value < 1e9:
            raise FaultSpecError(f"{name}={text}: must be 0 or more seconds")
        return int(value) if value.is_integer() else value

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(f"rate={text}: not a number") from None
    if not 0 < value <= 1:
        raise FaultSpecError(f"rate={text}: must be above 0 and at most 1")
    return value


def _text(name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            raise FaultSpecError(f"{name}= needs a value")
        return text

    return parse


#: How each key's value is read.
PARSERS: Final[Mapping[str, Callable[[str], Any]]] = {
    "retry-after": _seconds("retry-after"),
    "after-events": _count("after-events", 0),
    "ms": _count("ms", 0),
    "every": _count("every", 1),
    "after": _count("after", 0),
    "rate": _rate,
    "seed": _count("seed", 0),
    "route": _text("route"),
    "model": _text("model"),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One parsed ``--fault``: its kind, the kind's parameters (defaults filled in) and selectors."""

    kind: str
    text: str  # the spec as given
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    every: int = 1
    after: int = 0
    rate: float | None = None
    seed: int | None = None
    route: str | None = None
    model: str | None = None

    @property
    def mode(self) -> Mode:
        return KINDS[self.kind].mode

    def note(self, **extra: Any) -> dict[str, Any]:
        """The detail of the capture ``note`` (kind "fault") for an exchange that got this fault."""
        return {"kind": self.kind, "spec": self.text, **self.params, **extra}


def parse_fault(text: str) -> FaultSpec:
    """``"429,retry-after=2,every=3"`` -> a :class:`FaultSpec`; raises :class:`FaultSpecError`."""
    kind, *pairs = [part.strip() for part in text.strip().split(",")]
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r} (kinds: {', '.join(KINDS)})")
    allowed = {**KINDS[kind].params}
    params: dict[str, Any] = {k: v for k, v in allowed.items() if v is not None}
    selectors: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals:
            raise FaultSpecError(f"{pair!r} in fault {kind}: expected key=value")
        if key not in allowed and key not in SELECTORS:
            keys = ", ".join([*allowed, *SELECTORS])
            raise FaultSpecError(f"fault {kind} takes no key {key!r} (keys: {keys})")
        parsed = PARSERS[key](value.strip())
        (params if key in allowed else selectors)[key] = parsed
    if "seed" in selectors and "rate" not in selectors:
        raise FaultSpecError(f"fault {kind}: seed= goes with rate=")
    return FaultSpec(kind=kind, text=text.strip(), params=params, **selectors)


def parse_faults(texts: list[str] | tuple[str, ...]) -> tuple[FaultSpec, ...]:
    """Every spec of a repeated ``--fault``, in order (the first one that selects a request wins)."""
    return tuple(parse_fault(t) for t in texts)
