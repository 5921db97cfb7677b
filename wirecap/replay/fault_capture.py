"""``wirecap serve --fault SPEC --out DIR``: every answer serve gives under an injected fault,
recorded into the capture DIR with what was injected.

Each such exchange is recorded as the proxy records one: the request exactly as the client sent it
(head and body reads, transfer coding included), the answer's head and body exactly as serve wrote
them to the connection, each write with its time, the fault's ``note`` (kind ``fault``, the detail
``on_answer`` gets as :attr:`~wirecap.replay.serve.Served.fault`) and the ``end``: ``ok``;
``timeout`` for a ``timeout`` fault (no answer; the client gave up); ``upstream_error`` for an
answer cut off mid-body (``disconnect``); ``client_abort`` when the client left first. So DIR is an
ordinary capture: ``wirecap inspect DIR --detect-issues`` names each fault by its detector code,
and :meth:`~wirecap.capture.Exchange.notes_of` reads the note.

Answers that are copies of the served capture (plain hits) are not recorded, nor misses: DIR holds
what serve made up. In spy mode (``--miss forward=URL``) the forwarded misses are recorded too, by
the spy's proxy, into the same DIR through the same writer.

The records are made by the proxy's :class:`~wirecap.capture.recorder.ExchangeRecorder` from what
:mod:`wirecap.replay.wire` sorts out of the bytes (sans-IO); this module only moves bytes and
times. The writer is the proxy's (:func:`~wirecap.proxy.app.make_writer`): a writer process,
redaction on (credentials never reach DIR), files 0600, the index written when serve stops.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

import trio

from wirecap.capture.recorder import ExchangeRecorder
from wirecap.proxy.app import EXIT_CAPTURE_INCOMPLETE, make_redactor, make_writer
from wirecap.proxy.config import build_config
from wirecap.proxy.messages import proxy_url
from wirecap.proxy.server import new_exchange_id
from wirecap.replay.faulting import AnswerCut, InjectedTimeout
from wirecap.replay.lifetime import serve_with_capture
from wirecap.replay.wire import AnswerWire, Body, Head

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    import h11

    from wirecap.capture.records import Outcome
    from wirecap.capture.writer import RecordWriter
    from wirecap.replay.serve import MockServer
    from wirecap.replay.wire import RequestWire

#: How an answer under a fault ended, by the exception that ended it (the first match wins).
ENDINGS: Final[tuple[tuple[type[BaseException], Outcome, str | None], ...]] = (
    (InjectedTimeout, "timeout", None),
    (AnswerCut, "upstream_error", None),
    (trio.BrokenResourceError, "client_abort", "the client closed the connection"),
    (trio.ClosedResourceError, "client_abort", "the client closed the connection"),
    (trio.Cancelled, "timeout", "serve stopped before the answer ended"),
)


def ending(error: BaseException | None) -> tuple[Outcome, str | None]:
    """The ``end`` record's outcome and error text for an answer that ended with ``error``."""
    if error is None:
        return "ok", None
    for kind, outcome, text in ENDINGS:
        if isinstance(error, kind):
            return outcome, text or str(error)
    return "protocol_error", f"{type(error).__name__}: {error}"


class FaultRecorder:
    """Records the answers a :class:`~wirecap.replay.serve.MockServer` gives under a fault into
    ``writer`` (any capture writer: its own, or the spy's)."""

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer
        self.recorded = 0  # exchanges handed to the writer

    def summary(self) -> tuple[str, int]:
        """serve's last line about the injected answers and its exit status: they were recorded
        (0), or the capture stopped, lost or dropped records, and the line says so
        (:data:`~wirecap.proxy.app.EXIT_CAPTURE_INCOMPLETE`, as the proxy exits)."""
        capture = self.writer.statistics()
        faults = f"{self.recorded} injected fault{'' if self.recorded == 1 else 's'}"
        troubles = [f"CAPTURE STOPPED ({capture.failed})"] if capture.failed else []
        if capture.records_lost:
            troubles.append(f"{capture.records_lost} records lost")
        if capture.records_dropped:
            troubles.append(f"{capture.records_dropped} records dropped")
        if not troubles:
            return f"wirecap serve: {faults} recorded", 0
        return f"wirecap serve: {faults} answered; {'; '.join(troubles)}", EXIT_CAPTURE_INCOMPLETE

    @contextlib.contextmanager
    def exchange(
        self,
        wire: RequestWire,
        request: h11.Request,
        stream: trio.abc.Stream,
        listen: tuple[str, int],
    ) -> Iterator[FaultRecording]:
        """A recording of the answer to ``request`` (read as ``wire``) on ``stream``, serve
        listening on ``listen``. Answer through :attr:`FaultRecording.stream` and tell
        :meth:`FaultRecording.noted` the fault; how the block ends is how the exchange ended. An
        answer that is never noted (the fault left it to the normal path) is not recorded."""
        recording = FaultRecording(self.writer, wire, request, stream, listen)
        try:
            yield recording
        except BaseException as exc:
            self.recorded += recording.finish(exc)
            raise
        self.recorded += recording.finish(None)


