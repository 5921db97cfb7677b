"""The relay parses with h11 and forwards, and records, exactly the bytes that crossed the wire.

Real proxy runs on 127.0.0.1, real sockets, real clients and upstreams. These tests prove:

1. h11 made the events for every message relayed: h11's public API is wrapped
   (``Connection.__init__`` and ``Connection.next_event``) to record, per connection the proxy
   created, its role and the events it returned. Over a mix of traffic (httpx keep-alive, pipelining, a chunked request body,
   ``Expect: 100-continue``, HEAD, 204, a 1xx before the final answer, a close-delimited answer, an
   HTTP/1.0 client), every request the upstream received is an ``h11.Request`` a SERVER-role
   connection of the proxy returned, and every response head a client received is an
   ``h11.Response``/``InformationalResponse`` a CLIENT-role connection of the proxy returned (same
   methods, targets and statuses, same counts); and ``wirecap.proxy`` has no ``http1`` module.
2. Exact wire bytes: a chunked answer with chunk extensions, odd and upper-case chunk sizes and a
   trailer, an SSE answer written event by event, and a chunked request body with an extension and
   a trailer reach the other side byte for byte; the capture's ``response_bytes()`` and
   ``request_bytes()``, its body records, and ``wirecap inspect --raw`` give those same bytes,
   while ``request_body``/``response_body``/``response_chunks`` give the de-chunked payload with
   each read's arrival time. An HTTP/1.0 client gets the payload, unchunked, with
   ``Connection: close``, and the capture still holds the upstream's chunked bytes.
3. Captures of format version 1 (bodies stored de-chunked) still read and analyze.
4. Heads go on line by line: odd spacing, repeated headers, bare-LF line ends and obs-fold lines
   reach the other side with every unedited line byte for byte and in order (bare LF becomes CRLF,
   an obs-fold one space), Host replaced by the upstream's, and the hop-by-hop headers (and those
   Connection names) removed; for request heads, final response heads and 1xx heads.

Each body record is the bytes of one read (the CRLF that ends a chunk's data included, which h11
consumes in a call that then asks for more data), and 1xx heads lose the headers their Connection
header names, as final heads do.

No test sleeps to wait for something: waits are on events and on connections closing, under
``trio.fail_after`` as a guard against hangs only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import json
import pkgutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
from click.testing import CliRunner

import wirecap.proxy
from wirecap.capture import Exchange, open_capture
from wirecap.cli import main
from wirecap.inspect.analysis import analyze_exchange

#: A guard against hangs only: every wait below ends on an answer, an event or a close long before.
HANG_GUARD = 10.0
FORMAT1 = Path(__file__).parent.parent / "data" / "format1"


# -- clients ------------------------------------------------------------------------------------------


async def raw_exchange(port: int, *writes: bytes) -> bytes:
    """Send ``writes`` (one write each) to the proxy and return everything it answers until it
    closes the connection."""
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for data in writes:
                await stream.send_all(data)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
            return bytes(received)


async def read_one_response(stream: trio.abc.ReceiveStream, method: bytes = b"GET") -> bytes:
    """The raw bytes of the next response on a keep-alive connection (1xx heads included), cut at
    the end of the final response by a test-side h11."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    raw = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            raw += data
            conn.receive_data(data)
            continue
        if isinstance(event, h11.EndOfMessage):
            assert not conn.trailing_data[0], "bytes after the response"
            return bytes(raw)
        if isinstance(event, h11.ConnectionClosed):
            raise AssertionError(f"the proxy closed the connection after {bytes(raw)!r}")


def parse_responses(raw: bytes, methods: list[bytes]) -> list[tuple[int, bytes]]:
    """(status, payload) of every response head in ``raw``, read to its end (1xx heads too, with an
    empty payload): the answers to requests with ``methods``, in order, the last one possibly
    delimited by the connection's end. Test-side h11, one connection per response."""
    found: list[tuple[int, bytes]] = []
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(raw)
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(b"")  # what is left ends with the connection
                continue
            if isinstance(event, h11.InformationalResponse):
                found.append((event.status_code, b""))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                found.append((status, bytes(body)))
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        raw = bytes(conn.trailing_data[0])
    assert not raw, f"bytes after the last response: {raw!r}"
    return found


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    """A CRLF-terminated head (with its blank line) and what follows."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    return head + sep, rest


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body, read by a test-side h11."""
    [(_status, payload)] = parse_responses(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body, [b"GET"]
    )
    return payload


