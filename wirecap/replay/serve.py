"""``wirecap serve``: a mock backend that answers from a capture, with the recorded timing (trio + h11).

The recorded response head is sent as recorded (status, reason, header names and values in their
order; only hop-by-hop headers are dropped and framing is left to h11), then the body chunk by chunk,
each after its recorded gap scaled by ``speed`` (None: no waiting). A request that matches nothing gets
``miss_status`` with a JSON body naming the closest recorded requests, never a wrong answer.

With a :class:`~wirecap.replay.fault_capture.FaultRecorder` (``serve --out``), every answer given
under an injected fault is recorded, exactly as it went on the wire; plain hits are not (they are
copies of the capture served).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import h11
import trio

from wirecap.inspect.paint import Paint, plain, status_role
from wirecap.llm import EventAllowance, parse_head
from wirecap.proxy.messages import HOP_BY_HOP, RawTap, upgrade_request
from wirecap.replay.catalog import Catalog, Miss, Recorded, recorded_from
from wirecap.replay.sessions import SessionCatalog, session_from
from wirecap.replay.wire import RequestWire
from wirecap.replay.wsserve import BadHandshake, serve_session

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wirecap.capture import Capture
    from wirecap.faults import FaultPlan
    from wirecap.replay.fault_capture import FaultRecorder

MAX_REQUEST_BODY = 64 * 1024 * 1024  # a mock for tests: larger requests are refused (413)
_clock = time.perf_counter_ns  # exchange times in a recording (ns since the request head was in)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Served:
    """One request the mock answered: what ``wirecap serve`` logs."""

    wall_ns: int  # when the request arrived
    method: str
    target: str
    recording: str | None  # the id of the recorded exchange that answered; None for a miss
    status: int
    how: str = "recorded"  # "recorded", "miss", "forwarded" (spy mode), "too large", "fault"
    detail: str | None = None  # for a miss: the closest recorded requests and what differs
    #: For an injected fault: the detail of its capture note (kind, spec, parameters).
    fault: Mapping[str, Any] | None = None


def served_lines(s: Served, paint: Paint = plain) -> list[str]:
    """``2026-11-23 12:00:01 POST /openai/v1/chat/completions -> c3442057d65e 200``: the time the
    request arrived, method, path, the recording that answered and the status. A miss reads
    ``-> miss 404`` and is followed by the closest recorded requests."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.wall_ns / 1e9))
    answer = s.recording if s.recording is not None else s.how
    if s.recording is None and s.fault is not None:
        answer = "synthesized" if s.fault.get("synthesized") else "injected"
    if s.recording is None and s.how == "miss":
        answer = paint(answer, "fail")
    status = paint(str(s.status), status_role(s.status)) if s.status else "(no answer)"
    lines = [f"{stamp} {s.method} {s.target} -> {answer} {status}"]
    if s.fault is not None:
        lines[0] += f" fault {s.fault['spec']}"
    if s.detail:
        lines.extend(s.detail.splitlines()[1:])
    return lines


#: Called on a miss instead of answering 404: (method, target, headers, body) -> (status, headers, body).
Fallback = Callable[
    [str, str, list[tuple[bytes, bytes]], bytes],
    Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]],
]

#: Answers a request the capture does not hold, on the mock's connection (spy mode, see spy.py):
#: (connection, stream, request, body, tell(status)).
MissHandler = Callable[
    [h11.Connection, trio.abc.Stream, h11.Request, bytes, Callable[[int], object]],
    Awaitable[None],
]


def load_catalog(
    capture: Capture,
    *,
    match_on: Sequence[str],
    ignore: Sequence[list[str | int | None]] = (),
    sequence: bool = False,
) -> Catalog:
    recorded = []
    sessions = []
    allowance = EventAllowance.for_files(capture.files)  # sessions' frames
    for exchange in capture.exchanges():
        if (answer := recorded_from(exchange, ignore)) is not None:
            recorded.append(answer)
        elif (session := session_from(exchange, allowance)) is not None:
            sessions.append(session)
    return Catalog(
        recorded,
        match_on=match_on,
        ignore=ignore,
        sequence=sequence,
        sessions=SessionCatalog(sessions, ignore),
    )