class FaultRecording:
    """One exchange answered under a fault, as it is recorded."""

    def __init__(
        self,
        writer: RecordWriter,
        wire: RequestWire,
        request: h11.Request,
        stream: trio.abc.Stream,
        listen: tuple[str, int],
    ) -> None:
        self._rec = ExchangeRecorder(writer, new_exchange_id(), wire.t0_ns)
        self._wire = wire
        self._request = request
        self._answer = AnswerWire(request.method)
        self._listen = listen
        self._client = _peer(stream)
        self._ttfb_ns: int | None = None
        self.detail: Mapping[str, Any] | None = None
        self.stream = RecordingStream(stream, self)

    @property
    def x(self) -> str:
        return self._rec.x

    def noted(self, detail: Mapping[str, Any]) -> None:
        """The fault's note detail: from now on the exchange is recorded (the request first)."""
        first, self.detail = self.detail is None, dict(detail)
        if first:
            self._record_request()

    def _record_request(self) -> None:
        request, wire = self._request, self._wire
        target = request.target.decode("latin-1")
        host = next((v for k, v in request.headers if k == b"host"), None)
        self._rec.request(
            wall_ns=wire.wall_ns,
            method=request.method.decode("latin-1"),
            target=target,
            head=wire.head,
            client=self._client,
            proxy_url=proxy_url(*self._listen, host, target),
            route=None,
            upstream_url=None,
        )
        for ns, data in wire.interim:  # sent before the body came: the client waited for it
            self.sent(ns, data)
        for ns, data in wire.body:
            self._rec.body("req", data, ns=ns)

    def now(self) -> int:
        return self._rec.now()

    def sent(self, ns: int, data: bytes) -> None:
        """Serve wrote ``data`` to the client at ``ns``."""
        if self.detail is None:
            return  # not an injected answer (yet): nothing is recorded
        for part in self._answer.sent(data):
            if isinstance(part, Head):
                self._ttfb_ns = ns if self._ttfb_ns is None else self._ttfb_ns
                self._rec.response_head(part.status, part.data, ns=ns)
            elif isinstance(part, Body):
                self._rec.body("res", part.data, ns=ns)

    async def wait_for_room(self) -> None:
        """Before the next write, when the capture writer asks producers to wait."""
        if self._rec.backlogged:
            await self._rec.wait_for_room()

    def finish(self, error: BaseException | None) -> int:
        """The note and the end, for an answer that ended with ``error`` (None: it ended as its
        framing says). Returns 1 if the exchange was recorded, else 0."""
        if self.detail is None:
            return 0
        outcome, text = ending(error)
        self._rec.note("fault", self.detail)
        self._rec.end(
            outcome,
            status=self._answer.status,
            error=text,
            req_bytes=self._wire.payload_bytes,
            res_bytes=self._answer.payload_bytes,
            ttfb_ns=self._ttfb_ns,
        )
        return 1


def _peer(stream: trio.abc.Stream) -> str:
    """``host:port`` of the client on a socket stream ("" for another stream)."""
    if not isinstance(stream, trio.SocketStream):
        return ""
    with contextlib.suppress(OSError):
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    return ""


class RecordingStream(trio.abc.Stream):
    """The client's stream, with every write handed to a :class:`FaultRecording` once it is
    sent, stamped with the time it began."""

    def __init__(self, stream: trio.abc.Stream, recording: FaultRecording) -> None:
        self._stream = stream
        self._recording = recording

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        ns = self._recording.now()
        await self._stream.send_all(data)
        self._recording.sent(ns, bytes(data))
        await self._recording.wait_for_room()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


# -- serve --fault --out DIR without spy mode ------------------------------------------------------


def fault_writer(out: Path, listen: str) -> RecordWriter:
    """The capture writer for ``serve --out DIR`` without spy mode: the proxy's, redaction on,
    its header naming serve's ``listen`` address. Creates DIR (mode 0700); raises OSError when it
    cannot."""
    config = build_config(listen=listen, out=out, log_format="quiet", redact=True)
    return make_writer(config, make_redactor(config))


#: Seconds the capture writer gets to write its last frames and the index once serve stops.
CLOSE_GRACE: Final = 30


async def serve_recording(
    server: MockServer,
    recorder: FaultRecorder,
    *,
    ready: Callable[[Path | None], object] | None = None,
) -> None:
    """Run ``server`` recording its injected answers with ``recorder`` (and its own writer) until
    SIGINT or SIGTERM, then stop taking requests (answers under way are cut, and recorded so) and
    close the capture with its index. ``ready(path)`` is called once serve listens (``path``: the
    first segment). The capture is closed however this ends (a listen error too)."""
    server.recorder, writer = recorder, recorder.writer

    async def close() -> None:
        await writer.aclose()
        await writer.wait_finished()

    await serve_with_capture(server, writer.run, close, grace=CLOSE_GRACE, ready=ready)
