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
import itertools
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
from wirecap.capture.ring import RingChunk

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from wirecap.capture.packing import PackedRecord, Redacted

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


def context_free(pattern: re.Pattern[bytes]) -> bool:
    """Whether ``pattern`` has no anchor (``^``, ``$``, ``\\A``, ``\\Z``), word boundary (``\\b``,
    ``\\B``) or lookaround: then whether it matches at a position depends only on the bytes it
    consumes, and a match in some bytes is a match in any text that holds them (False if unsure)."""
    try:
        from re import _parser  # type: ignore[attr-defined]  # the stdlib's own parser

        parsed = _parser.parse(pattern.pattern.decode("latin-1"), pattern.flags)
    except Exception:  # a private module: any surprise means no
        return False
    looks_around = {_parser.AT, _parser.ASSERT, _parser.ASSERT_NOT}

    def free(node: object) -> bool:
        if isinstance(node, _parser.SubPattern):
            return all(op not in looks_around and free(value) for op, value in node)
        if isinstance(node, tuple | list):
            return all(free(part) for part in node)
        return True

    return free(parsed)


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
    #: Whether a search over records joined by newlines finds a match wherever one record alone has
    #: one: true when no pattern looks at what is around its match (see :func:`context_free`).
    joinable: bool = dataclasses.field(init=False, compare=False)

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
        object.__setattr__(self, "joinable", all(context_free(p) for p in self.patterns))

    def may_match(self, data: bytes | bytearray | RingChunk) -> bool:
        """Whether some body pattern matches in ``data``. When every pattern starts with literal
        text (the default ``sk-``), one byte of each prefix is looked for first (memchr: 0.02 ms
        per MiB; ``-`` never occurs in base64, the usual big body), and the expression runs only
        where one is present. (Not the whole prefix with ``bytes.find``: at ~0.85 ns a byte it is
        slower than the expression itself, which scans for its literal prefix at ~0.5 ns. A loop,
        not ``any()``: this runs for every record.) A chunk in the capture's shared ring is
        searched where it lies."""
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
        if isinstance(data, RingChunk):
            with data.view() as view:  # the chunk alone, where it lies: not copied
                return pattern.search(view) is not None
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
    """Replace credential header values (and pattern matches) in a serialized head."""
    out, found = redact_header_lines(head, rules)
    out, more = redact_patterns(out, rules, "head")
    return out, found + more if more else found


def redact_header_lines(head: bytes, rules: Rules) -> tuple[bytes, list[Redaction]]:
    """Replace credential header values in a serialized head (body patterns are not applied)."""
    return redact_header_lines_joined((head,), rules)[0]


def redact_header_lines_joined(
    heads: Sequence[bytes], rules: Rules
) -> list[tuple[bytes, list[Redaction]]]:
    """:func:`redact_header_lines` for each of ``heads``, with one search over them all joined by
    newlines (heads are redacted for every request: one regular expression finds the credential
    lines, and each line found is looked up whole, as a client sends the same key line with every
    request). It finds the same lines as a search of each head: a credential line has no CR or LF
    after its leading CRLF, so it never reaches into the next head, and none hides another. The one
    match of the joined text that no head holds, a head's final bare CR with the newline after it,
    is skipped.
    """
    done: list[tuple[bytes, list[Redaction]]] = [(head, []) for head in heads]
    if not rules.headers or not heads:
        return done
    joined = b"\n".join(heads)
    ends = list(itertools.accumulate(len(head) + 1 for head in heads))  # each head's end, + 1
    edits: dict[int, list[tuple[int, int, bytes]]] = {}
    i = 0
    for match in rules.header_line.finditer(joined):
        start, end = match.span()
        while ends[i] <= start:
            i += 1
        if end >= ends[i]:  # a bare CR at a head's end and the joining newline: no head's line
            continue
        redacted = _redacted_line(match.group())
        if redacted is not None:
            offset = ends[i] - len(heads[i]) - 1
            edits.setdefault(i, []).append((start - offset, end - offset, redacted[0]))
            done[i][1].append(redacted[1])
    for i, spans in edits.items():
        head, last = heads[i], 0
        pieces: list[bytes] = []
        for start, end, line in spans:
            pieces += (head[last:start], line)
            last = end
        pieces.append(head[last:])
        done[i] = (b"".join(pieces), done[i][1])
    return done


