"""Capture record types and their CBOR map form.

Every record in a capture file is a CBOR map with text keys. The key ``"t"`` names the record type;
exchange records carry the exchange id under ``"x"``. This module converts between those maps and
small dataclasses, and validates maps read from untrusted files: a map that does not have the
documented shape raises :class:`RecordError` instead of producing a half-built object.

Records are values: nothing changes one after it is made (``dataclasses.replace`` makes a new one).
The five exchange records are not declared frozen only because a frozen dataclass's ``__init__``
costs three times as much, and the proxy makes several per exchange.

docs/FORMAT.md is the normative description; keep the two in step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

FORMAT_NAME: Final = "wirecap"
FORMAT_VERSION: Final = 1

Direction: TypeAlias = Literal["req", "res"]
Outcome: TypeAlias = Literal["ok", "client_abort", "upstream_error", "timeout", "protocol_error"]
OUTCOMES: Final[frozenset[str]] = frozenset(
    {"ok", "client_abort", "upstream_error", "timeout", "protocol_error"}
)
#: Where the X-Proxy-Path line of an upstream head came from: ``"added"`` means the line exists only in
#: the stored copy (strip it to get the wire bytes); ``"forwarded"`` means it was sent upstream too.
PROXY_PATH_MODES: Final[frozenset[str]] = frozenset({"added", "forwarded"})
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
    fingerprint: str

    def to_map(self) -> dict[str, Any]:
        return {"where": self.where, "name": self.name, "fp": self.fingerprint}

    @classmethod
    def from_map(cls, m: Any) -> Redaction:
        m = _require_map(m, "redaction")
        return cls(where=_text(m, "where"), name=_text(m, "name"), fingerprint=_text(m, "fp"))


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

    def to_map(self) -> dict[str, Any]:
        return {
            "t": self.TYPE,
            "format": self.format,
            "version": self.version,
            "wirecap_version": self.wirecap_version,
            "created_ns": self.created_ns,
            "host": self.host,
            "pid": self.pid,
            "segment": self.segment,
            "redaction": dict(self.redaction),
            "listen": self.listen,
        }

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> Header:
        fmt = _text(m, "format")
        version = _int(m, "version")
        if fmt != FORMAT_NAME:
            raise RecordError(f"not a wirecap capture (format {fmt!r})")
        if version != FORMAT_VERSION:
            raise RecordError(f"unsupported capture format version {version}")
        return cls(
            format=fmt,
            version=version,
            wirecap_version=_text(m, "wirecap_version"),
            created_ns=_int(m, "created_ns"),
            host=_text(m, "host"),
            pid=_int(m, "pid"),
            segment=_int(m, "segment", 0),
            redaction=_require_map(m.get("redaction", {}), "redaction"),
            listen=_opt_text(m, "listen"),
        )


@dataclasses.dataclass(slots=True, kw_only=True)
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

    def to_map(self) -> dict[str, Any]:
        return {
            "t": self.TYPE,
            "x": self.x,
            "wall_ns": self.wall_ns,
            "method": self.method,
            "target": self.target,
            "head": self.head,
            "client": self.client,
            "proxy_url": self.proxy_url,
            "route": self.route,
            "upstream_url": self.upstream_url,
            "redactions": [r.to_map() for r in self.redactions],
        }

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> RequestReceived:
        return cls(
            x=_text(m, "x"),
            wall_ns=_int(m, "wall_ns"),
            method=_text(m, "method"),
            target=_text(m, "target"),
            head=_bytes(m, "head"),
            client=_text(m, "client", ""),
            proxy_url=_text(m, "proxy_url", ""),
            route=_opt_text(m, "route"),
            upstream_url=_opt_text(m, "upstream_url"),
            redactions=_redactions(m),
        )


@dataclasses.dataclass(slots=True, kw_only=True)
class UpstreamRequest:
    """The request head exactly as sent upstream, plus the X-Proxy-Path line (see FORMAT.md)."""

    TYPE: ClassVar[str] = "upstream"
    x: str
    ns: int  # ns since the exchange began
    head: bytes
    proxy_path: str = "added"
    redactions: tuple[Redaction, ...] = ()

    def to_map(self) -> dict[str, Any]:
        return {
            "t": self.TYPE,
            "x": self.x,
            "ns": self.ns,
            "head": self.head,
            "proxy_path": self.proxy_path,
            "redactions": [r.to_map() for r in self.redactions],
        }

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> UpstreamRequest:
        mode = _text(m, "proxy_path", "added")
        if mode not in PROXY_PATH_MODES:
            raise RecordError(f"bad proxy_path mode {mode!r}")
        return cls(
            x=_text(m, "x"),
            ns=_int(m, "ns"),
            head=_bytes(m, "head"),
            proxy_path=mode,
            redactions=_redactions(m),
        )


@dataclasses.dataclass(slots=True, kw_only=True)
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

    def to_map(self) -> dict[str, Any]:
        return {
            "t": self.TYPE,
            "x": self.x,
            "ns": self.ns,
            "status": self.status,
            "head": self.head,
            "by": self.by,
            "redactions": [r.to_map() for r in self.redactions],
        }

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> ResponseHead:
        return cls(
            x=_text(m, "x"),
            ns=_int(m, "ns"),
            status=_int(m, "status"),
            head=_bytes(m, "head"),
            by=_text(m, "by", "upstream"),
            redactions=_redactions(m),
        )


@dataclasses.dataclass(slots=True, kw_only=True)
class BodyChunk:
    """Body bytes (after transfer-coding removal, content-coding untouched) as they arrived."""

    TYPE: ClassVar[str] = "body"
    x: str
    dir: Direction
    ns: int
    data: bytes | bytearray
    redactions: tuple[Redaction, ...] = ()

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "t": self.TYPE,
            "x": self.x,
            "dir": self.dir,
            "ns": self.ns,
            "data": self.data,  # cbor2 encodes a bytearray as a byte string, without a copy
        }
        if self.redactions:
            m["redactions"] = [r.to_map() for r in self.redactions]
        return m

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> BodyChunk:
        # The most frequent record by far: checked inline rather than through the helpers.
        x, direction, ns, data = m.get("x"), m.get("dir"), m.get("ns"), m.get("data")
        if (
            type(x) is not str
            or direction not in ("req", "res")
            or type(ns) is not int
            or type(data) is not bytes
        ):
            raise RecordError("bad body record: needs text x, dir req|res, integer ns, bytes data")
        return cls(
            x=x,
            dir="req" if direction == "req" else "res",
            ns=ns,
            data=data,
            redactions=_redactions(m) if "redactions" in m else (),
        )


@dataclasses.dataclass(slots=True, kw_only=True)
class ExchangeEnd:
    """Last record of an exchange: how it ended and the byte counts that crossed the wire."""

    TYPE: ClassVar[str] = "end"
    x: str
    ns: int
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    req_bytes: int = 0
    res_bytes: int = 0
    ttfb_ns: int | None = None  # first byte of the response head

    def to_map(self) -> dict[str, Any]:
        return {
            "t": self.TYPE,
            "x": self.x,
            "ns": self.ns,
            "outcome": self.outcome,
            "status": self.status,
            "error": self.error,
            "req_bytes": self.req_bytes,
            "res_bytes": self.res_bytes,
            "ttfb_ns": self.ttfb_ns,
        }

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> ExchangeEnd:
        outcome = _text(m, "outcome")
        if outcome not in OUTCOMES:
            raise RecordError(f"bad outcome {outcome!r}")
        return cls(
            x=_text(m, "x"),
            ns=_int(m, "ns"),
            outcome=outcome,  # type: ignore[arg-type]
            status=_opt_int(m, "status"),
            error=_opt_text(m, "error"),
            req_bytes=_int(m, "req_bytes", 0),
            res_bytes=_int(m, "res_bytes", 0),
            ttfb_ns=_opt_int(m, "ttfb_ns"),
        )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Records the proxy dropped (``--on-full drop``) or could not write, counted since the last gap."""

    TYPE: ClassVar[str] = "gap"
    wall_ns: int
    records: int
    bytes: int
    exchanges: tuple[str, ...] = ()
    reason: str = "channel full"

    def to_map(self) -> dict[str, Any]:
        return {
            "t": self.TYPE,
            "wall_ns": self.wall_ns,
            "records": self.records,
            "bytes": self.bytes,
            "exchanges": list(self.exchanges),
            "reason": self.reason,
        }

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> Gap:
        ids = m.get("exchanges", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RecordError("gap exchanges must be a list of text")
        return cls(
            wall_ns=_int(m, "wall_ns"),
            records=_int(m, "records"),
            bytes=_int(m, "bytes"),
            exchanges=tuple(ids),
            reason=_text(m, "reason", ""),
        )


Record: TypeAlias = (
    Header | RequestReceived | UpstreamRequest | ResponseHead | BodyChunk | ExchangeEnd | Gap
)
ExchangeRecord: TypeAlias = (
    RequestReceived | UpstreamRequest | ResponseHead | BodyChunk | ExchangeEnd
)

_DECODERS: Final[dict[str, Callable[[Mapping[str, Any]], Record]]] = {
    cls.TYPE: cls.from_map
    for cls in (Header, RequestReceived, UpstreamRequest, ResponseHead, BodyChunk, ExchangeEnd, Gap)
}


def record_from_map(item: Any) -> Record | None:
    """Build a record from a decoded CBOR item.

    Returns None for a map whose ``"t"`` is an unknown type (readers skip records from newer writers);
    raises :class:`RecordError` for anything that is not a map, or a known type with a bad shape.
    """
    m = _require_map(item, "record")
    kind = m.get("t")
    if not isinstance(kind, str):
        raise RecordError("record without a text 't' key")
    decode = _DECODERS.get(kind)
    if decode is None:
        return None
    try:
        return decode(m)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"bad {kind} record: {exc}") from exc