def raw_inspect(out: Path, exchange_id: str, side: str) -> bytes:
    """What ``wirecap inspect OUT --id ID --raw SIDE`` prints."""
    result = CliRunner().invoke(
        main, ["inspect", str(out), "--id", exchange_id, "--raw", side], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


# -- a raw upstream -------------------------------------------------------------------------------------


Answer = Callable[[trio.SocketStream], Awaitable[None]]


@dataclasses.dataclass
class UpstreamConnection:
    """One connection the upstream accepted: every byte it received, and the request in them."""

    received: bytearray = dataclasses.field(default_factory=bytearray)
    request: h11.Request | None = None
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    #: Set once the connection is over (the proxy closed it).
    closed: trio.Event = dataclasses.field(default_factory=trio.Event)


class WireUpstream:
    """A raw TCP upstream on 127.0.0.1: it logs every byte each connection receives, reads one
    request per connection (a test-side h11 finds where it ends), lets ``answer`` write raw bytes,
    and then reads (and logs) until the proxy closes the connection. ``on_read`` sees the
    connection's bytes so far after each read."""

    def __init__(
        self,
        answer: Answer,
        *,
        on_read: Callable[[bytes], None] | None = None,
    ) -> None:
        self.answer = answer
        self.on_read = on_read
        self.port = 0
        self.connections: list[UpstreamConnection] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, [listener])

    async def _serve(self, stream: trio.SocketStream) -> None:
        log = UpstreamConnection()
        self.connections.append(log)
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    log.received += data
                    if self.on_read is not None:
                        self.on_read(bytes(log.received))
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    log.request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    log.trailers = list(event.headers.raw_items())
                    break
                else:
                    raise AssertionError(f"upstream got {event!r}")
            log.body = bytes(body)
            await self.answer(stream)
            while data := await stream.receive_some(65536):
                log.received += data
        finally:
            await trio.aclose_forcefully(stream)
            log.closed.set()

    async def finished(self) -> list[UpstreamConnection]:
        """Every connection, once each is over (call after the proxy stopped)."""
        with trio.fail_after(HANG_GUARD):
            for log in self.connections:
                await log.closed.wait()
        return self.connections


@pytest.fixture
async def start_wire_upstream(nursery: trio.Nursery) -> Callable[..., Awaitable[WireUpstream]]:
    async def start(answer: Answer, **options: Any) -> WireUpstream:
        upstream = WireUpstream(answer, **options)
        await nursery.start(upstream.run)
        return upstream

    return start


async def only_exchange(proxy: Any) -> Exchange:
    with await proxy.capture() as capture:
        [exchange] = list(capture.exchanges())
    return exchange


# -- 1. h11 made every event ----------------------------------------------------------------------------


@dataclasses.dataclass
class SeenConnection:
    conn: h11.Connection  # kept alive, so that no other connection gets its id
    role: type[h11.CLIENT | h11.SERVER]
    creator: str  # the module whose code constructed it
    events: list[Any] = dataclasses.field(default_factory=list)  # what next_event returned
    #: ("in", event) for what next_event returned, ("out", event) for what it was given to send
    timeline: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    callers: set[str] = dataclasses.field(default_factory=set)  # modules that called next_event

    def answered(self) -> list[tuple[str, str, int]]:
        """(method, target, status) of every response head returned, with the request it
        answers: the last one sent before it."""
        found: list[tuple[str, str, int]] = []
        request: h11.Request | None = None
        for direction, event in self.timeline:
            if direction == "out" and isinstance(event, h11.Request):
                request = event
            elif direction == "in" and isinstance(event, h11.Response | h11.InformationalResponse):
                assert request is not None, event
                found.append((request.method.decode(), request.target.decode(), event.status_code))
        return found


