"""``wirecap serve --fault SPEC --out DIR`` records every answer it gives under a fault, with
what was injected: the request as the client sent it, the answer's bytes as they went on the
wire, the end (ok, a timeout, a cut), and the fault note ``on_answer`` got. DIR is an ordinary
capture: ``--detect-issues`` names each kind by its code (the matrix's KINDS)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import h11
import httpx
import pytest
import trio
from click.testing import CliRunner
from helpers import start_recording_serve, stop_and_read
from hypothesis import given
from hypothesis import strategies as st
from test_fault_matrix import ANSWERS, ERROR_KINDS, KINDS, THRESHOLDS, expected_code

from wirecap.capture import open_capture
from wirecap.capture.reader import CaptureFile, segment_paths
from wirecap.cli import main
from wirecap.faults import FaultPlan, parse_fault
from wirecap.inspect.analysis import analyze_exchange
from wirecap.inspect.detectors import detect_all
from wirecap.proxy.app import EXIT_CAPTURE_INCOMPLETE
from wirecap.replay.fault_capture import FaultRecorder, fault_writer
from wirecap.replay.serve import MockServer, Served, load_catalog
from wirecap.replay.spy import SpyForwarder
from wirecap.replay.wire import AnswerWire, Body, Head

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
HANG_GUARD = 30  # seconds: only a hang reaches it
#: A few answer shapes: a stream of each framing, a whole JSON answer, a tool call.
SHAPES = ("openai-stream", "anthropic-json", "ollama-ndjson", "openai-tool-call")
CASES = [
    pytest.param(kind, answer, id=f"{kind}-{answer}")
    for kind in KINDS
    for answer in SHAPES
    if kind not in ERROR_KINDS or answer in ("openai-stream", "anthropic-json")
]


class Recording:
    """A :class:`MockServer` over one fixture with faults, recording into ``out``."""

    def __init__(
        self,
        name: str,
        faults: list[str],
        out: Path,
        match_on: tuple[str, ...] = ("method", "path", "query", "body"),
    ) -> None:
        with open_capture(FIXTURES / f"{name}.cbor.zst") as capture:
            self.catalog = load_catalog(capture, match_on=match_on)
            [self.exchange] = list(capture.exchanges())
        self.out = out
        self.told: list[Served] = []
        self.writer = fault_writer(out, "127.0.0.1:0")
        self.recorder = FaultRecorder(self.writer)
        plan = FaultPlan([parse_fault(f) for f in faults])
        self.server = MockServer(
            self.catalog,
            speed=None,
            faults=plan,
            on_answer=self.told.append,
            recorder=self.recorder,
        )

    async def start(self, nursery: trio.Nursery) -> Recording:
        await nursery.start(self.writer.run)
        await nursery.start(self.server.run)
        return self

    @property
    def url(self) -> str:
        return self.server.url + self.exchange.target

    async def close_after(self, recorded: int) -> None:
        """Wait until ``recorded`` exchanges are recorded (serve may still be finishing an
        answer the client has read), then close the capture (index and footer)."""
        with trio.fail_after(HANG_GUARD):
            while self.recorder.recorded < recorded:
                await trio.sleep(0.01)
            await self.writer.aclose()
            await self.writer.wait_finished()


def post(url: str, body: bytes, timeout: float, headers: dict[str, str] | None = None):
    """(status or the error's name, the body bytes read off the wire before any error): httpx's
    raw stream, content coding left as sent."""
    raw = b""
    try:
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream(
                "POST",
                url,
                content=body,
                headers={"Content-Type": "application/json", **(headers or {})},
            ) as response,
        ):
            for chunk in response.iter_raw():
                raw += chunk
            return response.status_code, raw
    except httpx.HTTPError as exc:
        return type(exc).__name__, raw


def codes_of(exchange) -> set[str]:
    return {f.code for f in detect_all([analyze_exchange(exchange)], THRESHOLDS)}


@pytest.mark.parametrize(("kind", "answer"), CASES)
async def test_each_injected_answer_is_recorded_with_its_note_and_named(
    nursery, tmp_path, kind, answer
):
    spec, _code = KINDS[kind]
    mock = await Recording(ANSWERS[answer], [spec], tmp_path / "out").start(nursery)
    body = mock.exchange.request_body
    # A client that waits for the injected timeout gives up after a second (a hang guard for
    # every other kind).
    got, raw = await trio.to_thread.run_sync(
        post, mock.url, body, 1 if kind == "timeout" else HANG_GUARD
    )
    await mock.close_after(1)

    with open_capture(mock.out) as capture:
        [exchange] = list(capture.exchanges())
        [told] = mock.told
        assert exchange.notes_of("fault") == [told.fault]
        assert told.fault is not None and told.fault["kind"] == kind
        assert expected_code(kind, answer) in codes_of(exchange)
        assert exchange.request_body == body
        assert exchange.method == "POST" and exchange.target == mock.exchange.target
        if kind == "timeout":
            assert got == "ReadTimeout" and exchange.responses == []
            assert (exchange.outcome, exchange.status) == ("timeout", None)
            return
        # What the client read off the wire (de-chunked, content coding kept) is the payload of
        # the recorded body.
        assert exchange.response_body == raw
        assert exchange.end is not None and exchange.end.res_bytes == len(raw)
        if kind in ERROR_KINDS:
            assert got == exchange.status == int(kind)
        if kind == "disconnect":
            assert got == "RemoteProtocolError" and exchange.outcome == "upstream_error"
        elif isinstance(got, int):
            assert exchange.outcome == "ok" and exchange.status == got


async def read_all(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read every byte until serve closes it."""
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(data)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        await stream.aclose()
    return answer


async def test_the_recorded_bytes_are_those_on_the_wire_both_ways(nursery, tmp_path):
    """A raw socket client sends a chunked request and reads every byte until serve closes: the
    capture holds the request and the answer byte for byte, each body write as its own read."""
    mock = await Recording("openai_chat_stream", [KINDS["stall"][0]], tmp_path / "out").start(
        nursery
    )
    payload = mock.exchange.request_body
    half = len(payload) // 2
    body = b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (
        half,
        payload[:half],
        len(payload) - half,
        payload[half:],
    )
    head = (
        f"POST {mock.exchange.target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await read_all(mock.server.port, head + body)
    await mock.close_after(1)

    with open_capture(mock.out) as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.request_bytes() == head + body
    assert exchange.request_body == payload
    assert exchange.response_bytes() == answer
    assert exchange.response.head == answer[: answer.index(b"\r\n\r\n") + 4]
    assert b"X-Wirecap-Fault: stall" in exchange.response.head
    reads = list(exchange.iter_wire("res"))
    assert len(reads) > 2 and reads[-1].data.endswith(b"0\r\n\r\n")
    assert [r.ns for r in reads] == sorted(r.ns for r in reads)
    assert exchange.response.ns <= reads[0].ns <= exchange.end.ns
    assert "stream-stall" in codes_of(exchange)


@pytest.mark.parametrize(
    ("spec", "match_on"),
    [
        ("500", ("method", "path")),  # an error answer
        ("length", ("method", "path")),  # synthesized: the capture holds no HEAD
        ("stall,ms=1", ("path",)),  # the recorded answer, transformed
    ],
)
async def test_a_head_request_under_a_fault_gets_the_head_and_is_recorded_ok(
    nursery, tmp_path, spec, match_on
):
    """The answer to a HEAD has no body: serve sends the head alone, the exchange ends ``ok``
    with no payload, and the connection goes on to answer the next request."""
    mock = Recording("openai_chat_json", [spec], tmp_path / "out", match_on)
    await mock.start(nursery)
    target = mock.exchange.target
    head = f"HEAD {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    closing = f"HEAD {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = await read_all(mock.server.port, head + closing.encode())
    assert answer.count(b"HTTP/1.1 ") == 2, answer  # the first answer kept the connection
    await mock.close_after(2)
    with open_capture(mock.out) as capture:
        exchanges = sorted(capture.exchanges(), key=lambda e: e.wall_ns or 0)
    assert [e.method for e in exchanges] == ["HEAD", "HEAD"]
    assert [e.outcome for e in exchanges] == ["ok", "ok"]
    assert [e.end.res_bytes for e in exchanges if e.end] == [0, 0]
    assert b"".join(e.response_bytes() for e in exchanges) == answer
    assert all(e.response.head == e.response_bytes() for e in exchanges)


async def test_a_client_that_expects_100_continue_gets_it_and_it_is_recorded(nursery, tmp_path):
    """A client that sends ``Expect: 100-continue`` waits for the interim answer before it sends
    the body: serve sends it, and the recording holds it as the first response head, so the
    recorded answer is every byte the client got."""
    mock = await Recording("openai_chat_json", ["500"], tmp_path / "out").start(nursery)
    body = mock.exchange.request_body
    head = (
        f"POST {mock.exchange.target} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with trio.fail_after(HANG_GUARD):  # without the 100, the client never sends its body
        stream = await trio.open_tcp_stream("127.0.0.1", mock.server.port)
        await stream.send_all(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = await stream.receive_some(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(body)
        while chunk := await stream.receive_some(65536):
            answer += chunk
        await stream.aclose()
    await mock.close_after(1)

    with open_capture(mock.out) as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.request_bytes() == head + body
    assert exchange.response_bytes() == answer
    assert [h.status for h in exchange.responses] == [100, 500]
    assert exchange.outcome == "ok" and exchange.status == 500


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),  # TLS to a plain listener
        (b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    ],
    ids=["not-http", "conflicting-lengths", "oversize-head"],
)
async def test_a_request_serve_cannot_read_gets_a_clear_error_and_is_not_recorded(
    nursery, tmp_path, request_bytes, status
):
    """Under a fault too, a request h11 cannot read gets an error answer that says why (not a
    silent close); with no request read, no fault was injected and nothing is recorded."""
    mock = await Recording("openai_chat_json", ["500"], tmp_path / "out").start(nursery)
    answer = await read_all(mock.server.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer
    assert json.loads(body)["error"]["type"] == "wirecap_bad_request"
    await mock.close_after(0)
    with open_capture(mock.out) as capture:
        assert list(capture.exchanges()) == []


async def test_an_answer_under_way_when_serve_stops_is_recorded_as_cut_off(nursery, tmp_path):
    """A client waits on a ``timeout`` fault when serve stops: the exchange still gets its note
    and an end (``timeout``: serve stopped), so the capture has no incomplete exchange."""
    mock = Recording("openai_chat_json", ["timeout"], tmp_path / "out")
    await nursery.start(mock.writer.run)
    got: list[object] = []

    async def client() -> None:
        got.append(await trio.to_thread.run_sync(post, mock.url, b"{}", HANG_GUARD))

    async with trio.open_nursery() as front:
        await front.start(mock.server.run)
        nursery.start_soon(client)
        with trio.fail_after(HANG_GUARD):
            while not mock.told:  # the fault is chosen: serve now waits for the client
                await trio.sleep(0.01)
        front.cancel_scope.cancel()
    await mock.close_after(1)

    with open_capture(mock.out) as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.notes_of("fault") == [mock.told[0].fault]
    assert exchange.outcome == "timeout" and exchange.responses == []
    assert (
        exchange.end is not None and exchange.end.error == "serve stopped before the answer ended"
    )


async def test_hits_and_misses_are_not_recorded_and_secrets_never_are(nursery, tmp_path):
    """every=2: the first request is a plain hit, the second gets the fault, a third asks for
    what the capture does not hold (a miss). Only the second is in DIR; its API key is redacted."""
    mock = await Recording("openai_chat_json", ["500,every=2"], tmp_path / "out").start(nursery)
    body = mock.exchange.request_body
    key = {"Authorization": "Bearer sk-serve-records-0123456789abcdef"}
    answers = [
        await trio.to_thread.run_sync(post, mock.url, b, HANG_GUARD, key)
        for b in (body, body, b'{"model": "gpt-4o-mini", "messages": []}')
    ]
    assert [status for status, _raw in answers] == [200, 500, 404]
    await mock.close_after(1)

    with open_capture(mock.out) as capture:
        [exchange] = list(capture.exchanges())
    assert exchange.status == 500 and exchange.notes_of("fault")[0]["kind"] == "500"
    assert b"sk-serve-records" not in exchange.request.head
    assert b"authorization" in exchange.request.head.lower()
    assert exchange.request.redactions
    for segment in segment_paths(mock.out):
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600
        assert b"sk-serve-records" not in segment.read_bytes()


async def test_spy_mode_records_forwarded_misses_and_injected_faults_in_one_capture(
    nursery, tmp_path, start_upstream
):
    async def handler(ex) -> None:
        await ex.read_body()
        answer = json.dumps({"id": "fresh", "object": "chat.completion", "choices": []}).encode()
        await ex.respond(200, answer, [("Content-Type", "application/json")])

    upstream = await start_upstream(handler)
    out = tmp_path / "out"
    spy = SpyForwarder(upstream.url, out)
    await nursery.start(spy.run)
    with open_capture(FIXTURES / "openai_chat_json.cbor.zst") as capture:
        catalog = load_catalog(capture, match_on=("method", "path", "query", "body"))
        [recorded] = list(capture.exchanges())
    recorder = FaultRecorder(spy.writer)
    told: list[Served] = []
    server = MockServer(
        catalog,
        speed=None,
        faults=FaultPlan([parse_fault("429,every=2")]),
        on_answer=told.append,
        miss_handler=spy.relay,
        recorder=recorder,
    )
    await nursery.start(server.run)
    url = server.url + recorded.target
    miss = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "new"}]}'
    got = [
        (await trio.to_thread.run_sync(post, url, b, HANG_GUARD))[0]
        for b in (miss, recorded.request_body, recorded.request_body)
    ]
    assert got == [200, 429, 200]  # forwarded, injected, a plain hit
    with trio.fail_after(HANG_GUARD):
        while recorder.recorded < 1:
            await trio.sleep(0.01)
    await spy.stop()

    [segment] = segment_paths(out)  # one writer, one file
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    with open_capture(out) as capture:
        exchanges = sorted(capture.exchanges(), key=lambda e: e.wall_ns or 0)
    assert [(e.status, e.request_body) for e in exchanges] == [
        (200, miss),
        (429, recorded.request_body),
    ]
    forwarded, faulted = exchanges
    assert forwarded.notes_of("fault") == [] and forwarded.upstream_url is not None
    assert faulted.notes_of("fault") == [told[1].fault] == [parse_fault("429,every=2").note()]
    assert "rate-limited" in codes_of(faulted)


async def start_serve(fixture: Path, spec: str, out: Path) -> tuple[trio.Process, bytes, str]:
    """``wirecap serve FIXTURE --fault SPEC --out OUT`` in a process of its own, once it listens:
    the process, what it wrote to stderr so far, and its base URL."""
    process, err = await start_recording_serve(
        str(fixture), "--timing", "none", "--fault", spec, "--out", str(out)
    )
    return process, err.encode(), err.split("wirecap serve on ", 1)[1].split(": ", 1)[0]


async def test_wirecap_serve_fault_out_records_and_indexes_on_sigint(tmp_path):
    out = tmp_path / "faulted"
    fixture = FIXTURES / "openai_chat_json.cbor.zst"
    with open_capture(fixture) as capture:
        [recorded] = list(capture.exchanges())
    process, err, base = await start_serve(fixture, "429", out)
    with trio.fail_after(HANG_GUARD):
        status, _raw = await trio.to_thread.run_sync(
            post, base + recorded.target, recorded.request_body, HANG_GUARD
        )
        out_text, more = await stop_and_read(process, signal.SIGINT)
        err += more
    assert status == 429
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"1 injected fault recorded" in err, err.decode()
    assert b"-> injected 429 fault 429" in out_text
    [segment] = segment_paths(out)
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    with CaptureFile(segment) as f:
        assert f.indexed
    result = CliRunner().invoke(main, ["inspect", str(out), "--detect-issues", "--json"])
    assert result.exit_code == 0, result.output
    findings = [json.loads(line) for line in result.output.splitlines()]
    assert [f["code"] for f in findings] == ["rate-limited"]


async def test_sigterm_with_many_answers_in_flight_records_each_and_indexes(tmp_path):
    """Twenty clients wait in a stall when serve gets SIGTERM: each exchange is recorded with its
    note and a ``timeout`` end (serve stopped), and the capture is indexed."""
    out = tmp_path / "faulted"
    fixture = FIXTURES / "openai_chat_stream.cbor.zst"
    with open_capture(fixture) as capture:
        [recorded] = list(capture.exchanges())
    process, err, base = await start_serve(fixture, "stall,ms=600000", out)
    port = int(base.rsplit(":", 1)[1])
    body = recorded.request_body
    request = (
        f"POST {recorded.target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out_text = b""
    with trio.fail_after(HANG_GUARD):
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        for client in clients:
            await client.send_all(request)
        while out_text.count(b"fault stall") < 20:  # every answer is under way
            out_text += await process.stdout.receive_some(65536)
        process.send_signal(signal.SIGTERM)
        while chunk := await process.stderr.receive_some(65536):
            err += chunk
        await process.wait()
        for client in clients:
            await client.aclose()
    assert process.returncode == 0, err.decode()
    assert b"20 injected faults recorded" in err and b"Traceback" not in err, err.decode()
    [segment] = segment_paths(out)
    with CaptureFile(segment) as f:
        assert f.indexed
    with open_capture(out) as capture:
        exchanges = list(capture.exchanges())
    assert len(exchanges) == 20
    assert {(e.outcome, e.end.error if e.end else None) for e in exchanges} == {
        ("timeout", "serve stopped before the answer ended")
    }
    assert all(e.notes_of("fault")[0]["kind"] == "stall" for e in exchanges)


#: ``python -m wirecap`` with every file it (and its capture writer) writes stopped at 2 KiB:
#: writing the capture fails as on a full disk (EFBIG; Python ignores SIGXFSZ).
SMALL_DISK = (
    "import resource, runpy; resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)); "
    "runpy.run_module('wirecap', run_name='__main__', alter_sys=True)"
)


def test_a_capture_that_fails_to_write_says_so_and_exits_3(tmp_path):
    """serve goes on answering when DIR cannot be written, but its last line does not claim the
    answers were recorded: it says the capture stopped and exits with the proxy's status for an
    incomplete capture."""
    out = tmp_path / "faulted"
    fixture = FIXTURES / "openai_chat_json.cbor.zst"
    with open_capture(fixture) as capture:
        [recorded] = list(capture.exchanges())
    command = [sys.executable, "-c", SMALL_DISK, "serve", str(fixture), "--timing", "none", "-q"]
    command += ["--listen", "127.0.0.1:0", "--fault", "500", "--out", str(out)]
    with subprocess.Popen(command, stderr=subprocess.PIPE) as process:
        assert process.stderr is not None
        banner = process.stderr.readline().decode()
        base = banner.split("wirecap serve on ", 1)[1].split(": ", 1)[0]
        body = b'{"pad": "%s"}' % os.urandom(4096).hex().encode()  # does not compress
        statuses = [post(base + recorded.target, body, HANG_GUARD)[0] for _ in range(4)]
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=HANG_GUARD)
    assert statuses == [500] * 4  # traffic goes on
    text = (banner.encode() + err).decode()
    assert "Traceback" not in text
    assert process.returncode == EXIT_CAPTURE_INCOMPLETE, text
    last = text.strip().splitlines()[-1]
    assert "CAPTURE STOPPED" in last and "4 injected faults answered" in last, last


def test_out_without_a_fault_or_spy_mode_is_a_one_line_usage_error(tmp_path):
    fixture = FIXTURES / "openai_chat_json.cbor.zst"
    result = CliRunner().invoke(main, ["serve", str(fixture), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "needs --fault SPEC or --miss forward=URL" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


# -- the sans-IO sorter of an answer's writes ----------------------------------------------------


def answer_writes(method: bytes, status: int, pieces: list[bytes], *, interim: bool) -> list[bytes]:
    """The writes h11 makes for an answer (an interim 100 first when asked), a chunked body."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"%s / HTTP/1.1\r\nHost: x\r\n\r\n" % method)
    conn.next_event()
    conn.next_event()
    writes = [conn.send(h11.InformationalResponse(status_code=100, headers=[]))] if interim else []
    writes.append(conn.send(h11.Response(status_code=status, headers=[("X-A", "1")])))
    if method != b"HEAD":  # the answer to a HEAD has no body
        writes += [conn.send(h11.Data(data=p)) for p in pieces if p]
    writes.append(conn.send(h11.EndOfMessage()))
    return [w for w in writes if w]


@given(
    pieces=st.lists(st.binary(min_size=0, max_size=40), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    interim=st.booleans(),
    method=st.sampled_from([b"POST", b"HEAD"]),
)
def test_an_answer_split_anywhere_sorts_into_its_heads_and_body(pieces, cuts, interim, method):
    """However the answer's bytes are cut into writes, the heads come out whole and in order, the
    body bytes concatenate to the rest, and the payload is counted as h11 reads it."""
    wire = b"".join(answer_writes(method, 200, pieces, interim=interim))
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    answer = AnswerWire(method)
    parts = [p for a, b in itertools.pairwise(points) for p in answer.sent(wire[a:b])]
    heads = [p for p in parts if isinstance(p, Head)]
    body = b"".join(p.data for p in parts if isinstance(p, Body))
    assert [h.status for h in heads] == ([100] if interim else []) + [200]
    assert b"".join(h.data for h in heads) + body == wire
    assert all(h.data.endswith(b"\r\n\r\n") and h.data.count(b"\r\n\r\n") == 1 for h in heads)
    assert answer.status == 200 and answer.complete
    assert answer.payload_bytes == (0 if method == b"HEAD" else sum(map(len, pieces)))


def test_a_head_written_in_pieces_comes_out_with_the_write_that_ends_it():
    answer = AnswerWire(b"GET")
    assert answer.sent(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r") == []
    assert answer.status is None
    parts = answer.sent(b"\nContent-Length: 2\r\n\r\n{}")
    assert parts == [
        Head(429, b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n"),
        Body(b"{}"),
    ]
    assert (answer.status, answer.payload_bytes, answer.complete) == (429, 2, True)


def test_a_taken_address_is_one_line_and_leaves_no_capture_file(tmp_path):
    """serve listens before its capture starts: an address in use writes no capture file."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    out = tmp_path / "faulted"
    fixture = FIXTURES / "openai_chat_json.cbor.zst"
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "wirecap",
                "serve",
                str(fixture),
                "--fault",
                "429",
                "--out",
                str(out),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
        )
    finally:
        taken.close()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists() or not list(out.glob("*.cbor.zst"))
