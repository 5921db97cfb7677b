"""The recorded requests a mock backend answers from, and how a live request finds its match. Sans-IO.

A request matches a recorded one on method, path, query and body (JSON compared as data, with
``--ignore`` paths left out); ``match`` loosens that. Identical requests are answered in recorded
order, then the last answer again. In sequence mode a request also has to follow the same request
as it did in the recording (agent loops send one request at different steps). A miss comes with
the closest recorded requests and what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

from wirecap.llm import parse_head
from wirecap.replay.compare import first_difference
from wirecap.replay.normalize import canonical, loads_or_none, normalize
from wirecap.replay.sessions import SessionCatalog

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from wirecap.capture import Exchange

MATCH_ON: Final = ("method", "path", "query", "body")


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded answer, ready to be served."""

    id: str
    method: str
    paths: tuple[str, ...]  # the path as the client sent it, and as sent upstream
    query: tuple[tuple[str, str], ...]
    body: Any  # normalized JSON, or the raw bytes
    status: int
    head: bytes
    head_delay_ns: int  # from the end of the request to the response head
    #: (delay after the previous chunk or the head, bytes): a tuple for a small body; for a large
    #: one, chunks read again from the capture each time the answer is served.
    chunks: Iterable[tuple[int, bytes]]
    cut: bool = False  # the upstream broke off this response: serve it broken off too


@dataclasses.dataclass(frozen=True, slots=True)
class _PacedFromCapture:
    """A large recorded answer's chunks with their delays, streamed from the capture."""

    exchange: Exchange
    head_ns: int

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        previous = self.head_ns
        for c in self.exchange.iter_payload("res"):
            yield max(c.ns - previous, 0), c.data
            previous = c.ns


