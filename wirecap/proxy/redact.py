"""Redaction of secrets in records, as they are handed to the capture writer. Sans-IO.

Credential headers keep their name (and the auth scheme, e.g. ``Bearer``) and lose their value to a
placeholder with a short fingerprint, ``[redacted sha256:1a2b3c4d]``, so two keys can be told apart
without either being stored. Body patterns (regular expressions over bytes) are replaced the same way
in bodies, heads and targets. The bytes forwarded are never touched: redaction runs on the records
handed to the capture writer, after the traffic has gone.

A secret split across two socket reads of a body is not seen by a body pattern (each read is redacted
on its own, to keep memory bounded); headers are always whole.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import TYPE_CHECKING, Any, Final

from wirecap.capture import packing
from wirecap.capture.packing import pack_record, unpack_record
from wirecap.capture.records import (
    BodyChunk,
    Record,
    Redaction,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from wirecap.capture.packing import PackedRecord

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


_GLOBAL_FLAGS: Final = re.compile(rb"^\(\?([aiLmsux]+)\)")


def _scoped(pattern: bytes) -> bytes:
    """``pattern`` as a group that can join an alternation: leading global flags such as ``(?i)``
    (allowed only at the start of a whole expression) become the group's own."""
    flags = _GLOBAL_FLAGS.match(pattern)
    if flags is None:
        return b"(?:" + pattern + b")"
    return b"(?" + flags.group(1) + b":" + pattern[flags.end() :] + b")"


def literal_prefix(pattern: re.Pattern[bytes]) -> bytes:
    """The literal bytes every match of ``pattern`` starts with (b"" if none, or if unsure)."""
    if pattern.flags & re.IGNORECASE:
        return b""
    try:
        from re import _parser  # type: ignore[attr-defined]  # the stdlib's own parser

        items = list(_parser.parse(pattern.pattern.decode("latin-1")))
    except Exception:  # a private module: any surprise means no prefilter
        return b""
    prefix = bytearray()
    for op, value in items:
        if op is not _parser.LITERAL:
            break
        prefix.append(value)
    return bytes(prefix)


#: Bytes that turn up everywhere in JSON and text bodies: a poor first test for a pattern's presence.
_COMMON_BYTES: Final = frozenset(b" \"':,.{}[]\n\\_0123456789") | frozenset(
    range(ord("a"), ord("z") + 1)
)


def rarest_byte(prefix: bytes) -> int:
    """The byte of ``prefix`` least likely to occur in a body (punctuation and capitals before
    lower case and JSON syntax): absent from the data, it rules the pattern out at memchr speed.
    An int, because ``int in data`` is a plain memchr while ``bytes in data`` first tries the
    needle as an int and formats the TypeError it raises (0.04 against 0.23 us)."""
    rare = [b for b in prefix if b not in _COMMON_BYTES]
    return rare[-1] if rare else prefix[-1]


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    headers: frozenset[bytes]
    patterns: tuple[re.Pattern[bytes], ...]
    header_line: re.Pattern[bytes] = dataclasses.field(init=False, compare=False)
    #: All body patterns in one alternation: one scan tells whether any of them is present.
    any_pattern: re.Pattern[bytes] | None = dataclasses.field(init=False, compare=False)
    #: One byte of the literal text each body pattern's matches start with, searched first (see
    #: :func:`rarest_byte`); empty when some pattern has no such text.
    rare_bytes: tuple[int, ...] = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        names = b"|".join(re.escape(h) for h in sorted(self.headers)) or b"(?!)"
        line = re.compile(rb"\r\n(" + names + rb")[ \t]*:([^\r\n]*)", re.IGNORECASE)
        object.__setattr__(self, "header_line", line)
        combined = (
            re.compile(b"|".join(_scoped(p.pattern) for p in self.patterns))
            if self.patterns
            else None
        )
        object.__setattr__(self, "any_pattern", combined)
        prefixes = tuple(literal_prefix(p) for p in self.patterns)
        rare = tuple(rarest_byte(prefix) for prefix in prefixes) if all(prefixes) else ()
        object.__setattr__(self, "rare_bytes", rare)

    def may_match(self, data: bytes | bytearray) -> bool:
        """Whether some body pattern matches in ``data``. When every pattern starts with literal
        text (the default ``sk-``), one byte of each prefix is looked for first (memchr: 0.02 ms
        per MiB; ``-`` never occurs in base64, the usual big body), and the expression runs only
        where one is present. (Not the whole prefix with ``bytes.find``: at ~0.85 ns a byte it is
        slower than the expression itself, which scans for its literal prefix at ~0.5 ns. A loop,
        not ``any()``: this runs for every record.)"""
        pattern = self.any_pattern
        if pattern is None:
            return False
        rare_bytes = self.rare_bytes
        if rare_bytes:
            for rare in rare_bytes:
                if rare in data:
                    break
            else:
                return False
        return pattern.search(data) is not None

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
    """Replace credential header values (and pattern matches) in a serialized head.

    One regular expression finds the credential header lines (heads are redacted for every request,
    so this stays off any per-line Python loop).
    """
    found: list[Redaction] = []

    def replace(match: re.Match[bytes]) -> bytes:
        name = match.group(1)
        redacted = _redacted_value(name.lower(), match.group(2).strip())
        if redacted is None:
            return match.group(0)
        value, redaction = redacted
        found.append(redaction)
        return b"\r\n" + name + b": " + value

    line = rules.header_line
    out = line.sub(replace, head) if rules.headers and line.search(head) is not None else head
    out, more = redact_patterns(out, rules, "head")
    return out, found + more if more else found


