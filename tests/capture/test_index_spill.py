"""The open segment's index rows wait on disk (sink.IndexSpill): a writer holds the rows of the
exchanges in flight and a few finished ones, however many the segment has, and the index it writes
at close is complete: the same as a reader's scan of the file."""

from __future__ import annotations

import dataclasses
import json
import marshal
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
import trio
import zstandard
from helpers import segment_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wirecap.capture import CaptureFile, frames, repair_index
from wirecap.capture.child import LENGTH, ProcessSpec
from wirecap.capture.index import Index, IndexBuilder
from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    Gap,
    Record,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
    record_to_tuple,
)
from wirecap.capture.sink import SPILL_ROWS, SegmentSink
from wirecap.capture.writer import CaptureWriter

LONG, UNENDED = "long00000000", "unended00000"


def exchange(x: str, i: int, *, end: bool = True) -> list[Record]:
    records: list[Record] = [
        RequestReceived(
            x=x,
            wall_ns=1_700_000_000_000_000_000 + i,
            method="POST",
            target=f"/v1/chat/{i}",
            head=b"POST /v1/chat HTTP/1.1\r\nHost: a\r\n\r\n",
            route="/",
            upstream_url=f"http://127.0.0.1:9/v1/chat/{i}",
        ),
        UpstreamRequest(x=x, ns=1, head=b"POST /v1/chat HTTP/1.1\r\nX-Proxy-Path: p\r\n\r\n"),
        BodyChunk(x=x, dir="req", ns=2, data=b'{"q": %d}' % i),
        ResponseHead(x=x, ns=3 + i, status=200 + i % 3, head=b"HTTP/1.1 200 OK\r\n\r\n"),
        BodyChunk(x=x, dir="res", ns=4 + i, data=b"answer %d" % i),
    ]
    if end:
        records.append(ExchangeEnd(x=x, ns=5 + i, outcome="ok", status=200, res_bytes=8))
    return records


def traffic(seed: int, exchanges: int, in_flight: int) -> list[Record]:
    """The records of ``exchanges`` exchanges, ``in_flight`` of them interleaved at a time, between
    the start and the end of one long exchange, with one exchange that never ends and a few gaps."""
    rng = random.Random(seed)
    long, *long_tail = exchange(LONG, 0)
    out: list[Record] = [long, *exchange(UNENDED, 1, end=False)]
    waiting = [exchange(f"{i:012x}", i) for i in range(2, exchanges + 2)]
    active: list[list[Record]] = []
    while waiting or active:
        if waiting and len(active) < in_flight:
            active.append(waiting.pop(0))
        records = rng.choice(active)
        out.append(records.pop(0))
        if not records:
            active.remove(records)
        if rng.random() < 0.01:
            out.append(Gap(wall_ns=len(out), records=1, bytes=10, exchanges=("gone00000000",)))
    return out + long_tail


def scanned(cf: CaptureFile) -> Index:
    """The index a reader rebuilds by scanning every frame of ``cf``."""
    builder = IndexBuilder()
    for offset, records in cf.iter_frame_records():
        builder.observe_all(records, offset)
    return builder.build()


class WatchedSink(SegmentSink):
    """A SegmentSink that notes the most index rows it held after writing a frame."""

    most_held = 0

    def write_frame(self, items, payload) -> int:  # type: ignore[no-untyped-def]
        written = super().write_frame(items, payload)
        self.most_held = max(self.most_held, self.index_rows_held)
        return written


