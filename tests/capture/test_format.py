"""The capture file format: readable without wirecap, crash-safe, strict on hostile input."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import cbor2
import pytest
import trio
import trio.testing
import zstandard
from helpers import FailingFile, segment_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wirecap.capture import (
    BodyChunk,
    CaptureError,
    CaptureFile,
    ExchangeEnd,
    ExchangeNote,
    RequestReceived,
    ResponseHead,
    decoding,
    frames,
    open_capture,
    reader,
    repair_index,
)
from wirecap.capture.records import FORMAT_VERSION, record_to_map
from wirecap.capture.sink import SegmentSink
from wirecap.capture.writer import CaptureWriter


def exchange_records(x: str, body: bytes = b"hello") -> list:
    return [
        RequestReceived(
            x=x,
            wall_ns=time.time_ns(),
            method="POST",
            target=f"/v1/{x}",
            head=b"POST /v1 HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        BodyChunk(x=x, dir="req", ns=1, data=b'{"q": 1}'),
        ResponseHead(x=x, ns=2, status=200, head=b"HTTP/1.1 200 OK\r\n\r\n"),
        BodyChunk(x=x, dir="res", ns=3, data=body),
        ExchangeEnd(x=x, ns=4, outcome="ok", status=200, req_bytes=8, res_bytes=len(body)),
    ]


def write_capture(directory: Path, exchanges: int, *, per_frame: int = 1) -> Path:
    """A capture with ``exchanges`` exchanges, ``per_frame`` of them per frame (blocking, no trio)."""
    directory.mkdir(parents=True, exist_ok=True)
    sink = SegmentSink(directory, segment_header)
    path = sink.open()
    batch: list = []
    for i in range(exchanges):
        batch += exchange_records(f"ex{i:04d}", f"body {i} ".encode() * 20)
        if (i + 1) % per_frame == 0:
            sink.write_records(batch)
            batch = []
    if batch:
        sink.write_records(batch)
    sink.close()
    return path


def test_file_is_standard_zstd_of_a_cbor_sequence(tmp_path):
    path = write_capture(tmp_path, 5, per_frame=2)
    assert path.stat().st_mode & 0o777 == 0o600
    if shutil.which("zstd"):
        plain = subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    else:  # the same thing with the zstandard library's generic multi-frame reader
        plain = (
            zstandard.ZstdDecompressor()
            .stream_reader(io.BytesIO(path.read_bytes()), read_across_frames=True)
            .read()
        )
    items = []
    decoder = cbor2.CBORDecoder(io.BytesIO(plain))
    while decoder.fp.tell() < len(plain):
        items.append(decoder.decode())
    assert (
        items[0]["t"] == "header"
        and items[0]["format"] == "wirecap"
        and items[0]["version"] == FORMAT_VERSION
    )
    assert [i["t"] for i in items[1:6]] == ["request", "body", "response", "body", "end"]
    assert len(items) == 1 + 5 * 5  # the index and footer are skippable frames: zstd ignores them


def test_frames_have_checksums_and_content_sizes(tmp_path):
    path = write_capture(tmp_path, 3)
    data = path.read_bytes()
    data_frames = [
        f for f in frames.iter_frames(data) if isinstance(f, frames.FrameInfo) and f.kind == "data"
    ]
    for f in data_frames:
        params = zstandard.get_frame_parameters(data[f.offset : f.end])
        assert params.has_checksum and params.content_size > 0
    assert frames.decode_footer(data[-frames.FOOTER_SIZE :]) is not None


def test_index_lookup_decodes_only_that_exchanges_frames(tmp_path, monkeypatch):
    path = write_capture(tmp_path, 50)
    calls = []
    real = reader.read_frame_records

    def counting(frame, info, budget):
        calls.append(info.offset)
        return real(frame, info, budget)

    with open_capture(path) as capture:
        assert capture.files[0].indexed
        capture.files[0].index()  # the index itself is one (skippable) frame, read once
        monkeypatch.setattr(reader, "read_frame_records", counting)
        exchange = capture.get("ex0042")
    assert exchange is not None and exchange.response_body == b"body 42 " * 20
    assert len(calls) == 1  # one frame of fifty one: no scan


def test_exchanges_iterate_in_start_order_across_interleaved_records(tmp_path):
    sink = SegmentSink(tmp_path, segment_header)
    path = sink.open()
    a, b = exchange_records("a"), exchange_records("b")
    sink.write_records([a[0], b[0], b[1], b[2], a[1]])
    sink.write_records([b[3], b[4], a[2], a[3], a[4]])
    sink.close()
    with open_capture(path) as capture:
        assert [e.id for e in capture.exchanges()] == ["a", "b"]


def test_cut_at_any_offset_reads_every_complete_frame(tmp_path):
    """A property over a real capture: cut it anywhere, and every frame that ends before the cut
    reads back; the cut frame is reported as damage, never an exception."""
    path = write_capture(tmp_path / "src", 12, per_frame=1)
    data = path.read_bytes()
    data_frames = [
        f for f in frames.iter_frames(data) if isinstance(f, frames.FrameInfo) and f.kind == "data"
    ]
    cut_path = tmp_path / "cut.cbor.zst"

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.integers(min_value=1, max_value=len(data)))
    def check(cut: int) -> None:
        cut_path.write_bytes(data[:cut])
        complete = [f for f in data_frames if f.end <= cut]
        try:
            capture = open_capture(cut_path)
        except CaptureError:
            assert not complete  # only when even the header frame is cut
            return
        with capture:
            finished = [e.id for e in capture.exchanges() if e.complete]
            damage = capture.damage
        assert len(finished) == len(complete) - 1  # every frame but the header holds one exchange
        ends_on_frame_boundary = cut in {
            f.end for f in frames.iter_frames(data) if isinstance(f, frames.FrameInfo)
        }
        if not ends_on_frame_boundary:
            assert damage and damage[-1].end == cut

    check()


def test_corrupt_frame_in_the_middle_loses_only_itself(tmp_path):
    path = write_capture(tmp_path, 5)
    data = bytearray(path.read_bytes())
    third = [
        f
        for f in frames.iter_frames(bytes(data))
        if isinstance(f, frames.FrameInfo) and f.kind == "data"
    ][3]
    data[third.end - 6] ^= 0xFF  # flip a byte inside the frame: the checksum catches it
    path.write_bytes(bytes(data))
    with open_capture(path) as capture:
        ids = [e.id for e in capture.exchanges() if e.complete]
        damage = capture.damage
    assert ids == ["ex0000", "ex0001", "ex0003", "ex0004"]
    assert len(damage) == 1 and damage[0].offset == third.offset


def test_repair_index_after_a_crash(tmp_path):
    path = write_capture(tmp_path, 6)
    data = path.read_bytes()
    index_at = frames.decode_footer(data[-frames.FOOTER_SIZE :])[0]
    crashed = tmp_path / "crashed.cbor.zst"
    crashed.write_bytes(data[: index_at - 7])  # no index, and the last frame cut short
    with open_capture(crashed) as capture:
        assert not capture.files[0].indexed
        assert capture.damage == []  # nothing read yet
        [cut] = capture.scan_damage()
        assert cut.end == index_at - 7
    with open_capture(crashed) as capture:
        assert len([e for e in capture.exchanges() if e.complete]) == 5
    result = repair_index(crashed)
    assert not result.already_indexed and result.exchanges == 5
    assert result.tail_saved_to is not None and result.tail_saved_to.stat().st_size > 0
    with open_capture(crashed) as capture:
        assert capture.files[0].indexed and capture.damage == []
        assert capture.get("ex0004") is not None
    assert repair_index(crashed).already_indexed


def test_hostile_cbor_tags_are_refused(tmp_path):
    compressor = frames.new_compressor()
    good = cbor2.dumps(record_to_map(segment_header(0)))
    evil = cbor2.dumps(
        {"t": "request", "x": cbor2.CBORTag(1, 0), "wall_ns": 1}
    )  # a tag -> datetime
    regex = cbor2.dumps(cbor2.CBORTag(35, "(a+)+$"))
    path = tmp_path / "evil.cbor.zst"
    path.write_bytes(
        compressor.compress(good) + compressor.compress(evil) + compressor.compress(regex)
    )
    with open_capture(path) as capture:
        assert list(capture.exchanges()) == []
        reasons = [d.reason for d in capture.damage]
    assert len(reasons) == 2 and all("tag" in r for r in reasons)


def test_declared_sizes_are_bounded_before_allocation(tmp_path):
    good = frames.new_compressor().compress(cbor2.dumps(record_to_map(segment_header(0))))
    # A frame that claims 2 GiB of content: rejected from its header, nothing is allocated.
    huge = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 100))
    params = zstandard.get_frame_parameters(bytes(huge))
    assert params.content_size == 100
    descriptor = huge[4]
    assert descriptor >> 6 == 0 and descriptor & 0x20  # 1-byte content size, single segment
    claimed = (
        bytes(huge[:4])
        + bytes([0xE0 | (descriptor & 0x1F)])
        + (2**31).to_bytes(8, "little")
        + bytes(huge[6:])
    )
    path = tmp_path / "huge.cbor.zst"
    path.write_bytes(good + claimed)
    with open_capture(path) as capture:
        assert list(capture.exchanges()) == []
        assert any("declares" in d.reason for d in capture.damage)
    # and a huge byte-string length inside CBOR fails without allocating it
    bogus = b"\xa1\x61t\x5b" + (2**60).to_bytes(8, "big")
    records, problem = decoding.decode_records(bogus)
    assert records == [] and problem is not None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_reader(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("junk") / "junk.cbor.zst"
    good = frames.new_compressor().compress(cbor2.dumps(record_to_map(segment_header(0))))
    path.write_bytes(good + junk)
    with CaptureFile(path) as f:
        list(f.records())
        f.index()
        f.damage_regions()


def test_not_a_capture_is_a_clear_error(tmp_path):
    path = tmp_path / "x.cbor.zst"
    path.write_bytes(b"hello, this is not a capture")
    with pytest.raises(CaptureError, match="not a wirecap capture"):
        open_capture(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match="no capture files"):
        open_capture(tmp_path / "empty")
    with pytest.raises(CaptureError, match="no such capture"):
        open_capture(tmp_path / "missing")


# -- the trio writer ---------------------------------------------------------------------------------


async def settle(done) -> None:
    """Let the writer run (its worker thread too) until ``done()``; the mock clock stands still."""
    for _ in range(1_000_000):
        if done():
            return
        await trio.sleep(0)
    raise AssertionError("the writer never got there")


async def test_writer_closes_a_frame_250ms_after_its_first_record(tmp_path, mock_clock):
    writer = CaptureWriter(SegmentSink(tmp_path, segment_header))
    async with trio.open_nursery() as nursery:
        path = await nursery.start(writer.run)
        for r in exchange_records("a"):
            writer.submit_nowait(r)
        mock_clock.jump(0.249)
        await trio.testing.wait_all_tasks_blocked()
        assert writer.statistics().frames_written == 0  # a small frame waits for company
        mock_clock.jump(0.002)
        await settle(lambda: writer.statistics().frames_written == 1)
        # the file is still open, yet the exchange is already on disk in its own frame
        with open_capture(path) as capture:
            assert [e.id for e in capture.exchanges() if e.complete] == ["a"]
        await writer.aclose()


async def test_writer_batches_busy_traffic_into_large_frames(tmp_path):
    writer = CaptureWriter(SegmentSink(tmp_path, segment_header))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(2000):
            for r in exchange_records(f"x{i}"):
                await writer.submit(r)
        await writer.aclose()
    stats = writer.statistics()
    assert stats.records_written == 10000
    assert stats.frames_written < 20


async def test_rotation_by_size(tmp_path):
    writer = CaptureWriter(
        SegmentSink(tmp_path, segment_header), rotate_bytes=2000, frame_seconds=0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(40):
            for r in exchange_records(f"s{i}", os.urandom(200)):
                await writer.submit(r)
            await settle(lambda: writer.statistics().queued_bytes == 0)
        await writer.aclose()
    assert len(writer.statistics().paths) > 3
    with open_capture(tmp_path) as capture:
        assert all(f.indexed for f in capture.files)  # every segment is a complete file
        assert len([e for e in capture.exchanges() if e.complete]) == 40


async def test_rotation_by_time(tmp_path, mock_clock):
    writer = CaptureWriter(SegmentSink(tmp_path, segment_header), rotate_seconds=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for minute in range(1, 4):
            mock_clock.jump(60)
            await settle(lambda minute=minute: len(writer.statistics().paths) == 1 + minute)
        await writer.aclose()
    with open_capture(tmp_path) as capture:
        assert len(capture.files) == 4 and all(f.indexed for f in capture.files)


async def test_write_error_stops_capture_once_and_never_blocks(tmp_path, caplog):
    writer = CaptureWriter(
        SegmentSink(tmp_path, segment_header, opener=lambda p: FailingFile(300)), max_bytes=400
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.fail_after(5):  # with block policy and a dead disk, submit must still not block
            for i in range(200):
                for r in exchange_records(f"x{i}"):
                    await writer.submit(r)
                await trio.sleep(0)
        await writer.aclose()
    stats = writer.statistics()
    assert stats.failed is not None and "No space left" in stats.failed
    assert stats.records_lost > 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "CAPTURE STOPPED" in errors[0].getMessage()


async def test_drop_policy_writes_a_gap_record(tmp_path):
    writer = CaptureWriter(SegmentSink(tmp_path, segment_header), on_full="drop", max_bytes=600)
    async with trio.open_nursery() as nursery:
        path = await nursery.start(writer.run)
        for i in range(50):  # no checkpoint in between: the buffer fills and records are dropped
            for r in exchange_records(f"x{i}"):
                writer.submit_nowait(r)
        await writer.aclose()
    stats = writer.statistics()
    assert stats.records_dropped > 0
    assert not writer.full  # under drop, producers are never asked to wait
    with open_capture(path) as capture:
        gaps = list(capture.gaps())
    assert sum(g.records for g in gaps) == stats.records_dropped
    assert gaps[0].exchanges


def test_hostile_index_rows_are_not_followed_but_scanned_for(tmp_path):
    path = write_capture(tmp_path, 3)
    data = path.read_bytes()
    index_at, _ = frames.decode_footer(data[-frames.FOOTER_SIZE :])
    from wirecap.capture.index import COLUMNS

    columns = {name: [None, None, None] for name in COLUMNS}
    columns["req_bytes"] = columns["res_bytes"] = [0, 0, 0]
    columns["x"] = ["ex0000", "ex0001", 7]
    columns["frames"] = [[10**12], "nope", []]  # past the data; the wrong type
    bad_index = {"t": "index", "version": 1, "columns": columns, "gaps": [], "damage": []}
    index_frame = frames.encode_index_frame(bad_index)
    hostile = tmp_path / "hostile.cbor.zst"
    hostile.write_bytes(
        data[:index_at] + index_frame + frames.encode_footer(index_at, len(index_frame))
    )
    with open_capture(hostile) as capture:
        for x in ("ex0000", "ex0001", "ex0002"):  # the last one's row has no usable id
            exchange = capture.get(x)
            assert exchange is not None and exchange.complete
        reasons = " ".join(d.reason for d in capture.damage)
        assert "points past the data" in reasons and "found by scanning" in reasons
        assert [e.id for e in capture.exchanges()] == ["ex0000", "ex0001", "ex0002"]


@pytest.mark.parametrize("bad", [[], {}, 3, b"res", "sideways"])
def test_a_choice_field_of_any_other_shape_is_a_record_error(bad):
    from wirecap.capture.records import RecordError, record_from_map

    with pytest.raises(RecordError):
        record_from_map({"t": "body", "x": "a", "dir": bad, "ns": 0, "data": b""})


def test_notes_read_back_through_the_index_and_by_scan(tmp_path):
    """A note (import provenance, an injected fault) belongs to its exchange, whether the reader
    seeks through the index or scans a file without one."""
    sink = SegmentSink(tmp_path, segment_header)
    path = sink.open()
    note = ExchangeNote(x="ex0001", kind="fault", detail={"kind": "429", "retry-after": 2})
    records = exchange_records("ex0001")
    sink.write_records([*records[:1], note])
    sink.write_records(records[1:])
    sink.close()
    with open_capture(path) as capture:
        [exchange] = capture.exchanges()
        assert exchange.notes == [note]
        assert capture.get("ex0001").notes_of("fault") == [{"kind": "429", "retry-after": 2}]
        assert exchange.notes_of("import") == []
    unindexed = tmp_path / "cut.cbor.zst"
    data = path.read_bytes()
    unindexed.write_bytes(data[: CaptureFile(path).data_end])
    with open_capture(unindexed) as capture:
        assert capture.get("ex0001").notes == [note]
