"""O_DIRECT appends: the file always reads as its frames plus, while open, one padding frame."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_format import exchange_records, header

from wirecap.capture import frames, open_capture, repair_index
from wirecap.capture.child import FRAME_ROOM
from wirecap.capture.direct import BLOCK, DirectAppender, enable_direct, padding
from wirecap.capture.frames import PAD_MAGIC
from wirecap.capture.sink import FRAME_MAX_BYTES, HURRIED_LEVEL
from wirecap.capture.writer import SegmentSink

_names = itertools.count()  # a new file for each example (hypothesis seeds random)


def open_direct(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    if not enable_direct(fd):
        os.close(fd)
        pytest.skip("no O_DIRECT here")
    return fd


def skippable_frames(data: bytes) -> list[frames.FrameInfo]:
    found = list(frames.iter_frames(data))
    assert all(isinstance(f, frames.FrameInfo) for f in found), found
    return [f for f in found if f.kind == "skippable"]


def test_padding_is_a_skippable_frame_of_the_size_asked():
    for size in (8, 9, 4095, 8191):
        pad = padding(size)
        assert len(pad) == size
        [info] = frames.iter_frames(pad)
        assert info.kind == "skippable" and info.magic == PAD_MAGIC and info.length == size


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(min_value=1, max_value=3 * BLOCK + 7), min_size=1, max_size=12))
def test_open_file_is_the_appended_bytes_then_padding_closed_file_exactly_them(tmp_path, sizes):
    path = tmp_path / f"f-{next(_names)}"
    fd = open_direct(path)
    appender = DirectAppender(fd)
    written = b""
    try:
        for size in sizes:
            # Each append is one skippable frame of its own, so the file parses frame by frame.
            frame = padding(size + 8)
            appender.append(frame)
            written += frame
            appender.wait()
            data = path.read_bytes()
            assert data[: len(written)] == written  # the frames so far, byte for byte
            assert len(data) % BLOCK == 0  # whole blocks only...
            tail = data[len(written) :]
            if tail:  # ...the last one padded with one skippable frame that fills it
                [pad] = skippable_frames(tail)
                assert pad.magic == PAD_MAGIC and pad.end == len(tail)
        assert appender.end == len(written)
        appender.finish()
        assert path.read_bytes() == written
    finally:
        appender.close()
        os.close(fd)


def test_a_frame_bigger_than_the_stage_goes_out_in_pieces(tmp_path):
    path = tmp_path / "big"
    fd = open_direct(path)
    appender = DirectAppender(fd)
    payload = os.urandom(3 * 1024 * 1024 + 123)
    try:
        appender.append(b"x" * 100)
        appender.append(payload)
        appender.finish()
    finally:
        appender.close()
        os.close(fd)
    assert path.read_bytes() == b"x" * 100 + payload


class CountingAppender(DirectAppender):
    """Counts the writes it makes."""

    writes = 0

    def _pwrite(self, stage: int, length: int, at: int) -> None:
        self.writes += 1
        super()._pwrite(stage, length, at)


def test_the_writer_processs_largest_frame_goes_out_in_one_write(tmp_path):
    # A full frame of a big body that does not compress, and the ring slot that ends it, stored as
    # it is (zstd's hurried level), after a file whose last block is nearly full.
    content = os.urandom(FRAME_MAX_BYTES + FRAME_ROOM)
    frame = frames.new_compressor(HURRIED_LEVEL).compress(content)
    assert len(frame) > len(content)
    path = tmp_path / "largest"
    fd = open_direct(path)
    appender = CountingAppender(fd)
    try:
        appender.append(padding(BLOCK - 1))
        appender.wait()
        appender.writes = 0
        appender.append(frame)
        appender.wait()
        assert appender.writes == 1
        appender.finish()
    finally:
        appender.close()
        os.close(fd)
    assert path.read_bytes() == padding(BLOCK - 1) + frame


def test_a_failed_write_in_the_background_is_raised_by_the_next_call(tmp_path):
    path = tmp_path / "read-only"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    appender = DirectAppender(fd)  # every write fails: the descriptor is not open for writing
    try:
        appender.append(b"x" * 5000)  # handed to the writing thread
        with pytest.raises(OSError, match="Bad file descriptor"):
            appender.wait()
        with pytest.raises(OSError, match="Bad file descriptor"):
            appender.append(b"y" * 5000)
    finally:
        appender.close()
        os.close(fd)


def test_segment_written_direct_reads_back_like_one_written_through_the_cache(tmp_path):
    def write(directory, direct):
        directory.mkdir()
        sink = SegmentSink(directory, header, direct=direct)
        path = sink.open()
        if direct and sink._appender is None:
            pytest.skip("no O_DIRECT here")
        for i in range(20):
            sink.write_frame(exchange_records(f"ex{i:04d}", os.urandom(5000 * i)))
        return sink, path

    sink, path = write(tmp_path / "direct", True)
    sink.flush()
    # Open, it reads as it stands (the index is rebuilt by a scan): a kill -9 loses nothing written.
    with open_capture(path) as capture:
        assert len([e for e in capture.exchanges() if e.complete]) == 20
        assert capture.scan_damage() == []
    sink.close()
    cached, cached_path = write(tmp_path / "cached", False)
    cached.close()
    with open_capture(path) as direct, open_capture(cached_path) as through_cache:
        assert direct.files[0].indexed
        assert [e.id for e in direct.exchanges()] == [e.id for e in through_cache.exchanges()]
        got = direct.get("ex0019")
        assert got is not None
    data = path.read_bytes()
    assert PAD_MAGIC not in {f.magic for f in skippable_frames(data)}
    assert frames.decode_footer(data[-frames.FOOTER_SIZE :]) is not None  # the last bytes


def test_repair_after_a_crash_drops_the_padding_and_saves_no_tail(tmp_path):
    sink = SegmentSink(tmp_path, header)
    path = sink.open()
    if sink._appender is None:
        pytest.skip("no O_DIRECT here")
    for i in range(3):
        sink.write_frame(exchange_records(f"ex{i:04d}", b"x" * 1000))
    sink.flush()
    assert PAD_MAGIC in {f.magic for f in skippable_frames(path.read_bytes())}
    sink.abandon()  # as a killed writer leaves it: no index, the padding at the end
    result = repair_index(path)
    assert result.exchanges == 3 and result.tail_saved_to is None
    data = path.read_bytes()
    assert PAD_MAGIC not in {f.magic for f in skippable_frames(data)}
    with open_capture(path) as capture:
        assert capture.files[0].indexed and capture.damage == []
        assert [e.id for e in capture.exchanges() if e.complete] == ["ex0000", "ex0001", "ex0002"]