class H11Spy:
    """Wraps ``h11.Connection.__init__``, ``next_event`` and ``send`` (public API) to record, per
    connection, its ``our_role``, who made it, every event it returned and every event it sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[int, SeenConnection] = {}
        original_init = h11.Connection.__init__
        original_next_event = h11.Connection.next_event
        original_send = h11.Connection.send
        seen = self.seen

        @functools.wraps(original_init)
        def init(conn: h11.Connection, *args: Any, **kwargs: Any) -> None:
            original_init(conn, *args, **kwargs)
            creator = sys._getframe(1).f_globals.get("__name__", "?")
            seen[id(conn)] = SeenConnection(conn, conn.our_role, creator)

        @functools.wraps(original_next_event)
        def next_event(conn: h11.Connection) -> Any:
            event = original_next_event(conn)
            record = seen.get(id(conn))
            if record is not None and record.conn is conn:
                record.events.append(event)
                record.timeline.append(("in", event))
                record.callers.add(sys._getframe(1).f_globals.get("__name__", "?"))
            return event

        @functools.wraps(original_send)
        def send(conn: h11.Connection, event: Any) -> Any:
            record = seen.get(id(conn))
            if record is not None and record.conn is conn:
                record.timeline.append(("out", event))
            return original_send(conn, event)

        monkeypatch.setattr(h11.Connection, "__init__", init)
        monkeypatch.setattr(h11.Connection, "next_event", next_event)
        monkeypatch.setattr(h11.Connection, "send", send)

    def proxy_connections(self, role: type[h11.CLIENT | h11.SERVER]) -> list[SeenConnection]:
        """The connections the proxy (``wirecap.proxy.*``) made in ``role``."""
        return [
            s
            for s in self.seen.values()
            if s.creator.startswith("wirecap.proxy.") and s.role is role
        ]


def test_the_proxy_has_no_parser_of_its_own():
    assert importlib.util.find_spec("wirecap.proxy.http1") is None
    modules = {m.name for m in pkgutil.iter_modules(wirecap.proxy.__path__)}
    assert "http1" not in modules
    assert {"server", "relay", "messages", "upstream"} <= modules


async def test_h11_made_every_request_and_response_event_relayed(
    monkeypatch, start_upstream, start_proxy
):
    spy = H11Spy(monkeypatch)

    async def handler(ex):
        target = ex.request.target
        if target == "/expect":
            assert ex.request.header("expect") == b"100-continue"
            await ex.send(h11.InformationalResponse(status_code=100, headers=[]))
            body = await ex.read_body()
            await ex.respond(200, b"got " + body)
        elif target == "/early":
            await ex.read_body()
            await ex.send(
                h11.InformationalResponse(status_code=103, headers=[("Link", "</s.css>; rel=x")])
            )
            await ex.respond(200, b"ok")
        elif ex.request.method == "HEAD":
            await ex.send_head(200, [("Content-Length", "1234")])
            await ex.end()
        elif target == "/204":
            await ex.read_body()
            await ex.send_head(204, [])
            await ex.end()
        elif target == "/close-delimited":
            await ex.read_body()
            await ex.send_raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            await ex.stream.aclose()
        else:
            body = await ex.read_body()
            await ex.respond(200, target.encode() + b":" + body)

    upstream = await start_upstream(handler)
    proxy = await start_proxy(upstream=upstream.url)
    sent: list[tuple[str, str]] = []  # (method, target) of every request the clients sent
    #: (method, target, status) of every response head the clients received, 1xx included
    heads: list[tuple[str, str, int]] = []

    # httpx, keep-alive: six requests on one connection (the last answer ends it)
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=proxy.url) as client:
            for method, target, kwargs in [
                ("GET", "/ka/1", {}),
                ("POST", "/ka/2", {"json": {"model": "m"}}),
                ("HEAD", "/head", {}),
                ("GET", "/204", {}),
                ("GET", "/ka/3", {}),
                ("GET", "/close-delimited", {}),
            ]:
                r = await client.request(method, target, **kwargs)
                sent.append((method, target))
                heads.append((method, target, r.status_code))
                if target == "/close-delimited":
                    assert r.content == b"until the end"
    assert [status for _, _, status in heads] == [200, 200, 200, 204, 200, 200]

    # two pipelined requests in one write
    raw = await raw_exchange(
        proxy.port,
        b"POST /pipe/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
        b"POST /pipe/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nB",
    )
    sent += [("POST", "/pipe/1"), ("POST", "/pipe/2")]
    answers = parse_responses(raw, [b"POST", b"POST"])
    assert answers == [(200, b"/pipe/1:A"), (200, b"/pipe/2:B")]
    heads += [("POST", "/pipe/1", 200), ("POST", "/pipe/2", 200)]

    # a chunked request body
    raw = await raw_exchange(
        proxy.port,
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n",
        b"5;e=1\r\nhello\r\n",
        b"1\r\n!\r\n0\r\n\r\n",
    )
    sent.append(("POST", "/chunked"))
    answers = parse_responses(raw, [b"POST"])
    assert answers == [(200, b"/chunked:hello!")]
    heads.append(("POST", "/chunked", 200))

    # Expect: 100-continue: the body goes only once the 100 arrived
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(
                b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            raw_100 = b""
            while b"\r\n\r\n" not in raw_100:
                data = await stream.receive_some(65536)
                assert data, raw_100
                raw_100 += data
            assert raw_100.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hello")
            while data := await stream.receive_some(65536):
                raw_100 += data
    sent.append(("POST", "/expect"))
    answers = parse_responses(raw_100, [b"POST"])
    assert answers == [(100, b""), (200, b"got hello")]
    heads += [("POST", "/expect", 100), ("POST", "/expect", 200)]

    # a 1xx (103) before the final answer
    raw = await raw_exchange(
        proxy.port, b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    sent.append(("GET", "/early"))
    answers = parse_responses(raw, [b"GET"])
    assert answers == [(103, b""), (200, b"ok")]
    heads += [("GET", "/early", 103), ("GET", "/early", 200)]

    # an HTTP/1.0 client
    raw = await raw_exchange(proxy.port, b"GET /http10 HTTP/1.0\r\n\r\n")
    sent.append(("GET", "/http10"))
    answers = parse_responses(raw, [b"GET"])
    assert answers == [(200, b"/http10:")]
    heads.append(("GET", "/http10", 200))

    await proxy.stop()

    # Requests: each one the upstream received is an h11.Request that a SERVER-role connection of
    # the proxy returned, one fresh connection per request.
    servers = spy.proxy_connections(h11.SERVER)
    proxy_requests = [
        (e.method.decode(), e.target.decode())
        for s in servers
        for e in s.events
        if isinstance(e, h11.Request)
    ]
    upstream_requests = [(r.method, r.target) for r in upstream.requests]
    assert len(upstream_requests) == len(sent) == 12
    assert Counter(proxy_requests) == Counter(upstream_requests) == Counter(sent)
    assert all(sum(isinstance(e, h11.Request) for e in s.events) <= 1 for s in servers)
    http10 = [
        e
        for s in servers
        for e in s.events
        if isinstance(e, h11.Request) and e.target == b"/http10"
    ]
    assert [e.http_version for e in http10] == [b"1.0"]
    # every request body the proxy relayed ended in an h11 EndOfMessage
    with_request = [s for s in servers if any(isinstance(e, h11.Request) for e in s.events)]
    assert all(any(isinstance(e, h11.EndOfMessage) for e in s.events) for s in with_request)

    # Responses: each head a client received is an h11 Response/InformationalResponse that a
    # CLIENT-role connection of the proxy returned, answering the same request.
    clients = spy.proxy_connections(h11.CLIENT)
    assert clients
    proxy_heads = [head for s in clients for head in s.answered()]
    assert len(heads) == 14
    assert Counter(proxy_heads) == Counter(heads)
    assert proxy.server.stats.connections == 6  # httpx kept its one connection for six requests
    assert sum(isinstance(e, h11.EndOfMessage) for s in clients for e in s.events) == 12

    # only the proxy's own code asked its connections for events
    for s in servers + clients:
        assert all(c.startswith("wirecap.proxy.") for c in s.callers), s.callers
    assert {s.creator for s in servers} == {"wirecap.proxy.server"}
    assert {s.creator for s in clients} == {"wirecap.proxy.upstream"}


# -- 2. exact wire bytes ----------------------------------------------------------------------------------

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-ID: r-1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
#: A chunked body with a quoted chunk extension, odd sizes, upper-case and zero-padded hex, and a
#: trailer, in writes cut inside chunk-size lines, inside data and inside the trailer.
RESPONSE_WRITES = [
    b'5;ext="a b"\r\nhel',
    b"lo\r\n1",
    b"B;n=1\r\n" + bytes(range(65, 65 + 27)) + b"\r\n00A\r\n0123456789\r\n3\r\nxy",
    b"z\r\n1FF\r\n" + b"." * 511 + b"\r\n0\r\nX-Tra",
    b"iler: 1\r\n\r\n",
]
RESPONSE_BODY = b"".join(RESPONSE_WRITES)
RESPONSE_PAYLOAD = b"hello" + bytes(range(65, 65 + 27)) + b"0123456789" + b"xyz" + b"." * 511

REQUEST_HEAD = (
    b"POST /v1/upload?x=1 HTTP/1.1\r\nHost: client.example\r\nContent-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)
REQUEST_WRITES = [
    b'4;name="v w"\r\nabcd\r\n0B\r\nefghij',
    b"klmno\r\n0\r\nX-Req-Trailer: yes\r\n\r\n",
]
REQUEST_BODY = b"".join(REQUEST_WRITES)
REQUEST_PAYLOAD = b"abcdefghijklmno"


def body_records(exchange: Exchange, direction: str) -> list[bytes]:
    """The stored body records of one direction: wire bytes, one record per read."""
    return [c.data for c in exchange.chunks if c.dir == direction]


def assert_payload_timed(exchange: Exchange) -> None:
    """Each payload chunk is non-empty and keeps the arrival time of its read, in order."""
    chunks = exchange.response_chunks
    assert chunks and all(c.data for c in chunks)
    wire_ns = [c.ns for c in exchange.chunks if c.dir == "res"]
    assert {c.ns for c in chunks} <= set(wire_ns)
    assert all(a.ns <= b.ns for a, b in itertools.pairwise(chunks))


async def test_chunked_bodies_both_ways_are_relayed_and_stored_byte_for_byte(
    start_wire_upstream, start_proxy
):
    async def answer(stream):
        await stream.send_all(RESPONSE_HEAD)
        for data in RESPONSE_WRITES:
            await stream.send_all(data)

    upstream = await start_wire_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url)
    received = await raw_exchange(proxy.port, REQUEST_HEAD, *REQUEST_WRITES)

    # the client: the upstream's head (plus the close it asked for), then the upstream's body bytes
    head, body = split_head(received)
    assert head == RESPONSE_HEAD[:-2] + b"Connection: close\r\n\r\n"
    assert body == RESPONSE_BODY
    assert dechunk(body) == RESPONSE_PAYLOAD

    exchange = await only_exchange(proxy)
    [conn] = await upstream.finished()
    # the upstream: the edited head, then the client's body bytes, extension and trailer included
    assert exchange.upstream_wire_head is not None
    assert bytes(conn.received) == exchange.upstream_wire_head + REQUEST_BODY
    assert exchange.upstream_wire_head == (
        b"POST /v1/upload?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % upstream.port
    )
    assert conn.body == REQUEST_PAYLOAD
    assert conn.trailers == [(b"X-Req-Trailer", b"yes")]

    # the capture: wire bytes
    assert exchange.outcome == "ok" and exchange.status == 200
    assert exchange.response_bytes() == RESPONSE_HEAD + RESPONSE_BODY
    assert b"".join(body_records(exchange, "res")) == RESPONSE_BODY
    assert exchange.request_bytes() == REQUEST_HEAD + REQUEST_BODY
    assert b"".join(body_records(exchange, "req")) == REQUEST_BODY
    assert exchange.upstream_request_bytes() == bytes(conn.received)
    # ... and the payload, each piece with the arrival time of its read
    assert exchange.response_body == RESPONSE_PAYLOAD
    assert exchange.request_body == REQUEST_PAYLOAD
    assert_payload_timed(exchange)
    assert exchange.end is not None
    assert exchange.end.res_bytes == len(RESPONSE_PAYLOAD)
    assert exchange.end.req_bytes == len(REQUEST_PAYLOAD)

    # wirecap inspect --raw prints the wire bytes
    assert raw_inspect(proxy.out, exchange.id, "response") == RESPONSE_HEAD + RESPONSE_BODY
    assert raw_inspect(proxy.out, exchange.id, "request") == REQUEST_HEAD + REQUEST_BODY
    assert raw_inspect(proxy.out, exchange.id, "upstream") == bytes(conn.received)


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
SSE_REQUEST_BODY = b'{"model":"gpt-wire","stream":true,"messages":[]}'
SSE_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SSE_REQUEST_BODY), SSE_REQUEST_BODY)
)
SSE_EVENTS = [
    b'data: {"model":"gpt-wire-1","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % word
    for word in (b"Hello", b" wire", b" bytes", b"!")
] + [b"data: [DONE]\n\n"]
#: One write per event, then the last chunk: chunk-size lines in upper-case hex.
SSE_WRITES = [b"%X\r\n%s\r\n" % (len(e), e) for e in SSE_EVENTS] + [b"0\r\n\r\n"]


async def sse_through_proxy(
    start_wire_upstream, start_proxy
) -> tuple[Any, WireUpstream, bytes, list[bytes]]:
    """An upstream that sends each SSE write only once the client holds the previous event's
    payload; returns the proxy, the upstream, what the client received, and what it had received
    each time an event's payload arrived."""
    got = [trio.Event() for _ in SSE_EVENTS]

    async def answer(stream):
        await stream.send_all(SSE_HEAD)
        for i, data in enumerate(SSE_WRITES):
            if i:
                await got[i - 1].wait()  # the proxy has read (and relayed) the previous write
            await stream.send_all(data)

    upstream = await start_wire_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url)
    snapshots: list[bytes] = []
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(SSE_REQUEST)
            received = bytearray()
            while data := await stream.receive_some(65536):
                received += data
                for event, arrived in zip(SSE_EVENTS, got, strict=True):
                    if not arrived.is_set() and event in received:
                        snapshots.append(bytes(received))
                        arrived.set()
    return proxy, upstream, bytes(received), snapshots