class MockServer:
    """Serves a :class:`Catalog`. ``await nursery.start(server.run)`` returns (host, port)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = 1.0,
        miss_status: int = 404,
        fallback: Fallback | None = None,
        on_answer: Callable[[Served], object] | None = None,
        faults: FaultPlan | None = None,
        miss_handler: MissHandler | None = None,
        recorder: FaultRecorder | None = None,
    ) -> None:
        """``on_answer`` is told of each request once its answer starts (``wirecap serve`` logs
        them); ``faults`` picks the requests that get an injected fault (see
        :mod:`wirecap.replay.faulting`); ``recorder`` records each answer given under a fault
        (``serve --out``, see :mod:`wirecap.replay.fault_capture`)."""
        self.catalog = catalog
        self.host, self.port = host, port
        self.speed = speed
        self.miss_status = miss_status
        self.fallback = fallback
        self.on_answer = on_answer
        self.faults = faults
        self.miss_handler = miss_handler
        self.recorder = recorder
        self.misses: list[Miss] = []
        self.served: list[str] = []
        self._listeners: list[trio.SocketListener] = []

    async def bind(self) -> tuple[str, int]:
        """Listen now (:meth:`run` does it otherwise), so that a taken address fails before
        anything else starts, such as a capture."""
        if not self._listeners:
            self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            self.port = self._listeners[0].socket.getsockname()[1]
        return self.host, self.port

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(await self.bind())
        await trio.serve_listeners(self._connection, self._listeners)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        tap = RawTap(conn) if self.recorder is not None else None  # the bytes, for a recording
        try:
            while True:
                request = await _next(conn, stream, tap)
                if not isinstance(request, h11.Request):
                    return
                arrived_ns = time.time_ns()
                wire = None
                if tap is not None:
                    wire = RequestWire(head=tap.take(), wall_ns=arrived_ns, t0_ns=_clock())
                await _continue(conn, stream, wire)
                body = bytearray()
                too_big = False
                while True:
                    event = await _next(conn, stream, tap)
                    if tap is not None and isinstance(event, h11.Data | h11.EndOfMessage):
                        raw = tap.take()  # taken even when not kept: the tap holds no more
                        size = len(event.data) if isinstance(event, h11.Data) else 0
                        if wire is not None:
                            wire.read(_clock() - wire.t0_ns, raw, size)
                    if isinstance(event, h11.Data):
                        body += event.data
                        too_big = too_big or len(body) > MAX_REQUEST_BODY
                        if too_big:
                            del body[:]
                            wire = None  # a 413 is not recorded
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                if await self._session(stream, conn, request, arrived_ns):
                    return
                if too_big:
                    self._tell(arrived_ns, request, None, 413, "too large")
                    await _send_json(
                        conn,
                        stream,
                        413,
                        {
                            "error": {
                                "type": "wirecap_too_large",
                                "message": "request body over 64 MiB",
                            }
                        },
                    )
                else:
                    await self._answer(conn, stream, request, bytes(body), arrived_ns, wire)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except h11.RemoteProtocolError as exc:
            await _refuse(conn, stream, exc)
        except h11.LocalProtocolError:
            return  # an answer h11 will not frame (a body to a HEAD request): this connection ends
        finally:
            await trio.aclose_forcefully(stream)

    async def _session(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, wall_ns: int
    ) -> bool:
        """Answer a WebSocket handshake on a path with recorded sessions; False for any other
        request (a handshake on a path without one is a miss like any request)."""
        sessions = self.catalog.sessions
        if upgrade_request(request.headers) is None or not sessions:
            return False
        path = request.target.decode("latin-1").split("?", 1)[0]
        if not sessions.on_path(path):
            return False
        try:
            answered = await serve_session(
                stream, request, conn.trailing_data[0], sessions, self.speed
            )
        except BadHandshake as exc:
            await _send_json(conn, stream, 400, {"error": f"bad WebSocket handshake: {exc}"})
            self._tell(wall_ns, request, None, 400, "miss", f"bad WebSocket handshake: {exc}")
            return True
        if answered is not None:
            self.served.append(answered.id)
            self._tell(wall_ns, request, answered.id, 101, "recorded")
        else:
            detail = (
                "miss\n  no recorded session on this path starts with the client's first message"
            )
            self._tell(wall_ns, request, None, 101, "miss", detail)
        return True

    def _tell(
        self,
        wall_ns: int,
        request: h11.Request,
        recording: str | None,
        status: int,
        how: str,
        detail: str | None = None,
        fault: Mapping[str, Any] | None = None,
    ) -> None:
        if self.on_answer is not None:
            self.on_answer(
                Served(
                    wall_ns=wall_ns,
                    method=request.method.decode("latin-1"),
                    target=request.target.decode("latin-1"),
                    recording=recording,
                    status=status,
                    how=how,
                    detail=detail,
                    fault=fault,
                )
            )

    def tell_fault(
        self,
        wall_ns: int,
        request: h11.Request,
        recording: str | None,
        status: int,
        note: Mapping[str, Any],
    ) -> None:
        """Tell ``on_answer`` of a request answered under an injected fault (``note``: its detail)."""
        self._tell(wall_ns, request, recording, status, "fault", fault=note)

    async def _answer(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: h11.Request,
        body: bytes,
        arrived_ns: int,
        wire: RequestWire | None = None,
    ) -> None:
        method, target = request.method.decode(), request.target.decode("latin-1")
        if self.faults is not None and (fault := self.faults.choose(target, body)) is not None:
            from wirecap.replay.faulting import answer_with_fault

            if self.recorder is None or wire is None:
                answered = await answer_with_fault(
                    self, conn, stream, request, body, arrived_ns, fault
                )
            else:
                listen = (self.host, self.port)
                with self.recorder.exchange(wire, request, stream, listen) as recording:
                    answered = await answer_with_fault(
                        self, conn, recording.stream, request, body, arrived_ns, fault,
                        noted=recording.noted,
                    )  # fmt: skip
            if answered:
                return
        found = self.catalog.lookup(method, target, body)
        if isinstance(found, Miss):
            if self.miss_handler is not None:
                tell = functools.partial(self._tell, arrived_ns, request, None, how="forwarded")
                await self.miss_handler(conn, stream, request, body, tell)
                return
            if self.fallback is not None:
                status, headers, answer = await self.fallback(
                    method, target, list(request.headers.raw_items()), body
                )
                self._tell(arrived_ns, request, None, status, "forwarded")
                await _send(
                    conn,
                    stream,
                    h11.Response(status_code=status, headers=_framable(headers, len(answer))),
                    answer,
                )
                return
            self.misses.append(found)
            self._tell(arrived_ns, request, None, self.miss_status, "miss", found.describe())
            await _send_json(conn, stream, self.miss_status, found.to_json())
            return
        self.served.append(found.id)
        self._tell(arrived_ns, request, found.id, found.status, "recorded")
        await self._replay(conn, stream, found)

    async def _replay(
        self, conn: h11.Connection, stream: trio.SocketStream, recorded: Recorded
    ) -> None:
        await self._wait(recorded.head_delay_ns)
        head = parse_head(recorded.head)
        parts = head.start_line.split(" ", 2)
        reason = parts[2].encode("latin-1") if len(parts) > 2 else b""
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in head.headers
            if k.lower().encode() not in HOP_BY_HOP
        ]
        await _write(
            stream,
            conn.send(h11.Response(status_code=recorded.status, headers=headers, reason=reason)),
        )
        for delay, chunk in recorded.chunks:
            await self._wait(delay)
            if chunk and conn.our_state is h11.SEND_BODY:
                await _write(stream, conn.send(h11.Data(data=chunk)))
        if recorded.cut:
            # The recording broke off here: so does the answer (the connection closes mid-body).
            raise trio.ClosedResourceError("recorded response was cut off")
        await _write(stream, conn.send(h11.EndOfMessage()))

    async def _wait(self, ns: int) -> None:
        if self.speed and ns > 0:
            await trio.sleep(ns / 1e9 / self.speed)


def _framable(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    out = [
        (k, v)
        for k, v in headers
        if k.lower() not in HOP_BY_HOP | {b"transfer-encoding", b"content-length"}
    ]
    return [*out, (b"Content-Length", str(length).encode())]


async def _next(conn: h11.Connection, stream: trio.SocketStream, tap: RawTap | None) -> Any:
    """The next event of ``conn``, read from ``stream`` (through ``tap``, which keeps the bytes)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if tap is None:
                conn.receive_data(data)
            else:
                tap.feed(data)
            continue
        return event


