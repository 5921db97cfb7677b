"""Following a capture as it is written: complete frames only, exchanges as they end, rotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
import trio
from captures import Spec

from wirecap.capture import ExchangeEnd, open_capture
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.inspect.follow import Follower

HEADER = SegmentHeader({"enabled": False})


@pytest.fixture
def new_sink():
    """Opens a segment writer in a directory; closed (index and footer) after the test."""
    sinks = []

    def new(directory):
        directory.mkdir(parents=True, exist_ok=True)
        sink = SegmentSink(directory, HEADER)
        sink.open()
        sinks.append(sink)
        return sink

    yield new
    for sink in sinks:
        sink.close()


def split_at_end(records):
    """The records of an exchange before its end record, and the end record."""
    assert isinstance(records[-1], ExchangeEnd)
    return records[:-1], records[-1:]


def test_an_exchange_grows_and_is_reported_once_it_ends(tmp_path, new_sink):
    sink = new_sink(tmp_path / "cap")
    follower = Follower([tmp_path / "cap"], start="beginning")
    assert follower.poll().completed == []
    before, end = split_at_end(Spec("aaaaaaaaaaaa", chunks=[b'{"a":', b"1}"]).records(0))
    sink.write_records(before[:4])  # request, upstream, request body, response head
    batch = follower.poll()
    assert [f.id for f in batch.growing] == ["aaaaaaaaaaaa"]
    assert batch.completed == []
    sink.write_records(before[4:])
    assert [f.exchange.response_body for f in follower.poll().growing] == [b'{"a":1}']
    sink.write_records(end)
    batch = follower.poll()
    [done] = batch.completed
    assert done.exchange.outcome == "ok"
    assert done.exchange.response_body == b'{"a":1}'
    assert batch.growing == []
    again = follower.poll()
    assert again.completed == again.growing == []
    sink.close()
    assert follower.poll().completed == []
    assert all(tail.closed for tail in follower.segments)


def test_a_frame_counts_only_once_it_is_complete(tmp_path, new_sink):
    """A frame cut off at the end of the file is being written: it is read when it is whole."""
    source = tmp_path / "source"
    sink = new_sink(source)
    sink.write_records(Spec("bbbbbbbbbbbb").records(0))
    sink.close()
    [path] = source.iterdir()
    whole = path.read_bytes()
    with open_capture(path) as capture:
        first_frame_end = capture.files[0].index().entries[0].frames[0]
    growing = tmp_path / "growing" / path.name
    growing.parent.mkdir()
    growing.write_bytes(whole[:first_frame_end])  # the header frame only
    follower = Follower([growing.parent], start="beginning")
    assert follower.poll().completed == []
    data_end = first_frame_end + (len(whole) - first_frame_end) // 3  # part of the data frame
    for cut in range(first_frame_end + 1, data_end, max(1, (data_end - first_frame_end) // 7)):
        with open(growing, "r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(whole[f.tell() : cut])
        batch = follower.poll()
        assert batch.completed == [] and batch.damage == []
    growing.write_bytes(whole)
    [done] = follower.poll().completed
    assert done.id == "bbbbbbbbbbbb"


def test_an_exchange_across_a_rotation_is_one_exchange(tmp_path, new_sink):
    sink = new_sink(tmp_path / "cap")
    follower = Follower([tmp_path / "cap"], start="beginning")
    before, end = split_at_end(Spec("cccccccccccc").records(0))
    sink.write_records(before)
    sink.write_records(Spec("dddddddddddd").records(1))
    sink.rotate()
    sink.write_records(end)
    batch = follower.poll()
    assert [f.id for f in batch.completed] == ["dddddddddddd", "cccccccccccc"]
    straddler = batch.completed[1]
    assert {number for number, _offset in straddler.locations} == {0, 1}
    again = follower.fetch("cccccccccccc", straddler.locations)
    assert again is not None and again.outcome == "ok" and again.method == "POST"
    assert again.response_body == straddler.exchange.response_body
    assert follower.segments[0].closed and not follower.segments[1].closed


def test_from_the_end_only_what_ends_later_and_in_flight_exchanges_are_kept(tmp_path, new_sink):
    sink = new_sink(tmp_path / "cap")
    before, end = split_at_end(Spec("eeeeeeeeeeee").records(0))
    sink.write_records(Spec("ffffffffffff").records(1))
    sink.write_records(before)
    sink.rotate()  # the first segment is closed, with eeee... in flight
    sink.write_records(Spec("111111111111").records(2))
    follower = Follower([tmp_path / "cap"], start="end")
    assert follower.poll().completed == []
    sink.write_records(end)
    sink.write_records(Spec("222222222222").records(3))
    batch = follower.poll()
    assert [f.id for f in batch.completed] == ["eeeeeeeeeeee", "222222222222"]
    assert batch.completed[0].exchange.request is not None  # its start came from the index


def test_a_file_that_is_not_a_capture_is_damage_not_an_error(tmp_path):
    (tmp_path / "cap").mkdir()
    (tmp_path / "cap" / "junk.cbor.zst").write_bytes(b"hello, not zstd" * 10)
    batch = Follower([tmp_path / "cap"], start="beginning").poll()
    assert batch.completed == [] and batch.damage


def test_a_large_capture_is_caught_up_over_several_polls(tmp_path, new_sink):
    sink = new_sink(tmp_path / "cap")
    for i in range(40):
        sink.write_records(Spec(f"{i:012x}", chunks=[os.urandom(2048)]).records(i))
    sink.close()
    follower = Follower([tmp_path / "cap"], start="beginning")
    seen, polls = [], 0
    while not follower.caught_up:
        seen += [f.id for f in follower.poll(budget=8 * 1024).completed]
        polls += 1
    assert polls > 2
    assert seen == [f"{i:012x}" for i in range(40)]


FOLLOW_ARGS = ["--follow", "--json", "--detect-issues", "--last", "1"]


class Lines:
    """The lines a process writes to a pipe, read as they come."""

    def __init__(self, stream):
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        with trio.fail_after(60):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                assert chunk, f"the pipe closed after {self.buffer!r}"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


async def test_inspect_follow_prints_exchanges_as_they_end_and_stops_on_ctrl_c(
    start_upstream, start_proxy
):
    async def upstream(ex):
        await ex.read_body()
        await ex.respond(500 if ex.request.target == "/fail" else 200, b'{"ok": true}')

    up = await start_upstream(upstream)
    proxy = await start_proxy(routes=[f"/={up.url}"])
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        await client.post("/before", content=b"{}")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "wirecap", "inspect", str(proxy.out), *FOLLOW_ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # --last 1 prints the last exchange already there once the follower has caught up:
            # whatever ends from then on is new.
            out = Lines(process.stdout)
            before = await out.next()
            await client.post("/ok", content=b"{}")
            await client.post("/fail", content=b"{}")
            lines = [await out.next(), await out.next()]
        finally:
            process.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                code = await process.wait()
    assert json.loads(before)["path"] == "/before"
    rows = [json.loads(line) for line in lines]
    assert [r["path"] for r in rows] == ["/ok", "/fail"]
    assert rows[0]["findings"] == []
    assert [f["code"] for f in rows[1]["findings"]] == ["http-error"]
    stderr = await process.stderr.receive_some(65536)
    assert b"Traceback" not in stderr
    assert code == 1  # an error-level finding was printed (--fail-on error)