async def test_sse_written_event_by_event_is_relayed_and_stored_byte_for_byte(
    start_wire_upstream, start_proxy
):
    proxy, upstream, received, _ = await sse_through_proxy(start_wire_upstream, start_proxy)
    head, body = split_head(received)
    assert head == SSE_HEAD[:-2] + b"Connection: close\r\n\r\n"
    assert body == b"".join(SSE_WRITES)

    exchange = await only_exchange(proxy)
    await upstream.finished()
    assert exchange.outcome == "ok"
    assert exchange.response_bytes() == SSE_HEAD + b"".join(SSE_WRITES)
    assert b"".join(body_records(exchange, "res")) == b"".join(SSE_WRITES)
    # one payload chunk per read, that is per event here, each with its read's arrival time
    assert [c.data for c in exchange.response_chunks] == SSE_EVENTS
    assert_payload_timed(exchange)
    assert exchange.response_body == b"".join(SSE_EVENTS)
    assert raw_inspect(proxy.out, exchange.id, "response") == SSE_HEAD + b"".join(SSE_WRITES)
    facts = analyze_exchange(exchange).facts
    assert facts.streamed and facts.text == "Hello wire bytes!" and facts.terminated
    assert facts.model_returned == "gpt-wire-1"
    assert exchange.request_bytes() == SSE_REQUEST
    assert exchange.request_body == SSE_REQUEST_BODY