@functools.lru_cache(maxsize=1024)
def _redacted_value(lower_name: bytes, value: bytes) -> tuple[bytes, Redaction] | None:
    """A credential header's stored value (its auth scheme kept) and the redaction it makes; None
    for an empty or already redacted value. Cached: the same key comes with every request."""
    if not value or value.startswith(PLACEHOLDER_PREFIX):
        return None
    scheme = b""
    if lower_name in (b"authorization", b"proxy-authorization"):
        auth = _AUTH_SCHEME.match(value)
        if auth:
            scheme, value = auth.group(1) + b" ", auth.group(2)
    replacement, fp = placeholder(value)
    redaction = Redaction(where="head", name=lower_name.decode("latin-1"), fingerprint=fp)
    return scheme + replacement, redaction


def redact_patterns(data: bytes, rules: Rules, where: str) -> tuple[bytes, list[Redaction]]:
    """Replace every match of the body patterns in ``data``."""
    found: list[Redaction] = []
    if not rules.may_match(data):
        return data, found
    for pattern in rules.patterns:
        if pattern.search(data) is None:
            continue

        def replace(match: re.Match[bytes], pattern: re.Pattern[bytes] = pattern) -> bytes:
            replacement, fp = placeholder(match.group(0))
            found.append(
                Redaction(where=where, name=pattern.pattern.decode("latin-1"), fingerprint=fp)
            )
            return replacement

        data = pattern.sub(replace, data)
    return data, found


def redact_text(text: str | None, rules: Rules) -> str | None:
    if text is None:
        return None
    out, found = redact_patterns(text.encode("utf-8", "surrogateescape"), rules, "target")
    return out.decode("utf-8", "surrogateescape") if found else text


class Redactor:
    """The writer's ``prepare`` hook: returns each record with its secrets replaced.

    Route-specific rules apply to the exchanges of that route; the route is learned from each
    exchange's first record. Called from one thread at a time: the capture writer process's (it is
    pickled there), or the event loop that encodes for the in-process writer.
    """

    def __init__(self, rules: Rules, route_rules: Mapping[str, Rules] | None = None) -> None:
        self.rules = rules
        self._route_rules = dict(route_rules or {})
        self._exchange_rules: dict[str, Rules] = {}

    def _rules_for(self, x: str) -> Rules:
        return self._exchange_rules.get(x, self.rules) if self._exchange_rules else self.rules

    def __call__(self, record: Record) -> Record:
        """``record`` with its secrets replaced: :meth:`redact_packed`'s work on the record's
        packed form, and, when a body pattern matches a body or a URL, the pattern replacements
        that only the record path makes."""
        if type(record) not in packing.RECORD_FIELDS:
            return record  # a segment header: nothing in it is traffic
        done = self.redact_packed(pack_record(record))
        if done is None:
            return self._redact_matches(record)
        packed, found = done
        if not found:
            return record
        # Only a head was redacted: the record is a request, upstream or response head.
        redacted = unpack_record(packed)
        assert isinstance(redacted, RequestReceived | UpstreamRequest | ResponseHead)
        assert isinstance(record, RequestReceived | UpstreamRequest | ResponseHead)
        return dataclasses.replace(redacted, redactions=(*record.redactions, *found))

    def _redact_matches(self, record: Record) -> Record:
        """A body chunk or a request whose body or URLs a body pattern matches (rare)."""
        if isinstance(record, BodyChunk):
            data, found = redact_patterns(bytes(record.data), self._rules_for(record.x), "body")
            return (
                dataclasses.replace(record, data=data, redactions=tuple(found)) if found else record
            )
        assert isinstance(record, RequestReceived)  # redact_packed handles every other record
        rules = self._rules_for(record.x)  # the route's, kept by redact_packed
        head, found = redact_head(record.head, rules)
        return dataclasses.replace(
            record,
            head=head,
            target=redact_text(record.target, rules) or "",
            proxy_url=redact_text(record.proxy_url, rules) or "",
            upstream_url=redact_text(record.upstream_url, rules),
            redactions=(*record.redactions, *found),
        )

    def redact_packed(
        self, packed: PackedRecord
    ) -> tuple[PackedRecord, tuple[Redaction, ...]] | None:
        """The writer process's fast lane (see :mod:`wirecap.capture.packing`): ``packed`` with
        its heads redacted, and the redactions made, without building the record. None when a body
        pattern matches a body or a URL: :meth:`__call__` then redacts the unpacked record (it
        keeps the same per-exchange state, so either may see any record)."""
        code, values = packed
        if code == packing.BODY:
            return None if self._rules_for(values[0]).may_match(values[3]) else (packed, ())
        if code == packing.REQUEST:
            x, _, _, target, head, _, proxy_url, route, upstream_url = values
            rules = self._route_rules.get(route or "", self.rules)
            if rules is not self.rules:
                self._exchange_rules[x] = rules
            if rules.may_match(
                f"{target}\n{proxy_url}\n{upstream_url}".encode("utf-8", "surrogateescape")
            ):
                return None
            new_head, found = redact_head(head, rules)
            if found:
                packed = (code, (*values[:4], new_head, *values[5:]))
            return packed, tuple(found)
        if code == packing.UPSTREAM or code == packing.RESPONSE:
            at = 2 if code == packing.UPSTREAM else 3
            new_head, found = redact_head(values[at], self._rules_for(values[0]))
            if found:
                packed = (code, (*values[:at], new_head, *values[at + 1 :]))
            return packed, tuple(found)
        if code == packing.END and self._exchange_rules:
            self._exchange_rules.pop(values[0], None)
        return packed, ()
