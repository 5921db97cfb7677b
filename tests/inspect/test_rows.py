"""The row cache: a second look at a closed capture skips the bodies and says the same thing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from captures import Spec
from click.testing import CliRunner

from wirecap.capture import open_capture
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.cli import main
from wirecap.inspect import rows as rows_module
from wirecap.inspect.detectors import Thresholds
from wirecap.inspect.rows import RowCache, capture_rows

SLOW = [10_000_000, 3_000_000_000]  # a 3 s gap before the second chunk: a stall at 2 s


def specs(count: int) -> list[Spec]:
    return [
        Spec(
            f"{i:012x}",
            status=500 if i % 5 == 4 else 200,
            chunks=[b'{"model": "gpt-4o", ', b'"choices": []}'],
            gap_ns=SLOW if i % 3 == 0 else None,
        )
        for i in range(count)
    ]


def write_segments(directory: Path, parts: list[list[list]]) -> list[Path]:
    """One segment per part, each part a list of frames, each frame a list of records."""
    directory.mkdir(parents=True, exist_ok=True)
    sink = SegmentSink(directory, SegmentHeader({"enabled": False}))
    paths = [sink.open()]
    for i, part in enumerate(parts):
        if i:
            paths.append(sink.rotate())
        for frame in part:
            sink.write_records(frame)
    sink.close()
    return paths


@pytest.fixture
def cache(tmp_path: Path) -> RowCache:
    return RowCache(tmp_path / "cache")


def all_rows(directory: Path, cache: RowCache | None, thresholds: Thresholds | None = None):
    with open_capture(directory) as capture:
        return [
            (r.fields, r.request_key, r.findings) for r in capture_rows(capture, thresholds, cache)
        ]


def no_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(exchange: object) -> None:
        raise AssertionError("an exchange was analysed again")

    monkeypatch.setattr(rows_module, "analyze_exchange", refuse)


def test_the_second_look_reads_no_bodies_and_says_the_same(tmp_path, cache, monkeypatch):
    records = [r for i, spec in enumerate(specs(12)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[records]])
    thresholds = Thresholds(stall_s=2.0)
    first = all_rows(tmp_path / "cap", cache, thresholds)
    assert [f["id"] for f, _, _ in first] == [f"{i:012x}" for i in range(12)]
    assert first == all_rows(tmp_path / "cap", None, thresholds)
    codes = {(f[0]["id"], finding.code) for f in first for finding in f[2]}
    assert ("000000000000", "stream-stall") in codes and ("000000000004", "http-error") in codes

    no_analysis(monkeypatch)
    assert all_rows(tmp_path / "cap", cache, thresholds) == first


def test_rows_and_each_set_of_thresholds_are_cached_apart(tmp_path, cache, monkeypatch):
    records = [r for i, spec in enumerate(specs(6)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[records]])
    plain = all_rows(tmp_path / "cap", cache)
    strict = all_rows(tmp_path / "cap", cache, Thresholds(stall_s=2.0))
    lenient = all_rows(tmp_path / "cap", cache, Thresholds(stall_s=60.0))
    assert all(findings is None for _, _, findings in plain)
    stalls = [
        [sum(f.code == "stream-stall" for f in findings) for _, _, findings in run]
        for run in (strict, lenient)
    ]
    assert stalls == [[1, 0, 0, 1, 0, 0], [0] * 6]
    no_analysis(monkeypatch)
    assert all_rows(tmp_path / "cap", cache, Thresholds(stall_s=2.0)) == strict
    assert all_rows(tmp_path / "cap", cache) == plain


def test_an_exchange_across_segments_comes_once_cached_or_not(tmp_path, cache):
    """Exchange 1 begins in the first segment and ends in the second, exchange 2 lies wholly in
    the second, exchange 3 never ends (a crash)."""
    one, two, three = (spec.records(i) for i, spec in enumerate(specs(3)))
    zero = Spec("0" * 11 + "f").records(9)
    write_segments(tmp_path / "cap", [[zero, one[:3]], [two, one[3:], three[:2]]])
    expected = ["00000000000f", "000000000001", "000000000000", "000000000002"]
    uncached = all_rows(tmp_path / "cap", None)
    assert [f["id"] for f, _, _ in uncached] == expected
    assert all_rows(tmp_path / "cap", cache) == uncached
    assert all_rows(tmp_path / "cap", cache) == uncached
    assert uncached[-1][0]["outcome"] == "incomplete"


def test_a_changed_segment_is_read_again(tmp_path, cache):
    records = [r for i, spec in enumerate(specs(3)) for r in spec.records(i)]
    [path] = write_segments(tmp_path / "cap", [[records]])
    before = all_rows(tmp_path / "cap", cache)
    path.unlink()
    fewer = [r for i, spec in enumerate(specs(2)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[fewer]])
    assert len(all_rows(tmp_path / "cap", cache)) == 2 < len(before)


def test_a_broken_cache_file_is_read_past_and_nothing_is_lost(tmp_path, cache):
    records = [r for i, spec in enumerate(specs(40)) for r in spec.records(i)]
    write_segments(
        tmp_path / "cap", [[records[: len(records) // 2]], [records[len(records) // 2 :]]]
    )
    truth = all_rows(tmp_path / "cap", cache)
    for cached in (cache.directory).iterdir():
        data = cached.read_bytes()
        cached.write_bytes(data[: len(data) // 2])
    assert all_rows(tmp_path / "cap", cache) == truth


def test_a_live_segment_is_never_cached(tmp_path, cache):
    records = [r for i, spec in enumerate(specs(3)) for r in spec.records(i)]
    [path] = write_segments(tmp_path / "cap", [[records]])
    with open_capture(path) as capture:
        live = path.read_bytes()[: capture.files[0].data_end]
    path.write_bytes(live)  # as a segment still being written: no index yet
    assert len(all_rows(tmp_path / "cap", cache)) == 3
    assert not cache.directory.exists() or not any(cache.directory.iterdir())


def test_damage_is_reported_on_every_look(tmp_path, monkeypatch):
    monkeypatch.setenv("WIRECAP_CACHE_DIR", str(tmp_path / "cache"))
    frames = [spec.records(i) for i, spec in enumerate(specs(3))]
    [path] = write_segments(tmp_path / "cap", [frames])
    data = bytearray(path.read_bytes())
    with open_capture(path) as capture:
        second_frame = [o for o, _ in capture.files[0].iter_frame_records()][2]
    data[second_frame + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    runs = [CliRunner().invoke(main, ["inspect", str(tmp_path / "cap")]) for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.count("\n") == 3  # header, 2 rows
    assert all("damaged" in run.stderr for run in runs)


def test_cache_files_are_private_and_off_means_off(tmp_path):
    records = [r for i, spec in enumerate(specs(3)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[records]])
    env = {**os.environ, "WIRECAP_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "wirecap", "inspect", str(tmp_path / "cap"), "--json"]
    outputs = [
        subprocess.run(command, env=env, capture_output=True, check=True).stdout for _ in range(2)
    ]
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") == 3
    rows_dir = tmp_path / "cache" / "rows"
    assert stat.S_IMODE(rows_dir.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in rows_dir.iterdir()] == [0o600]
    env["WIRECAP_CACHE_DIR"] = "off"
    env["HOME"] = env["XDG_CACHE_HOME"] = str(tmp_path / "home")
    subprocess.run(command, env=env, capture_output=True, check=True)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("layout", ["ends before", "ends between", "ends after"])
def test_a_cached_segment_gives_a_spanning_exchange_where_a_fresh_read_does(
    tmp_path, cache, layout
):
    """Exchange 1 begins in the first segment and ends in the second, before, between or after
    the two exchanges that lie wholly in the second."""
    one, two, three = (spec.records(i) for i, spec in enumerate(specs(3)))
    second = {
        "ends before": [one[3:], two, three],
        "ends between": [two, one[3:], three],
        "ends after": [two, three, one[3:]],
    }[layout]
    write_segments(tmp_path / "cap", [[one[:3]], second])
    uncached = all_rows(tmp_path / "cap", None)
    assert len(uncached) == 3
    assert all_rows(tmp_path / "cap", cache) == uncached  # fills the cache
    assert all_rows(tmp_path / "cap", cache) == uncached  # reads it


def test_a_look_that_stops_early_leaves_no_cache_file(tmp_path, cache):
    records = [r for i, spec in enumerate(specs(5)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[records]])
    with open_capture(tmp_path / "cap") as capture:
        rows = capture_rows(capture, None, cache)
        next(rows)
        rows.close()
    assert list(cache.directory.iterdir()) == []


def test_a_broken_cache_file_is_removed_and_written_again(tmp_path, cache):
    records = [r for i, spec in enumerate(specs(6)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[records]])
    truth = all_rows(tmp_path / "cap", cache)
    [cached] = cache.directory.iterdir()
    cached.write_bytes(b"garbage")
    assert all_rows(tmp_path / "cap", cache) == truth
    assert not cached.exists()
    assert all_rows(tmp_path / "cap", cache) == truth
    assert cached.exists() and cached.read_bytes() != b"garbage"


def test_rows_are_keyed_by_the_code_that_made_them(tmp_path, cache, monkeypatch):
    records = [r for i, spec in enumerate(specs(2)) for r in spec.records(i)]
    write_segments(tmp_path / "cap", [[records]])
    all_rows(tmp_path / "cap", cache)
    monkeypatch.setattr(rows_module, "code_digest", lambda: "other code")
    analysed = []
    real = rows_module.analyze_exchange
    monkeypatch.setattr(
        rows_module, "analyze_exchange", lambda e, *rest: analysed.append(e) or real(e, *rest)
    )
    all_rows(tmp_path / "cap", cache)
    assert len(analysed) == 2