async def test_the_writer_holds_rows_in_flight_only_and_its_index_is_complete(tmp_path):
    """2,000 exchanges through the capture writer, 8 at a time, with a spill every 4 finished
    rows: the sink never holds more than those rows and the exchanges in flight, and the index in
    the file lists every exchange, exactly as a scan of the file finds them."""
    sink = WatchedSink(tmp_path, segment_header, spill_rows=4)
    writer = CaptureWriter(sink, frame_seconds=0)
    records = traffic(seed=7, exchanges=2000, in_flight=8)
    async with trio.open_nursery() as nursery:
        path = await nursery.start(writer.run)
        for record in records:
            await writer.submit(record)
        await writer.aclose()
    assert writer.statistics().records_written == len(records)
    assert os.listdir(tmp_path) == [path.name]  # the spill file had no name: nothing is left
    assert sink.most_held > 0
    # held: under 4 finished rows, plus the 8 in flight, the long one and the one that never ends.
    # Without the spill the 2,002 rows would all be held.
    assert sink.most_held <= 3 + 8 + 2
    with CaptureFile(path) as cf:
        stored = cf.index()
        assert cf.index_from_file
        scan = scanned(cf)
    assert stored.entries == scan.entries
    assert stored.gaps == scan.gaps and len(stored.gaps) > 0
    assert len(stored) == 2002 and len({e.x for e in stored.entries}) == 2002
    outcomes = {e.x: e.outcome for e in stored.entries}
    assert outcomes.pop(UNENDED) is None and set(outcomes.values()) == {"ok"}
    # Its first record, then its last five, 2,000 exchanges apart: the row names the frames that
    # hold them and none between (the scan above agrees). How many records the writer puts in a
    # frame depends on when its task runs, so the last five may lie in one frame or a few, and
    # the other exchanges in fewer or more frames between.
    first, *last = stored.find(LONG).frames
    assert 1 <= len(last) <= 5 and first < min(last)
    assert any(first < min(e.frames) < min(last) for e in stored.entries)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    exchanges=st.integers(0, 60),
    in_flight=st.integers(1, 6),
    per_frame=st.integers(1, 12),
    spill_rows=st.integers(1, 8),
)
def test_the_streamed_index_is_the_bytes_of_the_index_map(
    tmp_path_factory, seed, exchanges, in_flight, per_frame, spill_rows
):
    """Whatever the interleaving, the frames and the spill threshold, the index written from the
    spilled runs is byte for byte the CBOR of the index map that a scan builds in memory."""
    directory = tmp_path_factory.mktemp("spill")
    sink = SegmentSink(directory, segment_header, spill_rows=spill_rows)
    path = sink.open()
    records = traffic(seed, exchanges, in_flight)
    for start in range(0, len(records), per_frame):
        sink.write_records(records[start : start + per_frame])
    sink.close()
    data = path.read_bytes()
    index_at, length = frames.decode_footer(data[-frames.FOOTER_SIZE :])
    payload = data[index_at + 8 + len(frames.INDEX_TAG) : index_at + length]
    with CaptureFile(path) as cf:
        expected = cbor2.dumps(scanned(cf).to_map())
    assert zstandard.ZstdDecompressor().decompress(payload) == expected
    assert os.listdir(directory) == [path.name]


def send(pipe, message: bytes) -> None:
    pipe.write(LENGTH.pack(len(message)) + message)
    pipe.flush()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_killed_writer_process_leaves_only_its_segment(tmp_path):
    """The writer process spills rows to a file without a name in the capture directory; killed
    with SIGKILL, it leaves the segment alone (nothing to clean up), whose index a reader rebuilds
    by scanning, every exchange in it."""
    spec = ProcessSpec(
        directory=str(tmp_path),
        redaction={"enabled": False, "headers": [], "body_patterns": []},
        redactor=None,
        listen=None,
        host="test",
        pid=os.getpid(),
        level=1,
        rotate_bytes=None,
        rotate_seconds=None,
    )
    count = SPILL_ROWS + 500
    child = subprocess.Popen(
        [sys.executable, "-m", "wirecap.capture.child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        send(child.stdin, json.dumps(dataclasses.asdict(spec)).encode())
        records = [r for i in range(count) for r in exchange(f"{i:012x}", i)]
        for start in range(0, len(records), 1000):
            send(
                child.stdin,
                marshal.dumps([record_to_tuple(r) for r in records[start : start + 1000]]),
            )
        while json.loads(child.stdout.readline())["records_written"] < len(records):
            pass
        descriptors = [os.readlink(fd) for fd in Path(f"/proc/{child.pid}/fd").iterdir()]
        unnamed = [
            d for d in descriptors if d.startswith(str(tmp_path)) and d.endswith("(deleted)")
        ]
        assert unnamed, descriptors  # the spill: in the capture directory, without a name
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    (path,) = tmp_path.iterdir()
    with CaptureFile(path) as cf:
        assert not cf.indexed
        index = cf.index()
    assert len(index) == count and {e.outcome for e in index.entries} == {"ok"}
    assert repair_index(path).exchanges == count
