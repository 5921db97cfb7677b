"""Capture record types: the schema of a capture file, stated once. Sans-IO.

Each record type is a frozen dataclass; its fields are the keys of its CBOR map, in the same order,
plus ``"t"``, the type's name. :func:`record_to_map` and :func:`record_from_map` derive the map
form from the dataclass fields, so a field added here is written, read and validated without
another edit; docs/FORMAT.md follows these types. A map read from an untrusted file that does not
have the declared shape raises :class:`RecordError` instead of producing a half-built object.
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias

FORMAT_NAME: Final = "wirecap"
#: Version 2 stores every body chunk as the bytes that crossed the wire (transfer coding included);
#: version 1 stored de-chunked payload. Readers read both.
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = frozenset({1, 2})

Direction: TypeAlias = Literal["req", "res"]
Outcome: TypeAlias = Literal["ok", "client_abort", "upstream_error", "timeout", "protocol_error"]
OUTCOMES: Final[frozenset[str]] = frozenset(typing.get_args(Outcome))
ProxyPathMode: TypeAlias = Literal["added", "forwarded"]
#: The line's name (FORMAT.md): the proxy writes it with :func:`proxy_path_line`; readers find it
#: by this name in any case.
PROXY_PATH_HEADER: Final = b"X-Proxy-Path"


def proxy_path_line(proxy_url: bytes) -> bytes:
    """The X-Proxy-Path header line for ``proxy_url``, with its CRLF."""
    return PROXY_PATH_HEADER + b": " + proxy_url + b"\r\n"


class RecordError(ValueError):
    """A CBOR item that is not a valid wirecap record."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Redaction:
    """One secret replaced in stored bytes: where it was and the fingerprint that replaced it."""

    where: str  # "head" or "body"
    name: str  # header name (lower case) or body pattern
    fp: str  # 8 hex digits of the secret's SHA-256


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """First record of every file: what wrote it and how."""

    TYPE: ClassVar[str] = "header"
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    wirecap_version: str
    created_ns: int  # wall clock, ns since the Unix epoch
    host: str
    pid: int
    segment: int = 0
    redaction: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    listen: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """The client's request head exactly as received (after redaction), and where it was routed."""

    TYPE: ClassVar[str] = "request"
    x: str
    wall_ns: int  # wall clock at the first byte of the head, ns since the Unix epoch
    method: str
    target: str  # request target as the client sent it (path and query, with the route prefix)
    head: bytes  # request line + header lines + the empty line
    client: str = ""
    proxy_url: str = ""  # the full URL the client asked the proxy for (what X-Proxy-Path holds)
    route: str | None = None
    upstream_url: str | None = None
    redactions: tuple[Redaction, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamRequest:
    """The request head exactly as sent upstream, plus the X-Proxy-Path line (see FORMAT.md)."""

    TYPE: ClassVar[str] = "upstream"
    x: str
    ns: int  # ns since the exchange began
    head: bytes
    proxy_path: ProxyPathMode = "added"
    redactions: tuple[Redaction, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    """A response head exactly as received from upstream, or as made by the proxy (``by="proxy"``).

    1xx informational heads are response records too; the final head is the first with status >= 200.
    """

    TYPE: ClassVar[str] = "response"
    x: str
    ns: int
    status: int
    head: bytes
    by: str = "upstream"
    redactions: tuple[Redaction, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BodyChunk:
    """The body bytes of one read as they crossed the wire (transfer coding included), and when."""

    TYPE: ClassVar[str] = "body"
    x: str
    dir: Direction
    ns: int
    data: bytes
    redactions: tuple[Redaction, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeEnd:
    """Last record of an exchange: how it ended and the byte counts that crossed the wire."""

    TYPE: ClassVar[str] = "end"
    x: str
    ns: int
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    req_bytes: int = 0  # request body bytes received from the client (payload)
    res_bytes: int = 0  # response body bytes received from the upstream (payload)
    ttfb_ns: int | None = None  # first byte of the response head


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeNote:
    """What a tool that made an exchange says about it, beside the bytes: where an imported
    exchange came from and what in it is approximate (``kind="import"``), or which fault the proxy
    or the mock server injected (``kind="fault"``). Written before the exchange's ``end``."""

    TYPE: ClassVar[str] = "note"
    x: str
    kind: str
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Records the proxy dropped (``--on-full drop``) or could not write, counted since the last gap."""

    TYPE: ClassVar[str] = "gap"
    wall_ns: int
    records: int
    bytes: int
    exchanges: tuple[str, ...] = ()
    reason: str = "channel full"


Record: TypeAlias = (
    Header
    | RequestReceived
    | UpstreamRequest
    | ResponseHead
    | BodyChunk
    | ExchangeEnd
    | Gap
    | ExchangeNote
)
ExchangeRecord: TypeAlias = (
    RequestReceived | UpstreamRequest | ResponseHead | BodyChunk | ExchangeEnd | ExchangeNote
)
RECORD_TYPES: Final = (
    Header,
    RequestReceived,
    UpstreamRequest,
    ResponseHead,
    BodyChunk,
    ExchangeEnd,
    Gap,
    ExchangeNote,
)


# -- the map form, derived from the dataclass fields -------------------------------------------------

_Check: TypeAlias = "typing.Callable[[Any], Any]"


#: The plain field types, as their errors name them (``bool`` is not an ``int`` here).
_PLAIN: Final[dict[type, str]] = {str: "text", bytes: "a byte string", int: "an integer"}


def _checker(hint: Any, where: str) -> _Check:
    """A function that returns a valid decoded value for a field of type ``hint`` or raises."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _PLAIN:
        kind = _PLAIN[hint]

        def check_plain(value: Any) -> Any:
            if type(value) is not hint:
                raise RecordError(f"{where} must be {kind}")
            return value

        return check_plain
    if origin is Literal:
        allowed = frozenset(args)

        def check_choice(value: Any) -> Any:
            if type(value) is not str or value not in allowed:
                raise RecordError(f"{where} must be one of {', '.join(sorted(allowed))}")
            return value

        return check_choice
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        [inner] = [a for a in args if a is not type(None)]
        check_inner = _checker(inner, where)
        return lambda value: None if value is None else check_inner(value)
    if origin is tuple:
        item = args[0]
        check_item: _Check = _checker(item, where) if item is not Redaction else _redaction(where)

        def check_tuple(value: Any) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise RecordError(f"{where} must be a list")
            return tuple(check_item(v) for v in value)

        return check_tuple
    if origin is Mapping:

        def check_map(value: Any) -> Any:
            if not isinstance(value, dict):
                raise RecordError(f"{where} must be a map")
            return value

        return check_map
    raise TypeError(f"no CBOR form for {hint!r}")  # a new field type: teach _checker


def _redaction(where: str) -> _Check:
    def check(value: Any) -> Any:
        return _from_map(Redaction, value, where)

    return check


def _schema(cls: type) -> tuple[tuple[str, _Check, bool], ...]:
    """(name, checker, required) for each field of ``cls``, from its type hints."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            f.name,
            _checker(hints[f.name], f"{getattr(cls, 'TYPE', 'redaction')} {f.name!r}"),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    )


_SCHEMAS: Final[dict[type, tuple[tuple[str, _Check, bool], ...]]] = {
    cls: _schema(cls) for cls in (Redaction, *RECORD_TYPES)
}
_BY_TYPE: Final[dict[str, type]] = {cls.TYPE: cls for cls in RECORD_TYPES}


def _to_plain(value: Any) -> Any:
    if type(value) is tuple:
        return [_to_plain(v) for v in value]
    if type(value) is Redaction:
        return {"where": value.where, "name": value.name, "fp": value.fp}
    return value


_NAMES: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(name for name, _, _ in schema) for cls, schema in _SCHEMAS.items()
}


def record_to_map(record: Record) -> dict[str, Any]:
    """The CBOR map of ``record``: ``"t"`` then every field, tuples as lists."""
    m: dict[str, Any] = {"t": record.TYPE}
    for name in _NAMES[type(record)]:
        value = getattr(record, name)
        m[name] = _to_plain(value) if type(value) is tuple else value
    return m


def _from_map(cls: type, m: Any, what: str) -> Any:
    if not isinstance(m, dict):
        raise RecordError(f"{what} is not a map")
    values: dict[str, Any] = {}
    for name, check, required in _SCHEMAS[cls]:
        if name in m:
            values[name] = check(m[name])
        elif required:
            raise RecordError(f"{what} without {name!r}")
    return cls(**values)


def record_from_map(item: Any) -> Record | None:
    """Build a record from a decoded CBOR item.

    Returns None for a map whose ``"t"`` is an unknown type (readers skip records from newer writers);
    raises :class:`RecordError` for anything that is not a map, or a known type with a bad shape.
    Keys a record type does not declare are ignored (newer writers may add some).
    """
    if not isinstance(item, dict):
        raise RecordError("record is not a map")
    kind = item.get("t")
    if not isinstance(kind, str):
        raise RecordError("record without a text 't' key")
    cls = _BY_TYPE.get(kind)
    if cls is None:
        return None
    record: Record = _from_map(cls, item, f"{kind} record")
    if isinstance(record, Header):
        if record.format != FORMAT_NAME:
            raise RecordError(f"not a wirecap capture (format {record.format!r})")
        if record.version not in READABLE_VERSIONS:
            raise RecordError(f"unsupported capture format version {record.version}")
    return record


#: Each record type's number, and the getter of its fields in order (one call for all of them).
_TUPLE_FORMS: Final[dict[type, tuple[int, operator.attrgetter[Any]]]] = {
    cls: (i, operator.attrgetter(*_NAMES[cls])) for i, cls in enumerate(RECORD_TYPES)
}


def record_to_tuple(record: Record) -> tuple[Any, ...]:
    """``record`` as a tuple of plain values (its type's number, then its fields in order), which
    ``marshal`` can pass to another process. Only for records without redactions (those are
    added where records are encoded)."""
    code, fields = _TUPLE_FORMS[type(record)]
    return (code, *fields(record))


def record_from_tuple(values: tuple[Any, ...]) -> Record:
    """The record :func:`record_to_tuple` made ``values`` from."""
    cls = RECORD_TYPES[values[0]]
    record: Record = cls(**dict(zip(_NAMES[cls], values[1:], strict=True)))
    return record
