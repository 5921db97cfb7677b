"""The file side of the fleet, without NATS: which frames are closed, the saved position, and the
collector's runs (valid captures, held frames, repair after a kill)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wirecap.capture import CaptureFile, open_capture
from wirecap.capture import frames as framing
from wirecap.fleet.central import RunFile, held_by_runs, repair_orphans, run_name
from wirecap.fleet.collector import CollectorStatistics, Delivered, Runs
from wirecap.fleet.source import Position, closed_frames, pending_segments

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
SEGMENT = "anthropic_message_stream.cbor.zst"  # a header and two data frames


def fixture_bytes(name: str = SEGMENT) -> bytes:
    return (FIXTURES / name).read_bytes()


def frame_ends(data: bytes) -> list[int]:
    """Where each frame before the index ends."""
    ends = []
    for info in framing.iter_frames(data):
        assert isinstance(info, framing.FrameInfo)
        if info.magic in (framing.INDEX_MAGIC, framing.FOOTER_MAGIC):
            break
        ends.append(info.end)
    return ends


def test_a_segment_cut_at_any_byte_hands_out_exactly_its_whole_frames():
    data = fixture_bytes()
    ends = frame_ends(data)
    data_end = ends[-1]
    for cut in range(data_end + 1):
        scan = closed_frames(data[:cut], SEGMENT, 0, finished=False)
        whole = [end for end in ends if end <= cut]
        assert [f.end for f in scan.frames] == whole
        assert b"".join(f.data for f in scan.frames) == data[: whole[-1] if whole else 0]
        assert scan.next_offset == (whole[-1] if whole else 0)
        assert not scan.done


def test_the_index_ends_a_segment_and_a_crash_tail_ends_a_finished_one():
    data = fixture_bytes()
    ends = frame_ends(data)
    assert closed_frames(data, SEGMENT, ends[-1], finished=False).done  # its index is there
    cut = data[: ends[-1] - 3]  # a proxy killed mid-frame; a newer segment exists
    scan = closed_frames(cut, SEGMENT, 0, finished=True)
    assert scan.done and [f.end for f in scan.frames] == ends[:-1]
    assert scan.damage and scan.damage[0][0] == ends[-2]


def test_scans_resume_where_the_last_one_stopped_and_respect_the_batch_bound():
    data = fixture_bytes()
    first = closed_frames(data, SEGMENT, 0, finished=False, max_frames=1)
    assert len(first.frames) == 1 and first.frames[0].offset == 0
    rest = closed_frames(data, SEGMENT, first.next_offset, finished=False)
    assert [f.offset for f in rest.frames] == frame_ends(data)[:-1]


def test_the_position_survives_a_restart_and_a_broken_one_is_an_error(tmp_path):
    path = Position.file_for(tmp_path, "web")
    position = Position.load(path)
    assert position.offset("a.cbor.zst") == 0
    position.advance("a.cbor.zst", 1234, done=True)
    position.advance("b.cbor.zst", 99, done=False)
    position.save()
    again = Position.load(path)
    assert again.offsets == {"a.cbor.zst": 1234, "b.cbor.zst": 99}
    assert again.done == {"a.cbor.zst"}
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a shipping position"):
        Position.load(path)


def test_pending_segments_are_oldest_first_and_all_but_the_newest_are_finished(tmp_path):
    for name in ("openai_chat_json.cbor.zst", SEGMENT):
        (tmp_path / name).write_bytes(fixture_bytes(name))
    position = Position(tmp_path / ".pos")
    pending = list(pending_segments(tmp_path, position))
    assert [finished for _path, finished in pending] == [True, False]
    position.advance(pending[0][0].name, 0, done=True)
    assert [p.name for p, _ in pending_segments(tmp_path, position)] == [pending[1][0].name]


def shipped_frames(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    scan = closed_frames(data, SEGMENT, 0, finished=True)
    return scan.frames[0].data, [(f.offset, f.data) for f in scan.frames[1:]]


def test_a_run_from_the_first_frame_is_the_source_segment_byte_for_byte(tmp_path):
    data = fixture_bytes()
    header, frames = shipped_frames(data)
    run = RunFile(tmp_path, run_name("web", SEGMENT, frames[0][0], "c1"), header, frames[0][0])
    for offset, frame in frames:
        run.append(offset, frame)
    run.sync()
    run.close()
    assert run.path.read_bytes() == data
    assert run.path.stat().st_mode & 0o777 == 0o600
    with CaptureFile(run.path) as capture:
        assert capture.indexed


def test_runs_split_between_collectors_read_as_the_source_in_order(tmp_path):
    data = fixture_bytes()
    header, frames = shipped_frames(data)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / SEGMENT).write_bytes(data)
    (tmp_path / "central").mkdir()
    for i, (offset, frame) in enumerate(reversed(frames)):  # each its own run, last one first
        run = RunFile(
            tmp_path / "central", run_name("web", SEGMENT, offset, f"c{i}"), header, offset
        )
        run.append(offset, frame)
        run.close()
    with open_capture(tmp_path / "src") as source, open_capture(tmp_path / "central") as central:
        want = [(e.id, e.request_bytes(), e.response_bytes()) for e in source.exchanges()]
        got = [(e.id, e.request_bytes(), e.response_bytes()) for e in central.exchanges()]
    assert got == want


def test_a_frame_delivered_again_is_held_and_not_written_twice(tmp_path):
    data = fixture_bytes()
    header, frames = shipped_frames(data)
    statistics = CollectorStatistics()
    first = Runs(tmp_path, "c1", statistics)
    for offset, frame in frames:
        assert first.store(Delivered("web", SEGMENT, offset, frame, again=False), header, 0.0)
    assert held_by_runs(tmp_path, "web", SEGMENT, frames[-1][0], frames[-1][1])
    assert not held_by_runs(tmp_path, "web", SEGMENT, frames[-1][0], frames[-1][1][::-1])
    assert not held_by_runs(tmp_path, "other", SEGMENT, frames[-1][0], frames[-1][1])
    second = Runs(tmp_path, "c2", statistics)  # another collector, or this one restarted
    offset, frame = frames[-1]
    assert second.store(Delivered("web", SEGMENT, offset, frame, again=True), header, 0.0) is None
    assert statistics.held == 1 and statistics.frames == len(frames)
    first.close_all()
    assert len(list(tmp_path.glob("*.cbor.zst"))) == 1


def test_a_run_whose_collector_died_mid_frame_is_repaired_and_its_tail_kept_aside(tmp_path):
    data = fixture_bytes()
    header, frames = shipped_frames(data)
    run = RunFile(tmp_path, run_name("web", SEGMENT, frames[0][0], "c1"), header, frames[0][0])
    run.append(frames[0][0], frames[0][1])
    run._write(frames[1][1][:10])  # killed in the middle of the next frame
    run.abandon()
    assert repair_orphans(tmp_path) == [run.path]
    with CaptureFile(run.path) as capture:
        assert capture.indexed
        assert capture.size == len(header) + len(frames[0][1]) + capture.size - capture.data_end
    assert (tmp_path / (run.path.name + ".tail")).read_bytes() == frames[1][1][:10]
    assert repair_orphans(tmp_path) == []  # once indexed, left alone


def test_a_run_being_written_is_not_repaired_under_its_collector(tmp_path):
    data = fixture_bytes()
    header, frames = shipped_frames(data)
    run = RunFile(tmp_path, run_name("web", SEGMENT, frames[0][0], "c1"), header, frames[0][0])
    run.append(frames[0][0], frames[0][1])
    assert repair_orphans(tmp_path) == []  # it holds the lock
    run.close()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tail")]


def test_a_connection_attempt_that_swallows_a_cancellation_is_cancelled_again():
    """The NATS client's connect loop can swallow one cancellation (asyncio.wait_for before
    Python 3.12); stopping must still end it, not wait for it forever."""
    import asyncio

    from wirecap.fleet.shipper import _cancel

    async def stubborn() -> None:
        swallowed = 0
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    async def main() -> None:
        task = asyncio.ensure_future(stubborn())
        await asyncio.sleep(0)
        assert await asyncio.wait_for(_cancel(task), 10) is None
        assert task.cancelled()

    asyncio.run(main())
