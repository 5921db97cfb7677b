"""One event allowance per look at a capture, however its exchanges are reached: through the
index (``--last``), through the row cache, or by a follower."""

from __future__ import annotations

import pytest
import trio
from captures import Spec, write_capture

from wirecap.capture import BodyChunk, ExchangeNote, open_capture
from wirecap.capture import sessions as sessions_module
from wirecap.capture.reader import Exchange
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.inspect import rows as rows_module
from wirecap.inspect import select as select_module
from wirecap.inspect.analysis import analyze_exchange
from wirecap.inspect.follow import analyzed_as_they_end
from wirecap.inspect.rows import RowCache, capture_rows
from wirecap.inspect.select import analyzed_exchanges
from wirecap.llm.facts import EVENT_BYTES, EVENT_SLACK, EventAllowance
from wirecap.llm.streams import PIECE
from wirecap.replay import sessions as replay_sessions
from wirecap.replay.serve import load_catalog

EVENT = b"data: x\n\n"
COUNT = 6
#: Each answer has more events than the allowance's slack: reached one by one with an allowance
#: each, they would parse COUNT times what the capture allows.
BODY = EVENT * (EVENT_SLACK * 3 // 2)


def bomb_specs() -> list[Spec]:
    chunks = [BODY[i : i + 65536] for i in range(0, len(BODY), 65536)]
    return [
        Spec(f"bomb{k:08d}", chunks=chunks, content_type="text/event-stream") for k in range(COUNT)
    ]


@pytest.fixture
def events_parsed(monkeypatch):
    """The events each analysis in the inspect modules parsed, in order."""
    parsed: list[int] = []
    for module in (rows_module, select_module):
        real = module.analyze_exchange

        def counting(exchange, allowance=None, real=real):
            a = real(exchange, allowance)
            parsed.append(a.facts.events)
            return a

        monkeypatch.setattr(module, "analyze_exchange", counting)
    return parsed


def allowed(size: int) -> int:
    """The events a look at ``size`` bytes of capture may parse (each exchange may finish the
    piece it was parsing when the allowance ran out)."""
    return size // EVENT_BYTES + EVENT_SLACK + COUNT * (PIECE // len(EVENT) + 1)


def test_the_last_exchanges_read_through_the_index_share_one_allowance(tmp_path, events_parsed):
    path = trio.run(write_capture, tmp_path, bomb_specs())
    with open_capture(path) as capture:
        found = list(analyzed_exchanges(capture, last=COUNT))
    assert len(found) == len(events_parsed) == COUNT
    assert found[-1].facts.analysis_stopped
    assert sum(events_parsed) <= allowed(path.stat().st_size)


def test_exchanges_ending_in_a_cached_segment_share_its_allowance(tmp_path, events_parsed):
    """Exchanges that began in one segment and end in the next are worked out from the file at
    every look, the second segment's rows coming from the cache."""
    directory = tmp_path / "capture"
    directory.mkdir()
    sink = SegmentSink(directory, SegmentHeader({"enabled": False}))
    sink.open()
    records = [spec.records(k) for k, spec in enumerate(bomb_specs())]
    sink.write_records([r for rs in records for r in rs[:4]])  # heads and request bodies
    sink.rotate()
    for rs in records:
        sink.write_records(rs[4:])
    sink.close()
    size = sum(p.stat().st_size for p in directory.iterdir())
    cache = RowCache(tmp_path / "cache")
    for look in ("first", "cached"):
        events_parsed.clear()
        with open_capture(directory) as capture:
            assert len(list(capture_rows(capture, None, cache))) == COUNT
        assert len(events_parsed) == COUNT
        assert sum(events_parsed) <= allowed(size), look


def test_a_followed_exchange_has_the_allowance_of_its_segment(tmp_path):
    """A follower holds the bodies it reads, but their events are still bounded by the file."""
    [spec] = bomb_specs()[:1]
    spec.chunks = [EVENT * ((1 << 20) // len(EVENT))] * 8  # 8 MiB: 930,000 events
    path = trio.run(write_capture, tmp_path, [spec])
    found = analyzed_as_they_end([tmp_path], last=1, sleep=lambda _: None)
    a = next(found)
    assert a.exchange.id == spec.id and a.facts.analysis_stopped
    assert a.facts.events <= path.stat().st_size // EVENT_BYTES + EVENT_SLACK + PIECE // len(EVENT)


def test_websocket_sessions_share_the_allowance_frame_by_frame(tmp_path, events_parsed):
    """Each frame of a session costs an event: sessions of empty pings (each a few hundred bytes
    of capture, within the session's own 64 MiB bound) stop where the look's allowance runs out."""
    pings = b"\x89\x00" * (EVENT_SLACK * 3 // 2)
    chunks = [pings[i : i + 65536] for i in range(0, len(pings), 65536)]
    specs = [Spec(f"ping{k:08d}", status=101, chunks=chunks) for k in range(COUNT)]
    path = trio.run(write_capture, tmp_path, specs)
    with open_capture(path) as capture:
        found = list(analyzed_exchanges(capture))
    assert [a.exchange.id for a in found] == [s.id for s in specs]
    assert "are not analyzed" in (found[-1].facts.analysis_stopped or "")
    assert found[-1].facts.terminated is None  # its Close frame may be in what was not decoded
    assert sum(a.facts.events for a in found) <= path.stat().st_size // EVENT_BYTES + EVENT_SLACK


def test_the_close_frame_watch_spends_the_allowance(tmp_path, monkeypatch):
    """A session whose note says the client ended it is judged from its Close frames; a million
    empty pings (a few KB of capture) are watched while the allowance lasts, then the end record's
    outcome stands."""
    watched = [0]

    class CountingDecoder(sessions_module.FrameDecoder):
        def process_buffer(self):
            frame = super().process_buffer()
            watched[0] += frame is not None
            return frame

    monkeypatch.setattr(sessions_module, "FrameDecoder", CountingDecoder)
    pings = b"\x89\x00" * (1 << 20)
    spec = Spec(
        "pingnote0001",
        status=101,
        chunks=[pings[i : i + 65536] for i in range(0, len(pings), 65536)],
    )
    records = spec.records(0)
    records.insert(-1, ExchangeNote(x=spec.id, kind="websocket", detail={"ended_by": "client"}))
    exchange = Exchange(spec.id)
    for record in records:
        exchange.add(record)
    allowance = EventAllowance(EVENT_SLACK)
    a = analyze_exchange(exchange, allowance)
    assert a.outcome == "ok" and a.facts.analysis_stopped
    assert watched[0] <= EVENT_SLACK

    pings = (
        b"\x89\x00" * 1000
    )  # within the allowance: judged (no Close frame: the client dropped it)
    exchange = Exchange(spec.id)
    for record in [*records[:4], BodyChunk(x=spec.id, dir="res", ns=2, data=pings), *records[-2:]]:
        exchange.add(record)
    assert analyze_exchange(exchange, EventAllowance(EVENT_SLACK)).outcome == "client_abort"


def test_serve_loads_sessions_within_the_allowance(tmp_path, monkeypatch):
    """``wirecap serve`` decodes every recorded session as it starts: within one allowance."""
    decoded: list[int] = []
    real = replay_sessions.decode_session

    def counting(head, reads, allowance=None):
        session = real(head, reads, allowance)
        decoded.append(len(session.messages))
        return session

    monkeypatch.setattr(replay_sessions, "decode_session", counting)
    pings = b"\x89\x00" * (EVENT_SLACK * 3 // 2)
    chunks = [pings[i : i + 65536] for i in range(0, len(pings), 65536)]
    specs = [Spec(f"ping{k:08d}", status=101, chunks=chunks) for k in range(COUNT)]
    path = trio.run(write_capture, tmp_path, specs)
    with open_capture(path) as capture:
        load_catalog(capture, match_on=("method", "path"))
    assert len(decoded) == COUNT
    assert sum(decoded) <= path.stat().st_size // EVENT_BYTES + EVENT_SLACK


def test_many_small_segments_allow_no_more_than_their_size(tmp_path, events_parsed):
    """Each segment's rows share its allowance; its slack is at most one event per byte, so that
    many small segments do not add up to a slack each."""
    directory = tmp_path / "capture"
    directory.mkdir()
    sink = SegmentSink(directory, SegmentHeader({"enabled": False}))
    sink.open()
    for k, spec in enumerate(bomb_specs()):
        if k:
            sink.rotate()
        sink.write_records(spec.records(k))
    sink.close()
    sizes = [p.stat().st_size for p in sorted(directory.glob("*.cbor.zst"))]
    assert len(sizes) == COUNT and sum(sizes) < 64 * 1024
    with open_capture(directory) as capture:
        rows = list(capture_rows(capture))
    assert len(rows) == COUNT
    pieces = COUNT * (PIECE // len(EVENT) + 1)
    assert sum(events_parsed) <= sum(EventAllowance.for_stored(s).left for s in sizes) + pieces
    assert sum(events_parsed) < COUNT * EVENT_SLACK // 4
