"""Sending a recorded request to a target and reading the answer with its timing (trio + h11).

Connections come from the proxy's pool (keep-alive, TLS), so replay talks HTTP exactly as the proxy
does. Building the request from a recording is sans-IO (:func:`build_request`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import h11
import trio

from wirecap.llm import DecodeError, ExchangeInput, TimedChunks, parse_head
from wirecap.proxy.messages import HOP_BY_HOP
from wirecap.proxy.upstream import ConnectionPool

if TYPE_CHECKING:
    import ssl
    from collections.abc import Sequence

    from wirecap.capture import Exchange
    from wirecap.proxy.config import Upstream

#: Headers never copied from a recording: the target's own, framing (recomputed), and wirecap's.
_NOT_COPIED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"x-proxy-path",
    b"expect",
}


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedRequest:
    method: str
    target: str  # path and query on the target
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def build_request(
    exchange: Exchange,
    base: Upstream,
    *,
    via_proxy: bool = False,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> PreparedRequest | None:
    """The request to send for a recorded exchange, or None when there is none to send.

    The head as sent upstream is used (its path is the upstream's); ``via_proxy`` takes the path from
    X-Proxy-Path instead, so the request goes through a wirecap proxy's routes. ``base`` may add a path
    prefix. Credentials were redacted at capture time: ``extra_headers`` (``--header``) put real ones
    back, replacing recorded headers of the same name.
    """
    request = exchange.request
    if request is None or request.method == "-":
        return None
    head = parse_head(exchange.upstream_wire_head or request.head)
    parts = head.start_line.split(" ")
    if len(parts) < 2:
        return None
    method, path = parts[0], parts[1]
    if via_proxy and request.proxy_url:
        url = urlsplit(request.proxy_url)
        path = url.path + (f"?{url.query}" if url.query else "")
    elif exchange.upstream is None and request.upstream_url:
        url = urlsplit(request.upstream_url)
        path = url.path + (f"?{url.query}" if url.query else "")
    recorded = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head.headers]
    extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in extra_headers]
    return prepare(method, base.base_path + path, recorded, exchange.request_body, base, extra)


def prepare(
    method: str,
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    base: Upstream,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> PreparedRequest:
    """A request for ``base`` from headers seen elsewhere: Host set for ``base``, framing recomputed,
    hop-by-hop and wirecap headers dropped, ``extra_headers`` replacing same-named ones."""
    override = {name.lower() for name, _ in extra_headers}
    out: list[tuple[bytes, bytes]] = [(b"Host", base.host_header.encode())]
    out += [
        (n, v) for n, v in headers if n.lower() not in _NOT_COPIED and n.lower() not in override
    ]
    out += extra_headers
    if body or method in ("POST", "PUT", "PATCH"):
        out.append((b"Content-Length", str(len(body)).encode()))
    return PreparedRequest(method, target, tuple(out), body)


@dataclasses.dataclass(slots=True)
class Response:
    """An answer as :func:`send` read it. The payload is kept in ``chunks`` up to ``hold`` bytes;
    past that only its size, chunk times and SHA-256 are (``dropped``)."""

    status: int | None = None
    head: bytes = b""
    chunks: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)  # payload
    #: The body bytes as received (transfer coding included), read by read, for a capture.
    wire_chunks: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    request_head: bytes = b""
    started_ns: int = 0  # wall clock
    duration_ns: int = 0
    ttfb_ns: int | None = None
    error: str | None = None
    size: int = 0  # payload bytes
    times: list[int] = dataclasses.field(default_factory=list)
    hold: int | None = None
    dropped: bool = False
    _hasher: Any = dataclasses.field(default_factory=hashlib.sha256, repr=False)

    def take(self, ns: int, data: bytes) -> None:
        """One piece of payload, arrived ``ns`` after the request started."""
        self.times.append(ns)
        self.size += len(data)
        if self.hold is None:
            self.chunks.append((ns, data))
            return
        self._hasher.update(data)
        if self.size > self.hold:
            self.dropped = True
            self.chunks.clear()
        else:
            self.chunks.append((ns, data))

    def as_input(self, method: str, path: str) -> ExchangeInput:
        """The answer as the adapters and the comparison take it: with its content coding undone,
        as the recorded side's is (a coding that cannot be undone leaves the bytes as they came)."""
        head = parse_head(self.head) if self.head else None
        body = TimedChunks.held(self.chunks)
        if self.dropped:
            body = TimedChunks(tuple, self.times, self.size, self._hasher.hexdigest())
        else:
            with contextlib.suppress(DecodeError):
                body = body.decoded(head.get("content-encoding") if head else None)
        return ExchangeInput(
            method=method,
            path=path,
            request_head=None,
            request_body=b"",
            status=self.status,
            response_head=head,
            response_chunks=body,
            complete=self.error is None,
        )


def client_pool(
    *,
    connect_timeout: float,
    idle_timeout: float,
    max_idle: int,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionPool:
    """A pool of h11 client connections for :func:`send` (64 KiB reads and heads)."""
    return ConnectionPool(
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        read_size=64 * 1024,
        max_head=64 * 1024,
        max_idle_per_origin=max_idle,
        ssl_context=ssl_context,
    )


async def send(
    pool: ConnectionPool,
    base: Upstream,
    request: PreparedRequest,
    *,
    read_timeout: float,
    hold: int | None = None,
    keep_wire: bool = True,
) -> Response:
    """Send ``request`` and read the whole answer, chunk by chunk with arrival times.

    ``hold`` bounds the payload kept in memory (beyond it only its digest is: see
    :class:`Response`); ``keep_wire`` keeps the bytes as received too, for a capture. Raises the
    pool's :class:`~wirecap.proxy.upstream.UpstreamConnectError` when the target cannot be reached;
    other failures end up in ``Response.error``.
    """
    response = Response(started_ns=time.time_ns(), hold=hold)
    t0 = time.perf_counter_ns()
    conn = await pool.acquire(base)
    reusable = False
    try:
        with trio.fail_after(read_timeout):
            response.request_head = await conn.send(
                h11.Request(
                    method=request.method, target=request.target, headers=list(request.headers)
                )
            )
            if request.body:
                await conn.send(h11.Data(data=request.body))
            await conn.send(h11.EndOfMessage())
        while True:
            with trio.fail_after(read_timeout):
                event, raw = await conn.next_event()
            now = time.perf_counter_ns() - t0
            if isinstance(event, h11.Response):
                response.status, response.head, response.ttfb_ns = event.status_code, raw, now
            elif isinstance(event, h11.Data):
                response.take(now, bytes(event.data))
                if keep_wire:
                    response.wire_chunks.append((now, raw))
            elif isinstance(event, h11.EndOfMessage):
                if raw and keep_wire:
                    response.wire_chunks.append((now, raw))
                reusable = True
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the target closed the connection")
    except trio.TooSlowError:
        response.error = f"no answer within {read_timeout:g}s"
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
        response.error = f"connection failed: {exc or type(exc).__name__}"
    finally:
        response.duration_ns = time.perf_counter_ns() - t0
        if reusable:
            await pool.release(conn)
        else:
            await conn.aclose()
    return response
