"""Redaction of secrets in records, before they are encoded into a capture. Sans-IO.

Credential headers keep their name (and the auth scheme, e.g. ``Bearer``) and lose their value to a
placeholder with a short fingerprint, ``[redacted sha256:1a2b3c4d]``, so two keys can be told apart
without either being stored. Body patterns (regular expressions over bytes) are replaced too, in
bodies, heads and URLs. The bytes forwarded are never touched: redaction runs on the records handed
to the capture writer, after the traffic has gone.

In a body, a placeholder takes exactly the length of the secret it replaces
(``[redacted sha256:1a2b3c4d****]``, shorter forms for short secrets), so the stored bytes keep
their framing: Content-Length and chunk sizes still describe them. A secret split across two socket
reads is not seen by a body pattern (each read is redacted on its own, to keep memory bounded);
headers are always whole.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import TYPE_CHECKING, Any, Final

from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    Record,
    Redaction,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_AUTH_SCHEME: Final = re.compile(rb"^([A-Za-z][A-Za-z0-9._~+/-]*)\s+(\S.*)$", re.DOTALL)
PLACEHOLDER_PREFIX: Final = b"[redacted sha256:"


def fingerprint(secret: bytes) -> str:
    """8 hex digits of SHA-256: enough to tell keys apart, too short to matter for a random key."""
    return hashlib.sha256(secret).hexdigest()[:8]


@functools.lru_cache(maxsize=1024)
def placeholder(secret: bytes) -> tuple[bytes, str]:
    """The placeholder and fingerprint for ``secret`` (cached: one API key is seen on every request)."""
    fp = fingerprint(secret)
    return PLACEHOLDER_PREFIX + fp.encode() + b"]", fp


def same_length_placeholder(secret: bytes) -> tuple[bytes, str]:
    """A placeholder exactly as long as ``secret``, for bytes whose framing counts them: the full
    form padded with ``*``, then ``[sha256:1a2b3c4d]`` padded, then only ``*`` for very short ones."""
    full, fp = placeholder(secret)
    size = len(secret)
    for form in (full, b"[sha256:" + fp.encode() + b"]"):
        if size >= len(form):
            return form[:-1] + b"*" * (size - len(form)) + b"]", fp
    return b"*" * size, fp


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """What to redact: credential header names (lower case) and body patterns."""

    headers: frozenset[bytes]
    patterns: tuple[re.Pattern[bytes], ...]
    #: A credential header line: its line break (CRLF or bare LF), name, colon and value.
    header_line: re.Pattern[bytes] = dataclasses.field(init=False, compare=False)
    #: All body patterns in one alternation: one scan tells whether any of them is present.
    any_pattern: re.Pattern[bytes] | None = dataclasses.field(init=False, compare=False)
    #: Each credential name after a line break, lower case: a head that holds none of them (found
    #: by plain substring search) needs no regular expression.
    line_starts: tuple[bytes, ...] = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "line_starts", tuple(b"\n" + h for h in sorted(self.headers)))
        names = b"|".join(re.escape(h) for h in sorted(self.headers)) or b"(?!)"
        # The value runs on over obsolete line foldings (a line break, then a space or a tab).
        line = re.compile(
            rb"(\r?\n)(" + names + rb")[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE
        )
        object.__setattr__(self, "header_line", line)
        combined = (
            re.compile(b"|".join(b"(?:" + p.pattern + b")" for p in self.patterns))
            if self.patterns and not any(p.pattern.startswith(b"(?") for p in self.patterns)
            else None
        )
        object.__setattr__(self, "any_pattern", combined)

    def may_match(self, data: bytes) -> bool:
        """Whether some body pattern matches in ``data`` (one scan instead of one per pattern,
        unless a pattern sets global flags such as ``(?i)``, which cannot join an alternation)."""
        if self.any_pattern is not None:
            return self.any_pattern.search(data) is not None
        return any(p.search(data) is not None for p in self.patterns)

    @classmethod
    def compile(cls, headers: Iterable[str], patterns: Iterable[str]) -> Rules:
        return cls(
            frozenset(h.lower().encode() for h in headers),
            tuple(re.compile(p.encode()) for p in patterns),
        )

    def merged(self, headers: Iterable[str], patterns: Iterable[str]) -> Rules:
        extra = Rules.compile(headers, patterns)
        return Rules(self.headers | extra.headers, self.patterns + extra.patterns)

    def describe(self) -> dict[str, Any]:
        return {
            "headers": sorted(h.decode() for h in self.headers),
            "body_patterns": [p.pattern.decode() for p in self.patterns],
        }


def redact_head(head: bytes, rules: Rules) -> tuple[bytes, list[Redaction]]:
    """Replace credential header values and body-pattern matches in a serialized head."""
    found: list[Redaction] = []

    def replace_line(match: re.Match[bytes]) -> bytes:
        redacted = _redacted_line(match.group(2), match.group(3))
        if redacted is None:
            return match.group()
        line, redaction = redacted
        found.append(redaction)
        return match.group(1) + line

    lower = head.lower()
    if any(start in lower for start in rules.line_starts):
        head = rules.header_line.sub(replace_line, head)
    out, more = redact_patterns(head, rules, "head", same_length=False)
    return out, found + more


@functools.lru_cache(maxsize=1024)
def _redacted_line(name: bytes, value: bytes) -> tuple[bytes, Redaction] | None:
    """A credential header line with its value replaced (its auth scheme kept), and the redaction;
    None for an empty or already redacted value. Cached: the same key comes with every request."""
    value = value.strip()
    if not value or value.startswith(PLACEHOLDER_PREFIX):
        return None
    lower_name = name.lower()
    scheme = b""
    if lower_name in (b"authorization", b"proxy-authorization"):
        auth = _AUTH_SCHEME.match(value)
        if auth:
            scheme, value = auth.group(1) + b" ", auth.group(2)
            if value.startswith(PLACEHOLDER_PREFIX):  # "Bearer [redacted ...]"
                return None
    replacement, fp = placeholder(value)
    redaction = Redaction(where="head", name=lower_name.decode("latin-1"), fp=fp)
    return name + b": " + scheme + replacement, redaction


def redact_patterns(
    data: bytes, rules: Rules, where: str, *, same_length: bool = True
) -> tuple[bytes, list[Redaction]]:
    """Replace every match of the body patterns in ``data`` (``same_length``: keep its size)."""
    found: list[Redaction] = []
    if not rules.may_match(data):
        return data, found
    make = same_length_placeholder if same_length else placeholder
    for pattern in rules.patterns:
        if pattern.search(data) is None:
            continue

        def replace(match: re.Match[bytes], pattern: re.Pattern[bytes] = pattern) -> bytes:
            replacement, fp = make(match.group(0))
            found.append(Redaction(where=where, name=pattern.pattern.decode("latin-1"), fp=fp))
            return replacement

        data = pattern.sub(replace, data)
    return data, found


def redact_text(text: str | None, rules: Rules) -> tuple[str | None, list[Redaction]]:
    """``text`` (a target or URL) with body-pattern matches replaced, and the redactions."""
    if text is None:
        return None, []
    raw = text.encode("utf-8", "surrogateescape")
    out, found = redact_patterns(raw, rules, "target", same_length=False)
    return (out.decode("utf-8", "surrogateescape") if found else text), found


class Redactor:
    """Returns each record with its secrets replaced; the redactions it already listed are kept.

    Route-specific rules apply to the exchanges of that route, learned from each exchange's request
    record and forgotten at its end record. Not thread-safe: one caller at a time.
    """

    def __init__(self, rules: Rules, route_rules: Mapping[str, Rules] | None = None) -> None:
        self.rules = rules
        self._route_rules = dict(route_rules or {})
        self._exchange_rules: dict[str, Rules] = {}

    def describe(self) -> dict[str, Any]:
        """The redactor as JSON-able data (:meth:`from_description` makes it again)."""
        return {
            "rules": self.rules.describe(),
            "routes": {prefix: rules.describe() for prefix, rules in self._route_rules.items()},
        }

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> Redactor:
        def rules(d: Mapping[str, Any]) -> Rules:
            return Rules.compile(d["headers"], d["body_patterns"])

        routes = {prefix: rules(d) for prefix, d in description["routes"].items()}
        return cls(rules(description["rules"]), routes)

    def __call__(self, record: Record) -> Record:
        if isinstance(record, BodyChunk):
            rules = self._exchange_rules.get(record.x, self.rules)
            data, found = redact_patterns(record.data, rules, "body")
            return _with(record, found, data=data) if found else record
        if isinstance(record, RequestReceived):
            rules = self.rules
            if record.route in self._route_rules:
                rules = self._exchange_rules[record.x] = self._route_rules[record.route]
            head, found = redact_head(record.head, rules)
            changes: dict[str, Any] = {"head": head}
            urls = (record.target, record.proxy_url, record.upstream_url or "")
            if rules.may_match("\n".join(urls).encode("utf-8", "surrogateescape")):
                for name in ("target", "proxy_url", "upstream_url"):
                    changes[name], more = redact_text(getattr(record, name), rules)
                    found += more
            return _with(record, found, **changes) if found else record
        if isinstance(record, UpstreamRequest | ResponseHead):
            head, found = redact_head(record.head, self._exchange_rules.get(record.x, self.rules))
            return _with(record, found, head=head) if found else record
        if isinstance(record, ExchangeEnd):
            self._exchange_rules.pop(record.x, None)
        return record


def _with(record: Any, found: list[Redaction], **changes: Any) -> Any:
    return dataclasses.replace(record, redactions=(*record.redactions, *found), **changes)
