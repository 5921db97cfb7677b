"""The capture writer process: its pipe protocol, and files as good as the in-process writer's."""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import random
import threading
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from wirecap.capture import (
    BodyChunk,
    ExchangeEnd,
    Gap,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
    frames,
    open_capture,
)
from wirecap.capture.child import FrameWriter, MessageReader, WriterSpec, message_head
from wirecap.capture.packing import pack_record, unpack_record
from wirecap.capture.ring import RING_BYTES
from wirecap.capture.writer import (
    CaptureWriter,
    ProcessCaptureWriter,
    SegmentHeader,
    SegmentSink,
)
from wirecap.proxy.redact import Redactor, Rules

RECORDS = [
    RequestReceived(
        x="a1",
        wall_ns=time.time_ns(),
        method="POST",
        target="/openai/v1/chat/completions?x=1",
        head=b"POST /openai/v1/chat/completions?x=1 HTTP/1.1\r\nAuthorization: Bearer sk-1\r\n\r\n",
        client="127.0.0.1:5",
        proxy_url="http://127.0.0.1:8080/openai/v1/chat/completions?x=1",
        route="/openai/",
        upstream_url="https://api.openai.com/v1/chat/completions?x=1",
    ),
    UpstreamRequest(x="a1", ns=10, head=b"POST /v1 HTTP/1.1\r\n\r\n", proxy_path="forwarded"),
    BodyChunk(x="a1", dir="req", ns=11, data=b'{"model": "m"}'),
    ResponseHead(x="a1", ns=20, status=200, head=b"HTTP/1.1 200 OK\r\n\r\n", by="proxy"),
    BodyChunk(x="a1", dir="res", ns=21, data=bytearray(b"data: 1\n\n")),
    ExchangeEnd(
        x="a1", ns=30, outcome="client_abort", status=200, error="gone", req_bytes=14, res_bytes=9
    ),
    Gap(wall_ns=5, records=3, bytes=300, exchanges=("b", "c"), reason="channel full"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_type_crosses_the_pipe_unchanged(record):
    import marshal

    [back] = marshal.loads(marshal.dumps([pack_record(record)]))
    assert unpack_record(back) == record


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), max_size=6),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1),
)
def test_messages_written_in_any_pieces_are_read_back_whole(payloads, cuts):
    wire = b"".join(message_head(p) + p for p in payloads)
    read_fd, write_fd = os.pipe()

    def write_in_pieces() -> None:
        at, i = 0, 0
        while at < len(wire):
            os.write(write_fd, wire[at : at + cuts[i % len(cuts)]])
            at += cuts[i % len(cuts)]
            i += 1
        os.close(write_fd)

    writer = threading.Thread(target=write_in_pieces)
    writer.start()
    reader = MessageReader(read_fd)
    found = []
    while (payload := reader.read()) is not None:
        found.append(bytes(payload))
    writer.join()
    os.close(read_fd)
    assert found == payloads and not reader.cut


def test_a_message_cut_short_is_reported():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, message_head(b"x" * 10) + b"x" * 4)
    os.close(write_fd)
    reader = MessageReader(read_fd)
    assert reader.read() is None and reader.cut
    os.close(read_fd)


def test_the_redactor_pickles_to_the_writer_process():
    rules = Rules.compile(["x-secret"], [r"sk-[A-Za-z0-9]{8,}"])
    redactor = Redactor(rules, {"/a/": rules.merged(["x-other"], [])})
    spec = WriterSpec(directory=Path("/x"), header=SegmentHeader({}), prepare=redactor)
    copy = pickle.loads(pickle.dumps(spec))
    body = BodyChunk(x="z", dir="req", ns=1, data=b'{"key": "sk-abcdefghijkl"}')
    assert copy.prepare(body) == redactor(body) != body


def exchanges(n: int) -> list:
    out: list = []
    for i in range(n):
        x = f"x{i:03d}"
        out += [
            RequestReceived(
                x=x, wall_ns=i, method="POST", target="/v1/c", head=b"POST /v1/c HTTP/1.1\r\n\r\n"
            ),
            UpstreamRequest(x=x, ns=1, head=b"POST /c HTTP/1.1\r\n\r\n"),
            BodyChunk(x=x, dir="req", ns=2, data=b'{"i": %d}' % i),
            ResponseHead(x=x, ns=3, status=200, head=b"HTTP/1.1 200 OK\r\n\r\n"),
            # Every 100th answer is big enough to cross the pipe as a message of its own.
            BodyChunk(
                x=x, dir="res", ns=4, data=b"answer %d " % i * (9000 if i % 100 == 7 else 50)
            ),
            ExchangeEnd(x=x, ns=5, outcome="ok", status=200, req_bytes=8, res_bytes=400),
        ]
    return out