@functools.lru_cache(maxsize=1024)
def _redacted_line(line: bytes) -> tuple[bytes, Redaction] | None:
    """A credential header line as ``Rules.header_line`` finds it (CRLF, name, colon, value) as it
    is stored, its auth scheme kept, and the redaction it makes; None for an empty or already
    redacted value. Cached: the same key line comes with every request."""
    name, _, value = line[2:].partition(b":")
    name = name.rstrip(b" \t")
    value = value.strip()
    if not value or value.startswith(PLACEHOLDER_PREFIX):
        return None
    lower_name = name.lower()
    scheme = b""
    if lower_name in (b"authorization", b"proxy-authorization"):
        auth = _AUTH_SCHEME.match(value)
        if auth:
            scheme, value = auth.group(1) + b" ", auth.group(2)
    replacement, fp = placeholder(value)
    redaction = Redaction(where="head", name=lower_name.decode("latin-1"), fingerprint=fp)
    return b"\r\n" + name + b": " + scheme + replacement, redaction


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


#: Per type code of a packed record: the field that holds its head, or -1.
_HEAD_FIELD: Final = tuple(
    names.index("head") if "head" in names else -1 for names in packing.RECORD_FIELDS.values()
)
#: Body chunks at least this big are searched for body patterns alone, not with their batch: a
#: search's fixed cost is small beside theirs.
JOINED_BODY_BYTES: Final = 4096


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
        """``record`` with its secrets replaced (:meth:`redact_batch`'s work on its packed form);
        the redactions it already listed are kept."""
        if type(record) not in packing.RECORD_FIELDS:
            return record  # a segment header: nothing in it is traffic
        (done,) = self.redact_batch((pack_record(record),))
        if not isinstance(done, tuple):  # a body pattern matched a body or a URL
            assert isinstance(done, BodyChunk | RequestReceived)
            assert isinstance(record, BodyChunk | RequestReceived)
            if record.redactions:
                return dataclasses.replace(done, redactions=(*record.redactions, *done.redactions))
            return done
        packed, found = done
        if not found:
            return record
        # Only a head was redacted: the record is a request, upstream or response head.
        redacted = unpack_record(packed)
        assert isinstance(redacted, RequestReceived | UpstreamRequest | ResponseHead)
        assert isinstance(record, RequestReceived | UpstreamRequest | ResponseHead)
        return dataclasses.replace(redacted, redactions=(*record.redactions, *found))

    def redact_batch(self, batch: Sequence[PackedRecord]) -> list[Redacted]:
        """``batch``'s records with their secrets replaced, in order: each packed, with the
        redactions made (the usual case: no record object is built), or, where a body pattern
        matches a body or a URL, as the redacted record object.

        Each search has a fixed cost, so the records are searched together, joined by newlines:
        once for credential header lines over the heads (:func:`redact_header_lines_joined`), and
        once for body patterns over the bodies, URLs and heads (their credential lines replaced).
        Only where that second search finds something (rare: a key in a body) are the records
        searched one by one. A record that a pattern matches alone makes the joined text match too
        when the patterns hold no anchor, word boundary or lookaround (:attr:`Rules.joinable`);
        otherwise, and for routes with rules of their own, each record is searched alone. So are
        bodies of :data:`JOINED_BODY_BYTES` or more: the prefilter rules most of them out at memchr
        speed alone (see :meth:`Rules.may_match`; heads always hold its byte), and they are not
        copied. Without routes of their own rules, the usual case goes a quicker way
        (:meth:`_redact_batch_alike`).
        """
        if not self._route_rules and self.rules.joinable:
            done = self._redact_batch_alike(batch)
            if done is not None:
                return done
        default = self.rules
        # 1. Each record's rules, in order (requests name their route), and where its head is.
        rules_of: list[Rules | None] = []  # None: nothing to search (an exchange's end)
        head_at: list[int] = []  # the field holding the record's head, or -1
        for code, values in batch:
            if code == packing.BODY:
                rules: Rules | None = self._rules_for(values[0])
            elif code == packing.REQUEST:
                rules = self._route_rules.get(values[7] or "", default)
                if rules is not default:
                    self._exchange_rules[values[0]] = rules
            elif code == packing.UPSTREAM or code == packing.RESPONSE:
                rules = self._rules_for(values[0])
            else:
                rules = None
                if code == packing.END and self._exchange_rules:
                    self._exchange_rules.pop(values[0], None)
            rules_of.append(rules)
            head_at.append(_HEAD_FIELD[code])
        # 2. Credential header lines: the default rules' heads in one search, others alone.
        stored = list(batch)
        found_of: list[list[Redaction]] = [[] for _ in batch]
        joint = [i for i, at in enumerate(head_at) if at >= 0 and rules_of[i] is default]
        heads = [batch[i][1][head_at[i]] for i in joint]
        for i, (head, found) in zip(joint, redact_header_lines_joined(heads, default), strict=True):
            if found:
                stored[i] = _with_field(batch[i], head_at[i], head)
                found_of[i] = found
        for i, at in enumerate(head_at):
            rules = rules_of[i]
            if at >= 0 and rules is not default and rules is not None:
                head, found_of[i] = redact_header_lines(batch[i][1][at], rules)
                stored[i] = _with_field(batch[i], at, head)
        # 3. Body patterns: one search over what the default rules cover, unless it finds something.
        searched = [
            i
            for i, rules in enumerate(rules_of)
            if rules is default
            and default.joinable
            and (batch[i][0] != packing.BODY or len(batch[i][1][3]) < JOINED_BODY_BYTES)
        ]
        if searched:
            texts: list[bytes | bytearray] = []
            for i in searched:
                code, values = stored[i]
                if code == packing.REQUEST:
                    texts.append(_urls(values))
                texts.append(values[3] if code == packing.BODY else values[head_at[i]])
            if not default.may_match(b"\n".join(texts)):
                for i in searched:
                    rules_of[i] = None
        return [
            (stored[i], tuple(found_of[i]))
            if rules is None
            else self._search_alone(batch[i], stored[i], head_at[i], rules, found_of[i])
            for i, rules in enumerate(rules_of)
        ]

    def _redact_batch_alike(self, batch: Sequence[PackedRecord]) -> list[Redacted] | None:
        """:meth:`redact_batch` when every record has the same rules (no route has its own) and
        they may be searched joined: one pass gathers the heads and the text for body patterns,
        where :meth:`redact_batch` makes eight (workload A: 7.6 -> 6 us per exchange). None when a
        body pattern matches the joined text (rare: a key in a body or URL), for the careful way
        to find where."""
        rules = self.rules
        texts: list[bytes | bytearray] = []
        heads: list[bytes] = []
        where: list[tuple[int, int, int]] = []  # each head's record, field and place in texts
        alone: list[int] = []  # big bodies: searched alone, at memchr speed
        for i, (code, values) in enumerate(batch):
            if code == packing.BODY:
                data = values[3]
                if len(data) < JOINED_BODY_BYTES:
                    texts.append(data)
                else:
                    alone.append(i)
            elif code != packing.END:
                at = _HEAD_FIELD[code]
                if at < 0:  # a gap
                    continue
                if code == packing.REQUEST:
                    texts.append(_urls(values))
                where.append((i, at, len(texts)))
                heads.append(values[at])
                texts.append(values[at])
        stored = list(batch)
        found: list[tuple[int, tuple[Redaction, ...]]] = []
        if rules.headers and heads:
            for (i, at, text), (head, in_head) in zip(
                where, redact_header_lines_joined(heads, rules), strict=True
            ):
                if in_head:
                    stored[i] = _with_field(batch[i], at, head)
                    texts[text] = head
                    found.append((i, tuple(in_head)))
        if texts and rules.may_match(b"\n".join(texts)):
            return None
        done: list[Redacted] = [(packed, ()) for packed in stored]
        for i, redactions in found:
            done[i] = (stored[i], redactions)
        for i in alone:
            done[i] = self._search_alone(batch[i], stored[i], -1, rules, [])
        return done

    def _search_alone(
        self,
        packed: PackedRecord,
        stored: PackedRecord,
        at: int,
        rules: Rules,
        found: list[Redaction],
    ) -> Redacted:
        """A record of :meth:`redact_batch` (``stored``: its credential lines replaced; ``at``: the
        field of its head, or -1) with body patterns replaced where they match: in a head, in place;
        in a body or a URL, by building the record (rare)."""
        code, values = stored
        if code == packing.BODY:
            if not rules.may_match(values[3]):
                return stored, ()
            data, more = redact_patterns(bytes(values[3]), rules, "body")
            if not more:
                return stored, ()
            record = unpack_record(packed)
            assert isinstance(record, BodyChunk)
            return dataclasses.replace(record, data=data, redactions=tuple(more))
        if code == packing.REQUEST and rules.may_match(_urls(values)):
            request = unpack_record(packed)  # its head as received, redacted afresh below
            assert isinstance(request, RequestReceived)
            head, in_head = redact_head(request.head, rules)
            return dataclasses.replace(
                request,
                head=head,
                target=redact_text(request.target, rules) or "",
                proxy_url=redact_text(request.proxy_url, rules) or "",
                upstream_url=redact_text(request.upstream_url, rules),
                redactions=tuple(in_head),
            )
        head, more = redact_patterns(values[at], rules, "head")
        return _with_field(stored, at, head), (*found, *more)


def _urls(values: tuple[Any, ...]) -> bytes:
    """The URLs of a packed request (target, proxy and upstream URL), for the body patterns."""
    _, _, _, target, _, _, proxy_url, _, upstream_url = values
    return f"{target}\n{proxy_url}\n{upstream_url}".encode("utf-8", "surrogateescape")


def _with_field(packed: PackedRecord, at: int, value: object) -> PackedRecord:
    """``packed`` with field ``at`` replaced by ``value`` (``packed`` itself if it is the same)."""
    code, values = packed
    if values[at] is value:
        return packed
    return code, (*values[:at], value, *values[at + 1 :])