# -- validation helpers ------------------------------------------------------------------------------

_MISSING: Final = object()


def _require_map(item: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise RecordError(f"{what} is not a map")
    return item


def _get(m: Mapping[str, Any], key: str, default: Any) -> Any:
    value = m.get(key, default)
    if value is _MISSING:
        raise RecordError(f"missing key {key!r}")
    return value


def _text(m: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = _get(m, key, default)
    if not isinstance(value, str):
        raise RecordError(f"{key!r} must be text")
    return value


def _opt_text(m: Mapping[str, Any], key: str) -> str | None:
    value = m.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{key!r} must be text or null")
    return value


def _int(m: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    value = _get(m, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{key!r} must be an integer")
    return value


def _opt_int(m: Mapping[str, Any], key: str) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{key!r} must be an integer or null")
    return value


def _bytes(m: Mapping[str, Any], key: str) -> bytes:
    value = _get(m, key, _MISSING)
    if not isinstance(value, bytes):
        raise RecordError(f"{key!r} must be a byte string")
    return value


def _redactions(m: Mapping[str, Any]) -> tuple[Redaction, ...]:
    items = m.get("redactions", [])
    if not isinstance(items, list):
        raise RecordError("'redactions' must be a list")
    return tuple(Redaction.from_map(r) for r in items)