# Big chunks through the shared ring (the default), through the pipe only, and through a ring that
# holds one of them at a time (the others take the pipe while it is in use).
@pytest.mark.parametrize("ring_bytes", [RING_BYTES, 0, 100_000])
async def test_process_writer_writes_what_the_in_process_writer_writes(tmp_path, ring_bytes):
    header = SegmentHeader({"enabled": False}, listen="127.0.0.1:1")
    records = exchanges(300)
    thread_writer = CaptureWriter(SegmentSink(tmp_path / "thread", header))
    process_writer = ProcessCaptureWriter(
        WriterSpec(directory=tmp_path / "process", header=header), ring_bytes=ring_bytes
    )
    for writer, out in ((thread_writer, "thread"), (process_writer, "process")):
        (tmp_path / out).mkdir()
        async with trio.open_nursery() as nursery:
            path = await nursery.start(writer.run)
            assert path is not None and path.parent == tmp_path / out
            for record in records:
                await writer.submit(record)
            await writer.aclose()
        await writer.wait_finished()
        assert writer.statistics().records_written == len(records)

    def contents(out: str) -> tuple:
        with open_capture(tmp_path / out) as capture:
            [file] = capture.files
            assert file.indexed and file.header.pid == os.getpid()
            assert oct(file.path.stat().st_mode & 0o777) == "0o600"
            assert f"-{os.getpid()}-" in file.path.name  # named after the proxy, not the child
            found = [
                (e.request, e.upstream, e.responses, e.chunks, e.end) for e in capture.exchanges()
            ]
            return found, [(e.x, e.status, e.req_bytes) for e in file.index().entries]

    assert contents("process") == contents("thread")
    assert len(contents("process")[0]) == 300


async def test_process_writer_closes_frames_within_250ms_and_rotates(tmp_path):
    header = SegmentHeader({})
    writer = ProcessCaptureWriter(WriterSpec(directory=tmp_path, header=header, rotate_seconds=0.6))
    async with trio.open_nursery() as nursery:
        first = await nursery.start(writer.run)
        for record in exchanges(1):
            await writer.submit(record)
        await trio.sleep(0.45)
        with open_capture(first) as capture:  # still open, and the exchange is on disk
            assert [e.id for e in capture.exchanges() if e.complete] == ["x000"]
        await trio.sleep(0.6)
        await writer.aclose()
    stats = writer.statistics()
    assert stats.paths[0] == first and len(stats.paths) >= 2
    with open_capture(tmp_path) as capture:
        assert all(f.indexed for f in capture.files)
        assert [e.id for e in capture.exchanges()] == ["x000"]


async def test_process_writer_drop_policy_writes_a_gap_record(tmp_path):
    writer = ProcessCaptureWriter(
        WriterSpec(directory=tmp_path, header=SegmentHeader({})), on_full="drop", channel_records=2
    )
    async with trio.open_nursery() as nursery:
        path = await nursery.start(writer.run)
        for record in exchanges(50):  # no checkpoint in between: the buffer fills, records drop
            writer.submit_nowait(record)
        await writer.aclose()
    stats = writer.statistics()
    assert stats.records_dropped > 0
    assert stats.records_written == 50 * 6 - stats.records_dropped + 1  # and one gap record
    with open_capture(path) as capture:
        gaps = list(capture.gaps())
    assert sum(g.records for g in gaps) == stats.records_dropped
    assert gaps[0].exchanges


async def test_process_writer_blocks_when_full_and_loses_nothing(tmp_path):
    writer = ProcessCaptureWriter(
        WriterSpec(directory=tmp_path, header=SegmentHeader({})), channel_records=3
    )
    records = exchanges(200)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for record in records:
            if not writer.offer(record):
                await writer.submit(record)  # waits for room
        await writer.aclose()
    assert writer.statistics().records_written == len(records)
    with open_capture(tmp_path) as capture:
        assert len([e for e in capture.exchanges() if e.complete]) == 200


def _frame_ratios(directory: Path, sizes: list[int]) -> list[float]:
    """Each data frame's size on disk after the header's, against the bytes of its records'
    bodies."""
    [path] = directory.glob("*.cbor.zst")
    found = frames.iter_frames(path.read_bytes())
    written = [f.length for f in found if isinstance(f, frames.FrameInfo) and f.kind == "data"]
    return [w / size for w, size in zip(written[1:], sizes, strict=True)]


def test_totals_written_are_reported_after_a_pause_and_before_the_end_not_every_frame(tmp_path):
    reports: list[dict] = []
    spec = WriterSpec(directory=tmp_path, header=SegmentHeader({}), frame_bytes=64 * 1024)
    writer = FrameWriter(spec, lambda report: reports.append(copy.deepcopy(report)))
    writer.open()

    def frames_reported() -> list[int]:
        return [r["written"][1] for r in reports if "written" in r]

    def burst(first: int, count: int) -> None:
        for n in range(first, first + count):  # each chunk fills a frame of its own
            chunk = BodyChunk(x="a", dir="res", ns=n, data=os.urandom(70 * 1024))
            writer.add_batch([pack_record(chunk)])

    burst(0, 20)
    deadline = time.monotonic() + 10
    while frames_reported()[-1:] != [20] and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker goes quiet, and then says what it wrote
    assert frames_reported()[-1] == 20
    assert len(frames_reported()) < 20
    burst(20, 5)
    writer.close()  # at once: the totals go out before the end all the same
    assert frames_reported()[-1] == 25
    assert reports[-1] == {"done": True, "lost": 0}
    with open_capture(tmp_path) as capture:
        [exchange] = list(capture.exchanges())
        assert len(exchange.chunks) == 25