async def test_each_body_record_is_the_bytes_of_one_read(start_wire_upstream, start_proxy):
    """Each upstream write here is one read of the proxy (the next write waits for the client to
    hold this one's payload), so each body record, and each write to the client, is that write."""
    proxy, _upstream, received, snapshots = await sse_through_proxy(
        start_wire_upstream, start_proxy
    )
    head_size = len(split_head(received)[0])
    delivered = [s[head_size:] for s in snapshots]
    exchange = await only_exchange(proxy)
    records = body_records(exchange, "res")
    assert (records, delivered) == (
        SSE_WRITES,
        [b"".join(SSE_WRITES[: i + 1]) for i in range(len(SSE_EVENTS))],
    )


async def test_each_request_body_record_is_the_bytes_of_one_read(start_wire_upstream, start_proxy):
    """The client sends each chunk once the upstream holds the previous chunk's payload, so each
    read of the proxy is one write of the client: each request body record, and each write
    upstream, is that write."""
    writes = [b"5;a=1\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\nX-T: 1\r\n\r\n"]
    payloads = [b"hello", b" world"]
    arrived = [trio.Event() for _ in payloads]
    snapshots: list[bytes] = []

    def on_read(received: bytes) -> None:
        for payload, event in zip(payloads, arrived, strict=True):
            if not event.is_set() and payload in received:
                snapshots.append(received)
                event.set()

    async def answer(stream):
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = await start_wire_upstream(answer, on_read=on_read)
    proxy = await start_proxy(upstream=upstream.url)
    head = (
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(head + writes[0])
            await arrived[0].wait()
            await stream.send_all(writes[1])
            await arrived[1].wait()
            await stream.send_all(writes[2])
            while await stream.receive_some(65536):
                pass
    exchange = await only_exchange(proxy)
    assert b"".join(body_records(exchange, "req")) == b"".join(writes)
    delivered = [split_head(s)[1] for s in snapshots]
    assert (body_records(exchange, "req"), delivered) == (
        writes,
        [writes[0], writes[0] + writes[1]],
    )


async def test_http10_client_gets_the_payload_and_the_capture_keeps_the_chunks(
    start_wire_upstream, start_proxy
):
    async def answer(stream):
        await stream.send_all(RESPONSE_HEAD)
        for data in RESPONSE_WRITES:
            await stream.send_all(data)

    upstream = await start_wire_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url)
    request = b"GET /old HTTP/1.0\r\nUser-Agent: old/1.0\r\n\r\n"
    received = await raw_exchange(proxy.port, request)

    head, body = split_head(received)
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-ID: r-1\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert body == RESPONSE_PAYLOAD  # no chunk lines, no trailer: the close ends it

    exchange = await only_exchange(proxy)
    [conn] = await upstream.finished()
    # forwarded as HTTP/1.1, with the upstream's Host added at the end
    assert bytes(conn.received) == (
        b"GET /old HTTP/1.1\r\nUser-Agent: old/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % upstream.port
    )
    assert exchange.outcome == "ok" and exchange.status == 200
    assert exchange.request_bytes() == request
    assert exchange.response_bytes() == RESPONSE_HEAD + RESPONSE_BODY
    assert b"".join(body_records(exchange, "res")) == RESPONSE_BODY
    assert exchange.response_body == RESPONSE_PAYLOAD
    assert_payload_timed(exchange)
    assert raw_inspect(proxy.out, exchange.id, "response") == RESPONSE_HEAD + RESPONSE_BODY
    assert raw_inspect(proxy.out, exchange.id, "request") == request