async def _continue(
    conn: h11.Connection, stream: trio.SocketStream, wire: RequestWire | None
) -> None:
    """Send ``100 Continue`` to a client that waits for it before it sends the body (``Expect:
    100-continue``); ``wire`` keeps it for a recording."""
    if conn.they_are_waiting_for_100_continue:
        interim = conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        if wire is not None and interim:
            wire.interim.append((_clock() - wire.t0_ns, interim))
        await _write(stream, interim)


async def _write(stream: trio.SocketStream, data: bytes | None) -> None:
    if data:
        await stream.send_all(data)


async def _send(
    conn: h11.Connection, stream: trio.SocketStream, response: h11.Response, body: bytes
) -> None:
    await _write(stream, conn.send(response))
    if body:
        await _write(stream, conn.send(h11.Data(data=body)))
    await _write(stream, conn.send(h11.EndOfMessage()))


async def _send_json(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    payload: dict[str, Any],
    error: bytes = b"no_match",
) -> None:
    body = json.dumps(payload, indent=1).encode()
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
        (b"X-Wirecap-Error", error),
    ]
    await _send(conn, stream, h11.Response(status_code=status, headers=headers), body)


#: Seconds a refused client gets to read the error before the connection closes: what it sent
#: past the point h11 gave up is read and dropped meanwhile, so closing does not reset the
#: connection under the answer.
REFUSE_GRACE = 1.0


