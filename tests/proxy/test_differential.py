"""Differential test: the proxy and its upstream never disagree about where a request ends.

Request smuggling needs two HTTP/1.1 parsers that cut the same bytes into different requests: a
front end that sees one request and a back end that sees two, or a body boundary in two places.
Each case here sends one raw byte string to the proxy: ambiguous or malformed framing
(Content-Length and Transfer-Encoding variants, obs-fold, bare CR/LF, odd chunk sizes, extensions
and terminators), pipelined requests, and requests whose body contains the text of another request.
The proxy's upstream is written here: it logs every byte it receives on each connection and answers
each request it can parse, with h11 as the independent reference parser.

For every case one of two things holds, or the test fails:

* the proxy refused the request: the client got a JSON error (400, or 413/431/501 where that is the
  right answer), and the upstream received not one byte; or
* the requests h11 parses out of the bytes the upstream received are exactly the exchanges the proxy
  recorded as forwarded: same count and order, same methods, same targets, same body payloads.

So no request reaches the upstream that the proxy did not record, no body ends anywhere but where
the proxy ended it, and nothing the upstream cannot parse reaches it. On top of that each case says
what a correct proxy does with it (forward these requests, refuse it, or either of the two), the
client gets exactly one answer per recorded exchange, and no case leaves the proxy hanging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from typing import Any

import h11
import pytest
import trio

#: A guard against hangs only: every wait here ends on an answer or a closed connection, long before.
HANG_GUARD = 10.0
#: What the upstream answers to every request it parses.
UPSTREAM_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

#: A request as a server sees it: method, target and body payload (de-chunked).
Request = tuple[str, str, bytes]


# -- the upstream: raw bytes in, h11 as the reference parser -----------------------------------------


class ReferenceParser:
    """h11 reading the bytes one upstream connection received: the requests in them in order, and
    what is wrong when they are not a sequence of complete, well-formed requests."""

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER)
        self._head: tuple[int, str, str] | None = None
        self._body: list[bytes] = []
        #: (arrival number of the bytes that completed its head, request)
        self.requests: list[tuple[int, Request]] = []
        self.problem: str | None = None
        self.finished = False  # the connection can carry nothing more

    def feed(self, arrival: int, data: bytes) -> int:
        """Take the next bytes received (b"" for the end of the stream); return how many requests
        they completed."""
        if self.finished:
            if data:
                self._fail(
                    f"{len(data)} bytes arrived after the connection was done: {data[:80]!r}"
                )
            return 0
        conn = self._conn
        conn.receive_data(data)
        completed = 0
        while not self.finished:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                partial = f" (inside {self._head[1]} {self._head[2]})" if self._head else ""
                self._fail(f"h11 refused the bytes{partial}: {exc}")
                break
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                self._done()  # e.g. a request that ends its connection
            elif isinstance(event, h11.Request):
                method, target = event.method.decode("latin-1"), event.target.decode("latin-1")
                self._head, self._body = (arrival, method, target), []
            elif isinstance(event, h11.Data):
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert self._head is not None
                at, method, target = self._head
                self.requests.append((at, (method, target, b"".join(self._body))))
                self._head = None
                completed += 1
                self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                self.finished = True
        return completed

    def _answer(self) -> None:
        """Move h11 past our answer (the bytes sent are UPSTREAM_ANSWER)."""
        try:
            self._conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
            self._conn.send(h11.Data(data=b"ok"))
            self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._done()  # a CONNECT, which a 2xx answer turns into a tunnel

    def _done(self) -> None:
        self.finished = True
        leftover, _closed = self._conn.trailing_data
        if leftover:
            self._fail(f"{len(leftover)} bytes after the last request: {bytes(leftover[:80])!r}")

    def _fail(self, problem: str) -> None:
        self.finished = True
        if self.problem is None:
            self.problem = problem


@dataclasses.dataclass
class Received:
    """What reached the upstream, over all its connections."""

    requests: list[Request]  # in the order their heads arrived
    problems: list[str]
    total_bytes: int


class RecordingUpstream:
    """A raw TCP server on 127.0.0.1: logs every byte per connection, answers each request h11
    parses with :data:`UPSTREAM_ANSWER`, and closes a connection h11 refuses."""

    def __init__(self) -> None:
        self.port = 0
        self.logs: list[list[tuple[int, bytes]]] = []  # per connection: (arrival number, bytes)
        self._served: list[trio.Event] = []
        self._arrivals = itertools.count()
        self._barrier: tuple[int, trio.Event] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                barrier = self._barrier
                if barrier is not None and stream.socket.getpeername()[1] == barrier[0]:
                    barrier[1].set()
                    await stream.aclose()
                    continue
                log: list[tuple[int, bytes]] = []
                served = trio.Event()
                self.logs.append(log)
                self._served.append(served)
                nursery.start_soon(self._serve, stream, log, served)

    async def _serve(
        self, stream: trio.SocketStream, log: list[tuple[int, bytes]], served: trio.Event
    ) -> None:
        parser = ReferenceParser()
        try:
            while not parser.finished:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if data:
                    log.append((next(self._arrivals), data))
                answers = parser.feed(0, data)
                if answers:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(UPSTREAM_ANSWER * answers)
                if not data:
                    break
        finally:
            await trio.aclose_forcefully(stream)
            served.set()

    async def received(self) -> Received:
        """Once the proxy has stopped (and so closed its connections here): every byte the upstream
        got, parsed again connection by connection with a fresh h11."""
        # The kernel queues connections for accept() in the order they were made, so once a
        # connection made now has been accepted, so has every connection the proxy made; each of
        # those is served until the proxy's close reaches it.
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            barrier = self._barrier = (sock.getsockname()[1], trio.Event())
            await sock.connect(("127.0.0.1", self.port))
            await barrier[1].wait()
        for served in self._served:
            await served.wait()
        requests: list[tuple[int, Request]] = []
        problems = []
        for number, log in enumerate(self.logs, 1):
            parser = ReferenceParser()
            for arrival, data in log:
                parser.feed(arrival, data)
            parser.feed(-1, b"")
            requests += parser.requests
            if parser.problem is not None:
                problems.append(f"upstream connection {number}: {parser.problem}")
        requests.sort(key=lambda item: item[0])
        total = sum(len(data) for log in self.logs for _, data in log)
        return Received([request for _, request in requests], problems, total)


# -- the client side ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def is_json_error(self) -> bool:
        try:
            document = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(document, dict) and isinstance(document.get("error"), dict)


def split_answers(data: bytes) -> tuple[list[Answer], bytes]:
    """The complete final responses at the start of ``data`` (1xx heads skipped; bodies delimited
    by Content-Length, as both the upstream's and the proxy's own are) and the bytes after them."""
    answers = []
    pos = 0
    while (end := data.find(b"\r\n\r\n", pos)) >= 0:
        status_line, *lines = data[pos:end].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            break
        status = int(code)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:
            pos = end + 4
            continue
        length = headers.get("content-length", "0")
        if not length.isdigit() or len(data) < end + 4 + int(length):
            break
        answers.append(Answer(status, headers, data[end + 4 : end + 4 + int(length)]))
        pos = end + 4 + int(length)
    return answers, data[pos:]


async def converse(port: int, data: bytes, answers_expected: int) -> tuple[bytes, bool]:
    """Send ``data`` to the proxy in one write; once the answers a correct proxy gives are in (or the
    proxy closes), half-close and read to the end. Returns what the proxy sent, and whether the hang
    guard ran out."""
    received = bytearray()
    with trio.move_on_after(HANG_GUARD) as guard:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
            half_closed = False
            while True:
                if not half_closed and len(split_answers(received)[0]) >= answers_expected:
                    # Half-closing only now keeps the proxy from taking our end of stream for a
                    # client that gave up on requests it has not answered yet.
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.send_eof()
                    half_closed = True
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return bytes(received), guard.cancelled_caught


# -- what the proxy recorded ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recorded:
    method: str | None
    target: str | None
    status: int | None
    outcome: str
    forwarded: bool
    body: bytes

    def as_request(self) -> Request:
        return (self.method or "", origin_form(self.target or ""), self.body)


def recorded_exchanges(capture: Any) -> list[Recorded]:
    return [
        Recorded(
            ex.method,
            ex.target,
            ex.status,
            ex.outcome,
            ex.upstream is not None,
            bytes(ex.request_body),
        )
        for ex in capture.exchanges()
    ]


def origin_form(target: str) -> str:
    """The target as a server behind a route without a prefix gets it: an absolute-form target
    loses its scheme and authority."""
    scheme_end = target.find("://")
    if target.startswith("/") or scheme_end < 0:
        return target
    slash = target.find("/", scheme_end + 3)
    return target[slash:] if slash >= 0 else "/"


# -- the cases ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    data: bytes
    #: What the upstream must receive when the proxy forwards; None: the proxy must refuse.
    requests: tuple[Request, ...] | None
    #: The statuses a refusal may have; empty: the proxy must forward.
    refusals: frozenset[int]
    proxy_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def answers_expected(self) -> int:
        return 1 if self.requests is None else len(self.requests)


def accept(case_id: str, data: bytes, *requests: Request, **proxy_args: Any) -> Any:
    return pytest.param(Case(data, requests, frozenset(), proxy_args), id=case_id)


def refuse(case_id: str, data: bytes, *statuses: int, **proxy_args: Any) -> Any:
    return pytest.param(Case(data, None, frozenset(statuses or (400,)), proxy_args), id=case_id)


def either(
    case_id: str, data: bytes, *requests: Request, refusals: tuple[int, ...] = (400,)
) -> Any:
    """RFC 9110/9112 allow both: forwarding (then the upstream gets ``requests``) or refusing."""
    return pytest.param(Case(data, requests, frozenset(refusals)), id=case_id)


def http(*lines: bytes, body: bytes = b"", eol: bytes = b"\r\n") -> bytes:
    """Each line followed by ``eol``, an empty line, then ``body``."""
    return b"".join(line + eol for line in lines) + eol + body


def post(
    *fields: bytes, body: bytes = b"", target: bytes = b"/x", version: bytes = b"HTTP/1.1"
) -> bytes:
    return http(b"POST " + target + b" " + version, b"Host: x", *fields, body=body)


HELLO: Request = ("POST", "/x", b"hello")
CL5 = b"Content-Length: 5"
TE = b"Transfer-Encoding: chunked"
NOT_CHUNKED = (400, 501)  # an unknown transfer coding: RFC 9112 6.1 says 501; 400 is fine too

CASES = [
    # Content-Length
    refuse("cl-and-te", post(CL5, TE, body=HELLO_CHUNKED)),
    refuse("te-and-cl", post(TE, CL5, body=HELLO_CHUNKED)),
    refuse("cl-conflicting", post(CL5, b"Content-Length: 7", body=b"hello")),
    either("cl-repeated", post(CL5, CL5, body=b"hello"), HELLO),
    either("cl-list-same", post(b"Content-Length: 5, 5", body=b"hello"), HELLO),
    refuse("cl-list-conflicting", post(b"Content-Length: 5, 6", body=b"hello")),
    refuse("cl-plus", post(b"Content-Length: +5", body=b"hello")),
    refuse("cl-minus", post(b"Content-Length: -5", body=b"hello")),
    accept("cl-padded", post(b"Content-Length:   5   ", body=b"hello"), HELLO),
    accept("cl-leading-zeros", post(b"Content-Length: 005", body=b"hello"), HELLO),
    refuse("cl-hex", post(b"Content-Length: 0x5", body=b"hello")),
    refuse("cl-empty", post(b"Content-Length: ", body=b"hello")),
    # Past 64 bits: an upstream with 64-bit lengths reads 2**64 + 5 as 5 and the rest as a request.
    refuse("cl-30-digits", post(b"Content-Length: " + b"9" * 30, body=b"hello"), 400, 413),
    refuse("cl-wraps-at-2**64", post(b"Content-Length: %d" % (2**64 + 5), body=b"hello"), 400, 413),
    # Transfer-Encoding
    refuse(
        "te-chunked-twice",
        post(b"Transfer-Encoding: chunked, chunked", body=HELLO_CHUNKED),
        *NOT_CHUNKED,
    ),
    refuse(
        "te-gzip-chunked",
        post(b"Transfer-Encoding: gzip, chunked", body=HELLO_CHUNKED),
        *NOT_CHUNKED,
    ),
    refuse(
        "te-two-lines", post(TE, b"Transfer-Encoding: identity", body=HELLO_CHUNKED), *NOT_CHUNKED
    ),
    refuse(
        "te-identity-then-chunked",
        post(b"Transfer-Encoding: identity", TE, body=HELLO_CHUNKED),
        *NOT_CHUNKED,
    ),
    accept("te-capitalized", post(b"Transfer-Encoding: Chunked", body=HELLO_CHUNKED), HELLO),
    accept("te-leading-tab", post(b"Transfer-Encoding:\tchunked", body=HELLO_CHUNKED), HELLO),
    accept("te-trailing-space", post(b"Transfer-Encoding: chunked ", body=HELLO_CHUNKED), HELLO),
    either(
        "te-trailing-comma",
        post(b"Transfer-Encoding: chunked,", body=HELLO_CHUNKED),
        HELLO,
        refusals=NOT_CHUNKED,
    ),
    refuse("te-xchunked", post(b"Transfer-Encoding: xchunked", body=HELLO_CHUNKED), *NOT_CHUNKED),
    refuse("te-in-http10", post(TE, body=HELLO_CHUNKED, version=b"HTTP/1.0")),
    # obs-fold (RFC 9112 5.2: refuse, or replace each fold with a space before reading the head)
    either("fold-space", post(b"X-Folded: a", b" b", CL5, body=b"hello"), HELLO),
    either("fold-tab", post(b"X-Folded: a", b"\tb", CL5, body=b"hello"), HELLO),
    either("fold-te", post(b"Transfer-Encoding:", b" chunked", body=HELLO_CHUNKED), HELLO),
    refuse("fold-te-with-cl", post(CL5, b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n")),
    either("fold-cl", post(b"Content-Length:", b" 5", body=b"hello"), HELLO),
    either(
        "space-before-first-field",
        b"POST /x HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        HELLO,
    ),
    # line ends and bytes a field may not hold
    either("bare-cr-in-value", post(b"X-Bad: a\rb", CL5, body=b"hello"), HELLO),
    either(
        "bare-cr-hides-te", post(b"X-Bad: a\rTransfer-Encoding: chunked", CL5, body=b"hello"), HELLO
    ),
    either(
        "bare-lf-lines", http(b"POST /x HTTP/1.1", b"Host: x", CL5, body=b"hello", eol=b"\n"), HELLO
    ),
    either("bare-lf-mixed", b"POST /x HTTP/1.1\r\nHost: x\nContent-Length: 5\r\n\r\nhello", HELLO),
    refuse("space-before-colon-cl", post(b"Content-Length : 5", body=b"hello")),
    refuse("space-before-colon-te", post(b"Transfer-Encoding : chunked", body=HELLO_CHUNKED)),
    either("nul-in-value", post(b"X-Bad: a\x00b", CL5, body=b"hello"), HELLO),
    either("nul-in-cl", post(b"Content-Length: 5\x00", body=b"hello"), HELLO),
    refuse(
        "head-too-large",
        http(b"GET /big HTTP/1.1", b"Host: x", b"X-Big: " + b"a" * 10_000),
        431,
        max_head=4096,
    ),
    # chunked bodies
    # Past 64 bits, as for Content-Length: 0x10000000000000005 wraps to 5.
    refuse("chunk-size-overflow", post(TE, body=b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
    refuse("chunk-size-wraps-at-2**64", post(TE, body=b"10000000000000005\r\nhello\r\n0\r\n\r\n")),
    refuse("chunk-size-negative", post(TE, body=b"-5\r\nhello\r\n0\r\n\r\n")),
    refuse("chunk-size-0x", post(TE, body=b"0x5\r\nhello\r\n0\r\n\r\n")),
    refuse("chunk-size-plus", post(TE, body=b"+5\r\nhello\r\n0\r\n\r\n")),
    refuse("chunk-size-short", post(TE, body=b"3\r\nhello\r\n0\r\n\r\n")),
    accept("chunk-ext", post(TE, body=b"5;ext=1\r\nhello\r\n0\r\n\r\n"), HELLO),
    accept(
        "chunk-ext-quoted", post(TE, body=b'5;name="quoted;value"\r\nhello\r\n0\r\n\r\n'), HELLO
    ),
    either(
        "chunk-ext-space-before-semicolon", post(TE, body=b"5 ;ext=1\r\nhello\r\n0\r\n\r\n"), HELLO
    ),
    accept("chunk-trailers", post(TE, body=b"5\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n"), HELLO),
    refuse("chunk-missing-crlf", post(TE, body=b"5\r\nhello0\r\n\r\n")),
    refuse("chunk-bad-terminator", post(TE, body=b"5\r\nhelloXX0\r\n\r\n")),
    either("chunk-data-bare-lf", post(TE, body=b"5\r\nhello\n0\r\n\r\n"), HELLO),
    either("chunk-size-bare-lf", post(TE, body=b"5\nhello\r\n0\r\n\r\n"), HELLO),
    # pipelining, bodies that look like requests, methods and targets
    accept(
        "pipelined-two",
        http(b"GET /first HTTP/1.1", b"Host: x") + post(CL5, body=b"hello", target=b"/second"),
        ("GET", "/first", b""),
        ("POST", "/second", b"hello"),
    ),
    accept(
        "cl-body-holds-a-request",
        post(b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
        ("POST", "/x", SMUGGLED),
    ),
    accept(
        "chunk-holds-a-request",
        post(TE, body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
        ("POST", "/x", SMUGGLED),
    ),
    accept(
        "request-after-cl-body",
        post(CL5, body=b"hello" + SMUGGLED),
        HELLO,
        ("GET", "/smuggled", b""),
    ),
    accept(
        "request-after-last-chunk",
        post(TE, body=HELLO_CHUNKED + SMUGGLED),
        HELLO,
        ("GET", "/smuggled", b""),
    ),
    accept(
        "get-with-body",
        http(b"GET /g HTTP/1.1", b"Host: x", CL5, body=b"hello"),
        ("GET", "/g", b"hello"),
    ),
    accept("http10-with-body", post(CL5, body=b"hello", version=b"HTTP/1.0"), HELLO),
    either(
        "lowercase-method",
        http(b"get /lower HTTP/1.1", b"Host: x"),
        ("get", "/lower", b""),
        refusals=(400, 501),
    ),
    accept(
        "absolute-form",
        http(b"GET http://x/abs?q=1 HTTP/1.1", b"Host: x"),
        ("GET", "/abs?q=1", b""),
    ),
    accept("expect-100-continue", post(b"Expect: 100-continue", CL5, body=b"hello"), HELLO),
    refuse("connect", http(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 501),
]


# -- the test -----------------------------------------------------------------------------------------------


def check(
    case: Case, sent_back: bytes, hung: bool, recorded: list[Recorded], received: Received
) -> list[str]:
    """Every way this case's run breaks the invariant or the case's expectation."""
    problems = []
    answers, junk = split_answers(sent_back)
    if hung:
        problems.append(f"the proxy neither answered nor closed within {HANG_GUARD:g}s")
    if not answers:
        problems.append("the proxy sent back no complete response")
    if junk:
        problems.append(f"the proxy sent back bytes that are no complete response: {junk[:200]!r}")

    # The differential invariant: the upstream's requests are the proxy's forwarded exchanges.
    problems += received.problems
    forwarded = [r.as_request() for r in recorded if r.forwarded]
    if received.requests != forwarded:
        problems.append(
            f"the upstream parsed {received.requests!r}, "
            f"but the proxy recorded forwarding {forwarded!r}"
        )
    problems += [
        f"{r.method} {r.target} was neither forwarded nor refused (status {r.status})"
        for r in recorded
        if not r.forwarded and (r.status is None or r.status < 400)
    ]
    if not received.total_bytes:
        problems += [
            f"{r.method} {r.target} was refused ({r.status}) and nothing reached the upstream, "
            "yet the capture records an upstream request for it"
            for r in recorded
            if r.forwarded and r.status is not None and r.status >= 400
        ]
    if [a.status for a in answers] != [r.status for r in recorded]:
        problems.append(
            f"the client got statuses {[a.status for a in answers]}, "
            f"the capture records {[r.status for r in recorded]}"
        )

    # What a correct proxy does with this case.
    if any(a.status != 200 for a in answers):
        if not case.refusals:
            problems.append(
                f"the proxy refused requests it must forward ({[a.status for a in answers]})"
            )
        else:
            if len(answers) != 1:
                problems.append(f"a refusal is one answer, not {len(answers)}")
            for a in answers:
                if a.status not in case.refusals:
                    problems.append(f"refused with {a.status}, not {sorted(case.refusals)}")
                if not a.is_json_error():
                    problems.append(f"the {a.status} has no JSON error body: {a.body[:200]!r}")
            if received.total_bytes:
                problems.append(f"the upstream received {received.total_bytes} bytes of it")
    elif answers:
        if case.requests is None:
            problems.append(f"the proxy forwarded what it must refuse with {sorted(case.refusals)}")
        else:
            if len(answers) != len(case.requests) or any(a.body != b"ok" for a in answers):
                problems.append(
                    f"{len(case.requests)} upstream answers expected, the client got {answers!r}"
                )
            if received.requests != list(case.requests):
                problems.append(
                    f"the upstream should have received {list(case.requests)!r}, "
                    f"not {received.requests!r}"
                )
    return problems


@pytest.mark.parametrize("case", CASES)
async def test_proxy_and_upstream_agree_where_each_request_ends(nursery, start_proxy, case):
    upstream = RecordingUpstream()
    await nursery.start(upstream.run)
    proxy = await start_proxy(upstream=upstream.url, **case.proxy_args)
    sent_back, hung = await converse(proxy.port, case.data, case.answers_expected)
    with trio.fail_after(HANG_GUARD):
        with await proxy.capture() as capture:
            recorded = recorded_exchanges(capture)
        received = await upstream.received()
    problems = check(case, sent_back, hung, recorded, received)
    assert not problems, "\n".join(
        [
            *problems,
            f"-- sent to the proxy: {case.data[:300]!r}",
            f"-- the client got: {sent_back[:600]!r}",
            "-- the proxy recorded:",
            *(f"   {r}" for r in recorded),
            "-- the upstream received, connection by connection:",
            *(f"   {b''.join(data for _, data in log)[:300]!r}" for log in upstream.logs),
        ]
    )


async def test_an_oversized_chunk_size_in_a_later_read_never_reaches_the_upstream(
    nursery, start_proxy
):
    """The head and a first chunk go upstream; the next size line, in a read of its own and cut in
    two, is 2**63: the proxy stops the request there, and the upstream never sees that line."""
    upstream = RecordingUpstream()
    await nursery.start(upstream.run)
    proxy = await start_proxy(upstream=upstream.url)
    head = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(head)
            while not any(b"hello" in data for log in upstream.logs for _, data in log):
                await trio.sleep(0.01)  # the first chunk has reached the upstream
            await stream.send_all(b"80000000")
            await stream.send_all(b"00000000\r\nsmuggled")
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"too large" in answer
    await proxy.stop()
    received = await upstream.received()
    seen = b"".join(data for log in upstream.logs for _, data in log)
    assert b"8000000000000000" not in seen and b"smuggled" not in seen
    assert received.requests == []  # the request never completed upstream