def _split(target: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    url = urlsplit(target)
    return url.path or "/", tuple(sorted(parse_qsl(url.query, keep_blank_values=True)))


def request_body_key(body: bytes, ignore: Sequence[list[str | int | None]]) -> Any:
    parsed = loads_or_none(body)
    if parsed is None:
        return body
    return normalize(parsed, ignore, volatile=False)


def recorded_from(
    exchange: Exchange, ignore: Sequence[list[str | int | None]] = ()
) -> Recorded | None:
    """A servable answer from a captured exchange (None when it has no complete response)."""
    request, response = exchange.request, exchange.response
    if request is None or response is None or request.method == "-":
        return None
    cut = exchange.outcome in ("upstream_error", "timeout") and response.by == "upstream"
    if exchange.outcome != "ok" and not cut:
        return None
    path, query = _split(request.target)
    paths = [path]
    if exchange.upstream is not None:
        upstream_target = parse_head(exchange.upstream_wire_head or b"").start_line.split(" ")
        if len(upstream_target) >= 2:
            paths.append(_split(upstream_target[1])[0])
    request_end = max(
        [c.ns for c in exchange.iter_payload("req")]
        + [exchange.upstream.ns if exchange.upstream else 0]
    )
    paced = _PacedFromCapture(exchange, response.ns)
    chunks: Iterable[tuple[int, bytes]] = tuple(paced) if exchange.holds_bodies else paced
    return Recorded(
        id=exchange.id,
        method=request.method,
        paths=tuple(dict.fromkeys(paths)),
        query=query,
        body=request_body_key(exchange.request_body, ignore),
        status=response.status,
        head=response.head,
        head_delay_ns=max(response.ns - request_end, 0),
        chunks=chunks,
        cut=cut,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Miss:
    method: str
    path: str
    closest: tuple[tuple[Recorded, tuple[str, ...]], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "type": "wirecap_no_match",
                "message": f"no recorded request matches {self.method} {self.path}",
                "request": {"method": self.method, "path": self.path},
                "closest": [
                    {"id": r.id, "method": r.method, "path": r.paths[0], "differences": list(diffs)}
                    for r, diffs in self.closest
                ],
            }
        }

    def describe(self) -> str:
        lines = [f"no recorded request matches {self.method} {self.path}"]
        for r, diffs in self.closest:
            lines.append(f"  closest: {r.method} {r.paths[0]} [{r.id}]: {'; '.join(diffs)}")
        return "\n".join(lines)


class Catalog:
    """Recorded answers indexed by request key, with per-key replay order."""

    def __init__(
        self,
        recorded: Iterable[Recorded],
        *,
        match_on: Sequence[str] = MATCH_ON,
        ignore: Sequence[list[str | int | None]] = (),
        sequence: bool = False,
        sessions: SessionCatalog | None = None,
    ) -> None:
        #: The recorded WebSocket sessions, answered to Upgrade requests (see wsserve.py).
        self.sessions = sessions or SessionCatalog(())
        unknown = set(match_on) - set(MATCH_ON)
        if unknown:
            raise ValueError(
                f"cannot match on {', '.join(sorted(unknown))} (use {', '.join(MATCH_ON)})"
            )
        self.match_on = tuple(match_on)
        self.ignore = ignore
        self.sequence = sequence
        self.entries: list[Recorded] = list(recorded)
        self._by_key: dict[tuple[bytes, str], list[Recorded]] = {}
        self._by_pair: dict[tuple[bytes, bytes, str], list[Recorded]] = {}
        self._served: dict[Any, int] = {}
        self._previous: bytes = b""
        previous = b""
        for r in self.entries:
            for path in r.paths:
                key = self._key(r.method, path, r.query, r.body)
                self._by_key.setdefault((key, path), []).append(r)
                self._by_pair.setdefault((previous, key, path), []).append(r)
            previous = self._key(r.method, r.paths[0], r.query, r.body)

    def _key(self, method: str, path: str, query: tuple[tuple[str, str], ...], body: Any) -> bytes:
        parts = [
            method if "method" in self.match_on else "",
            path if "path" in self.match_on else "",
            repr(query) if "query" in self.match_on else "",
            (canonical(body) if not isinstance(body, bytes) else body.hex())
            if "body" in self.match_on
            else "",
        ]
        return hashlib.sha256("\x00".join(parts).encode()).digest()

    def lookup(self, method: str, target: str, body: bytes) -> Recorded | Miss:
        """The answer for a live request, advancing that request's position in the replay order."""
        path, query = _split(target)
        value = request_body_key(body, self.ignore)
        key = self._key(method, path if "path" in self.match_on else "", query, value)
        lookup_path = path if "path" in self.match_on else ""
        candidates = None
        slot: Any = None
        if self.sequence:
            slot = (self._previous, key, lookup_path)
            candidates = self._by_pair.get(slot)
        if not candidates:
            slot = (key, lookup_path)
            candidates = self._by_key.get(slot)
        if not candidates and "path" not in self.match_on:
            candidates = next((v for (k, _p), v in self._by_key.items() if k == key), None)
        if not candidates:
            return Miss(method, target, self._closest(method, path, query, value))
        self._previous = self._key(method, path, query, value)
        position = self._served.get(slot, 0)
        self._served[slot] = position + 1
        return candidates[min(position, len(candidates) - 1)]

    def _closest(
        self, method: str, path: str, query: tuple[tuple[str, str], ...], body: Any
    ) -> tuple[tuple[Recorded, tuple[str, ...]], ...]:
        scored: list[tuple[int, int, Recorded, tuple[str, ...]]] = []
        for r in self.entries:
            diffs: list[str] = []
            score = 0
            if r.method != method:
                diffs.append(f"method {r.method} instead of {method}")
                score += 4
            if path not in r.paths:
                diffs.append(f"path {r.paths[0]} instead of {path}")
                score += 3
            if r.query != query:
                diffs.append(f"query {dict(r.query)} instead of {dict(query)}")
                score += 1
            if r.body != body:
                diffs.append(
                    "body: " + first_difference(r.body, body)
                    if not isinstance(r.body, bytes) and not isinstance(body, bytes)
                    else "body differs"
                )
                score += 2
            scored.append((score, len(scored), r, tuple(diffs)))
        scored.sort(key=lambda t: (t[0], t[1]))
        return tuple((r, d) for _, _, r, d in scored[:3])