# -- 3. format 1 captures -----------------------------------------------------------------------------


def sse_data(body: bytes) -> list[Any]:
    """The JSON of every ``data:`` line of an SSE body ([DONE] as the string)."""
    out: list[Any] = []
    for line in body.decode().splitlines():
        if line.startswith("data:"):
            value = line[5:].strip()
            out.append(value if value == "[DONE]" else json.loads(value))
    return out


@pytest.mark.parametrize(
    ("name", "model", "text"),
    [
        ("openai_chat_stream", "gpt-4o-mini-2024-07-18", "Hello there!"),
        ("anthropic_message_json", "claude-wirecap-test", "Let me check."),
    ],
)
def test_format1_captures_still_read(name, model, text):
    with open_capture(FORMAT1 / f"{name}.cbor.zst") as capture:
        assert [f.header.version for f in capture.files if f.header] == [1]
        exchanges = list(capture.exchanges())
        assert exchanges
        for exchange in exchanges:
            assert exchange.status == 200 and exchange.outcome == "ok"
            assert exchange.response is not None
            body = exchange.response_body
            if b"text/event-stream" in exchange.response.head:
                data = sse_data(body)
                assert data and data[-1] == "[DONE]"
                assert all(isinstance(d, dict) for d in data[:-1])
            else:
                assert isinstance(json.loads(body), dict)
            facts = analyze_exchange(exchange).facts
            assert facts.model_returned == model
            assert facts.text == text
            # the same exchange through the index
            again = capture.get(exchange.id)
            assert again is not None and again.response_body == body