async def _refuse(
    conn: h11.Connection, stream: trio.SocketStream, error: h11.ProtocolError
) -> None:
    """Answer a request h11 cannot read with h11's status hint (400; 431 for an oversize head)
    and a JSON body that says why; nothing when an answer is already under way."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    payload = {"error": {"type": "wirecap_bad_request", "message": f"unreadable request: {error}"}}
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await _send_json(conn, stream, error.error_status_hint, payload, b"bad_request")
        await stream.send_eof()
        with trio.move_on_after(REFUSE_GRACE):
            while await stream.receive_some(65536):
                pass


class InThread:
    """A trio service in its own thread with its own event loop, for sync code and for tests that run
    another loop (trio or not): the caller's loop never has to run it.

    ``serve`` is started like a nursery task (``task_status.started(url)``); :meth:`stop` runs
    ``graceful_stop`` first (if given) and then cancels what is left.
    """

    def __init__(
        self,
        serve: Callable[..., Awaitable[None]],
        graceful_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._serve = serve
        self._graceful_stop = graceful_stop
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_event: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._main, name="wirecap-service", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop_event = trio.Event()
            async with trio.open_nursery() as nursery:
                self.url = await nursery.start(self._serve)
                self._ready.set()
                await self._stop_event.wait()
                if self._graceful_stop is not None:
                    with trio.move_on_after(30):
                        await self._graceful_stop()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except BaseException as exc:  # handed to the thread that called start()
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> Self:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"wirecap service failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._token is not None and self._stop_event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop_event.set, trio_token=self._token)
        self._thread.join(60)
        if self._error is not None:
            raise RuntimeError(f"wirecap service failed: {self._error}") from self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(server: MockServer) -> InThread:
    """``server`` running in a thread; ``.url`` once started."""

    async def serve(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            task_status.started(server.url)

    return InThread(serve)