@pytest.mark.parametrize("adapt", [True, False])
def test_a_frame_that_finds_the_compressor_behind_is_written_in_a_hurry(tmp_path, adapt):
    """Three frames of small base64 answers (level 1 stores them at ~77%) while the compressing
    thread is held: the first finds nothing waiting and is compressed at level 1; the second and
    third find a frame still waiting and, with ``adapt``, are compressed at the hurried level (-1,
    which stores base64 at ~100%) rather than waiting for level 1. Every byte reads back either
    way."""
    reports: list[dict] = []
    spec = WriterSpec(
        directory=tmp_path, header=SegmentHeader({}), level=1, adapt=adapt, frame_bytes=512 * 1024
    )
    writer = FrameWriter(spec, lambda report: reports.append(copy.deepcopy(report)))
    writer.open()
    gate = threading.Event()
    writer._jobs.put(gate.wait)  # the worker thread is busy until the gate opens
    while not writer._jobs.empty():
        time.sleep(0.01)
    answers = [
        [base64.b64encode(os.urandom(3 * 1024)) for _ in range(70)] for _frame in range(3)
    ]  # 70 x 4 KiB a frame (over SMALL_FRAME_BYTES: the frame's own level), every chunk small
    for n, frame in enumerate(answers):
        if n == 2:
            threading.Timer(1.0, gate.set).start()  # long after the third frame is handed over
        writer.add_batch(
            [pack_record(BodyChunk(x="a", dir="res", ns=n, data=data)) for data in frame]
        )
        writer.write_frame()
    writer.close()
    ratios = _frame_ratios(tmp_path, [sum(map(len, frame)) for frame in answers])
    assert ratios[0] < 0.85
    assert (ratios[1] > 0.95) is adapt
    assert (ratios[2] > 0.95) is adapt
    with open_capture(tmp_path) as capture:
        [exchange] = list(capture.exchanges())
        assert [c.data for c in exchange.chunks] == [data for frame in answers for data in frame]


def _json_rows(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = (
        json.dumps({"id": i, "user": f"u{rng.randint(0, 10**6)}", "score": rng.random()})
        for i in range(n)
    )
    return "\n".join(rows).encode()


@pytest.mark.parametrize("adapt", [True, False])
def test_a_frame_of_big_body_chunks_is_stored_unless_a_sample_of_it_compresses(tmp_path, adapt):
    """Frames made mostly of big body chunks, the compressor idle: with ``adapt``, base64 (level 1
    stores it at 75%) is stored at zstd's fastest setting, since a sample of it does not compress
    (big bodies are base64 or compressed already as a rule); a big JSON body, whose sample does,
    gets the configured level from its first frame on, right after base64 as well. Without
    ``adapt``, the level every time."""
    reports: list[dict] = []
    spec = WriterSpec(
        directory=tmp_path, header=SegmentHeader({}), level=1, adapt=adapt, frame_bytes=256 * 1024
    )
    writer = FrameWriter(spec, lambda report: reports.append(copy.deepcopy(report)))
    paces: list[str] = []
    write_encoded = writer.sink.write_encoded

    def noting_the_pace(records, payload, *, pace="level"):
        paces.append(pace)
        return write_encoded(records, payload, pace=pace)

    writer.sink.write_encoded = noting_the_pace
    writer.open()
    base64s = [base64.b64encode(os.urandom(300 * 1024)) for _ in range(2)]
    jsons = [_json_rows(6000, seed)[: 400 * 1024] for seed in range(3)]
    bodies = [*base64s, *jsons]
    for n, body in enumerate(bodies):
        writer.add_batch([pack_record(BodyChunk(x="a", dir="res", ns=n, data=body))])
        time.sleep(0.2)  # the compressor idle again
    writer.close()
    assert paces == (["stored"] * 2 if adapt else ["level"] * 2) + ["level"] * 3
    ratios = _frame_ratios(tmp_path, [len(body) for body in bodies])
    assert all(ratio > 0.95 for ratio in ratios[:2]) is adapt  # base64: stored, or level 1
    assert all(ratio < 0.8 for ratio in ratios[:2]) is not adapt
    assert all(0.15 < ratio < 0.3 for ratio in ratios[2:])  # JSON at level 1 (~20%) either way
    with open_capture(tmp_path) as capture:
        [exchange] = list(capture.exchanges())
        assert [c.data for c in exchange.chunks] == bodies