# -- 4. heads, line by line ---------------------------------------------------------------------------

#: A request head: odd spacing, repeated headers, an obs-fold line, hop-by-hop headers and one that
#: Connection names (X-Drop).
REQUEST_LINES = [
    b"POST /v1/heads?q=1 HTTP/1.1",
    b"Host: client.example:8080",
    b"X-A:   v  ",
    b"x-rep: 1",
    b"Connection: keep-alive, X-Drop",
    b"X-Rep:2",
    b"X-Drop: gone",
    b"Keep-Alive: timeout=5",
    b"TE: trailers",
    b"Upgrade: h2c",
    b"X-Fold: first",
    b" \t second",
    b"Content-Type: text/plain",
    b"Content-Length: 2",
    b"X-Rep: 3",
]
#: An interim and a final response head, the same way.
INTERIM_LINES = [
    b"HTTP/1.1 103 Early Hints",
    b"Link: </a.css>;  rel=preload",
    b"Connection: keep-alive",
    b"Keep-Alive: timeout=5",
    b"Link:</b.js>; rel=preload ",
]
RESPONSE_LINES = [
    b"HTTP/1.1 200 OK",
    b"X-A:   v  ",
    b"x-rep: 1",
    b"Connection: X-Hop",
    b"X-Rep:2",
    b"X-Hop: 1",
    b"Keep-Alive: timeout=5",
    b"Upgrade: h2c",
    b"X-Fold: one",
    b"\ttwo",
    b"Content-Length: 2",
    b"X-Rep: 3",
]


def head_with(lines: list[bytes], ends: str) -> bytes:
    """``lines`` as a head whose line ends are CRLF, bare LF, or alternately one and the other."""
    marks = {
        "crlf": itertools.repeat(b"\r\n"),
        "lf": itertools.repeat(b"\n"),
        "mixed": itertools.cycle([b"\n", b"\r\n"]),
    }[ends]
    return b"".join(line + end for line, end in zip([*lines, b""], marks, strict=False))


def crlf_head(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@pytest.mark.parametrize("ends", ["crlf", "lf", "mixed"])
async def test_heads_are_forwarded_line_by_line_but_for_the_edited_lines(
    start_wire_upstream, start_proxy, ends
):
    request = head_with(REQUEST_LINES, ends) + b"hi"
    answer_bytes = head_with(INTERIM_LINES, ends) + head_with(RESPONSE_LINES, ends) + b"ok"

    async def answer(stream):
        await stream.send_all(answer_bytes)

    upstream = await start_wire_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(request)
            received = await read_one_response(stream, b"POST")

    # the client: each unedited line as the upstream sent it, CRLF-terminated, in order; the
    # hop-by-hop lines and X-Hop (named by Connection) gone, the obs-fold joined by one space
    assert received == (
        crlf_head([b"HTTP/1.1 103 Early Hints", b"Link: </a.css>;  rel=preload", INTERIM_LINES[-1]])
        + crlf_head(
            [
                b"HTTP/1.1 200 OK",
                b"X-A:   v  ",
                b"x-rep: 1",
                b"X-Rep:2",
                b"X-Fold: one two",
                b"Content-Length: 2",
                b"X-Rep: 3",
            ]
        )
        + b"ok"
    )

    exchange = await only_exchange(proxy)
    [conn] = await upstream.finished()
    # the upstream: the same for the request head, Host replaced in place by the upstream's
    forwarded = crlf_head(
        [
            b"POST /v1/heads?q=1 HTTP/1.1",
            b"Host: 127.0.0.1:%d" % upstream.port,
            b"X-A:   v  ",
            b"x-rep: 1",
            b"X-Rep:2",
            b"X-Fold: first second",
            b"Content-Type: text/plain",
            b"Content-Length: 2",
            b"X-Rep: 3",
        ]
    )
    assert bytes(conn.received) == forwarded + b"hi"
    assert conn.request is not None
    assert [v for k, v in conn.request.headers if k == b"x-rep"] == [b"1", b"2", b"3"]

    # the capture: each side as it crossed its wire, bare LFs included
    assert exchange.outcome == "ok" and exchange.status == 200
    assert exchange.request_bytes() == request
    assert exchange.upstream_wire_head == forwarded
    assert exchange.upstream_request_bytes() == forwarded + b"hi"
    assert exchange.response_bytes() == answer_bytes
    assert [h.status for h in exchange.responses] == [103, 200]
    assert exchange.request_body == b"hi" and exchange.response_body == b"ok"
    assert raw_inspect(proxy.out, exchange.id, "request") == request
    assert raw_inspect(proxy.out, exchange.id, "response") == answer_bytes


async def test_interim_heads_lose_the_headers_their_connection_header_names(
    start_wire_upstream, start_proxy
):
    answer_bytes = (
        b"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nX-Hop: 1\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok"
    )

    async def answer(stream):
        await stream.send_all(answer_bytes)

    upstream = await start_wire_upstream(answer)
    proxy = await start_proxy(upstream=upstream.url)
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"GET /hints HTTP/1.1\r\nHost: x\r\n\r\n")
            received = await read_one_response(stream)
    assert received == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
