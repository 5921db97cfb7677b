"""The writer's judgement of how a WebSocket session ended, on records built with wsproto's own
frame encoder (client frames masked, permessage-deflate where the 101 accepted it), and the
reader's judgement of the same records."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameProtocol

from wirecap.capture.reader import Exchange
from wirecap.capture.records import BodyChunk, ExchangeEnd, ExchangeNote, ResponseHead
from wirecap.capture.sessions import SessionEnds
from wirecap.inspect.analysis import analyze_exchange

SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"


def encoder(side: str, deflate: bool) -> FrameProtocol:
    extensions = []
    if deflate:
        ext = PerMessageDeflate()
        ext.finalize("permessage-deflate")
        extensions.append(ext)
    return FrameProtocol(client=side == "req", extensions=extensions)


def frames(side: str, *, deflate: bool = False, close: bool) -> bytes:
    """Some frames of ``side``: two text messages (one fragmented), a ping, and maybe a Close."""
    proto = encoder(side, deflate)
    out = proto.send_data("hello " * 50, fin=True)
    out += proto.send_data("part one ", fin=False) + proto.send_data("part two", fin=True)
    out += proto.ping(b"still there?")
    if close:
        out += proto.close(CloseReason.NORMAL_CLOSURE, "bye")
    return out


def session(
    req: bytes, res: bytes, *, ended_by: str, deflate: bool = False, outcome: str = "ok", step=None
) -> ExchangeEnd:
    """Run one session's records through a judge (each direction's bytes in reads of ``step``
    bytes) and return its end record as judged."""
    judge = SessionEnds()
    head = SWITCH + (DEFLATE if deflate else b"") + b"\r\n"
    judge.judge(ResponseHead(x="x1", ns=1, status=101, head=head))
    for direction, data in (("req", req), ("res", res)):
        size = step or len(data) or 1
        for at in range(0, len(data), size):
            judge.judge(BodyChunk(x="x1", dir=direction, ns=2, data=data[at : at + size]))
    judge.judge(ExchangeNote(x="x1", kind="websocket", detail={"ended_by": ended_by}))
    end = judge.judge(ExchangeEnd(x="x1", ns=3, outcome=outcome))
    assert isinstance(end, ExchangeEnd)
    return end


@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize("step", [None, 1, 7])
def test_a_closing_handshake_leaves_the_session_ok(deflate, step):
    req = frames("req", deflate=deflate, close=True)
    res = frames("res", deflate=deflate, close=True)
    for ended_by in ("client", "upstream"):
        end = session(req, res, ended_by=ended_by, deflate=deflate, step=step)
        assert (end.outcome, end.error) == ("ok", None)


@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize("step", [None, 1])
def test_the_side_that_ended_without_a_close_frame_dropped_the_session(deflate, step):
    with_close = {d: frames(d, deflate=deflate, close=True) for d in ("req", "res")}
    without = {d: frames(d, deflate=deflate, close=False) for d in ("req", "res")}
    end = session(without["req"], with_close["res"], ended_by="client", deflate=deflate, step=step)
    assert end.outcome == "client_abort"
    assert "without a Close frame" in (end.error or "")
    end = session(
        with_close["req"], without["res"], ended_by="upstream", deflate=deflate, step=step
    )
    assert end.outcome == "upstream_error"
    # The side that did not end first is not judged: it may not have had the chance to close.
    end = session(with_close["req"], without["res"], ended_by="client", deflate=deflate, step=step)
    assert end.outcome == "ok"


def test_frames_that_do_not_parse_count_as_no_close_frame():
    garbage = b"\x8f\x00" + frames("res", close=True)  # opcode 0xF does not exist
    end = session(frames("req", close=True), garbage, ended_by="upstream")
    assert end.outcome == "upstream_error"


def test_compressed_frames_without_an_accepted_extension_do_not_parse():
    """RSV1 is allowed only when the 101 accepted permessage-deflate, as wsproto has it."""
    compressed = frames("res", deflate=True, close=True)
    end = session(frames("req", close=True), compressed, ended_by="upstream", deflate=False)
    assert end.outcome == "upstream_error"


def test_other_records_and_outcomes_pass_unchanged():
    judge = SessionEnds()
    plain = ExchangeEnd(x="x2", ns=3, outcome="ok")
    assert judge.judge(ResponseHead(x="x2", ns=1, status=200, head=b"HTTP/1.1 200 OK\r\n\r\n"))
    assert judge.judge(BodyChunk(x="x2", dir="res", ns=2, data=b"\x00garbage")) is not None
    assert judge.judge(plain) is plain
    reset = session(b"", b"", ended_by="client", outcome="client_abort")
    assert reset.outcome == "client_abort" and reset.error is None


# The writer's judgement and the reader's (inspect's judged_outcome, for a file written without
# it) are one: every session below, in any split of its reads, is judged the same by both.

CLIENT_CLOSE = FrameProtocol(client=True, extensions=[]).close(CloseReason.NORMAL_CLOSURE, "bye")


def raw_frame(side: str, first: int, payload: bytes) -> bytes:
    """A frame of ``side`` with first byte ``first`` (FIN, RSV bits, opcode) as given, so that
    frames wsproto's encoder would refuse to make can be made."""
    masked = 0x80 if side == "req" else 0
    size = len(payload)
    if size < 126:
        head = bytes([first, size | masked])
    elif size < 1 << 16:
        head = bytes([first, 126 | masked]) + struct.pack("!H", size)
    else:
        head = bytes([first, 127 | masked]) + struct.pack("!Q", size)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def switch_head(*extension_lines: str) -> bytes:
    lines = "".join(f"Sec-WebSocket-Extensions: {line}\r\n" for line in extension_lines)
    return SWITCH + lines.encode() + b"\r\n"


def records_of(head: bytes, reads: list[tuple[str, bytes]], ended_by: object) -> list:
    records: list = [ResponseHead(x="x1", ns=1, status=101, head=head)]
    records += [BodyChunk(x="x1", dir=d, ns=2 + i, data=data) for i, (d, data) in enumerate(reads)]
    if ended_by is not None:
        records.append(ExchangeNote(x="x1", kind="websocket", detail={"ended_by": ended_by}))
    records.append(ExchangeEnd(x="x1", ns=len(reads) + 3, outcome="ok"))
    return records


def both_judgements(head: bytes, reads: list[tuple[str, bytes]], ended_by: object) -> list[str]:
    """The writer's outcome and the reader's, for the same records."""
    records = records_of(head, reads, ended_by)
    judge = SessionEnds()
    written = [judge.judge(record) for record in records][-1]
    exchange = Exchange("x1")
    for record in records:
        exchange.add(record)
    return [written.outcome, analyze_exchange(exchange).outcome]


CLOSE_AFTER = {
    "a text message that is not UTF-8": (switch_head(), raw_frame("req", 0x81, b"\xff\xfe")),
    "a continuation with no message": (switch_head(), raw_frame("req", 0x80, b"abc")),
    "a new message inside a fragmented one": (
        switch_head(),
        raw_frame("req", 0x01, b"abc") + raw_frame("req", 0x81, b"def"),
    ),
    "a compressed payload that does not inflate": (
        switch_head("permessage-deflate"),
        raw_frame("req", 0xC1, b"\xff\xff\xff\xff"),
    ),
    "a compressed continuation": (
        switch_head("permessage-deflate"),
        raw_frame("req", 0x41, b"\x02\x00") + raw_frame("req", 0xC0, b"\x02\x00"),
    ),
    "extension parameters no inflater takes": (
        switch_head("permessage-deflate; server_max_window_bits=99"),
        encoder("req", False).send_data("hi"),
    ),
    "permessage-deflate accepted on a second extensions line": (
        switch_head("x-other", "permessage-deflate"),
        encoder("req", True).send_data("hi " * 40),
    ),
}


@pytest.mark.parametrize("name", list(CLOSE_AFTER))
def test_a_close_frame_counts_whatever_the_data_frames_before_it_carried(name):
    head, before = CLOSE_AFTER[name]
    reads = [("req", before), ("req", CLIENT_CLOSE)]
    assert both_judgements(head, reads, "client") == ["ok", "ok"]


@pytest.mark.parametrize(
    "close",
    [
        raw_frame("req", 0x88, b"\x03"),  # a one-byte payload
        raw_frame("req", 0x88, struct.pack("!H", 999)),  # a code no one may send
        raw_frame("req", 0x88, struct.pack("!H", 1005)),  # a code only for local use
        raw_frame("req", 0x88, struct.pack("!H", 1000) + b"\xff"),  # a reason not UTF-8
    ],
    ids=["one-byte payload", "code 999", "code 1005", "reason not UTF-8"],
)
def test_a_close_frame_counts_whatever_its_code_and_reason(close):
    assert both_judgements(switch_head(), [("req", close)], "client") == ["ok", "ok"]


def test_the_extensions_header_is_read_by_its_names_not_by_a_substring():
    head = switch_head("x-permessage-deflate-but-not")
    compressed = encoder("req", True).send_data("hi " * 40)
    reads = [("req", compressed), ("req", CLIENT_CLOSE)]
    assert both_judgements(head, reads, "client") == ["client_abort", "client_abort"]


def test_a_session_closed_after_64_mib_of_messages_reads_as_closed():
    """The reader's message decoding stops at 64 MiB; the Close frame after it still counts."""
    proto = encoder("req", False)
    reads = [("req", bytes(proto.send_data(b"x" * (1 << 20)))) for _ in range(65)]
    reads.append(("req", CLIENT_CLOSE))
    assert both_judgements(switch_head(), reads, "client") == ["ok", "ok"]


def blocks_of(side: str, deflate: bool) -> list[bytes]:
    """What one side's stream is made of: good frames, odd ones, and bytes that are no frames."""
    proto = encoder(side, deflate)
    mask = 0x80 if side == "req" else 0
    return [
        bytes(proto.send_data("hello " * 30)),
        bytes(proto.send_data("one ", fin=False) + proto.ping(b"?") + proto.send_data("two")),
        bytes(proto.send_data(b"\x00\x01" * 100)),
        bytes(proto.pong(b"!")),
        bytes(proto.close(CloseReason.NORMAL_CLOSURE, "bye")),
        raw_frame(side, 0x88, struct.pack("!H", 999)),
        raw_frame(side, 0x81, b"\xff"),
        raw_frame(side, 0x80, b"stray"),
        raw_frame(side, 0xC1, b"\xff\xff"),
        raw_frame(side, 0xC9, b"compressed ping"),
        # A frame header announcing 2^63 - 1 bytes, then whatever comes next is its payload.
        bytes([0x82, 127 | mask]) + struct.pack("!Q", (1 << 63) - 1) + bytes(4 if mask else 0),
        b"\xff\xff\xff",
    ]


HEADS = [
    switch_head(),
    switch_head("permessage-deflate"),
    switch_head("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
    switch_head("foo", "permessage-deflate; client_max_window_bits=10"),
    switch_head("permessage-deflate; server_max_window_bits=99"),
    switch_head("x-permessage-deflate"),
]


@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from(HEADS),
    deflate=st.booleans(),
    picks=st.lists(st.tuples(st.sampled_from(["req", "res"]), st.integers(0, 11)), max_size=8),
    cuts=st.lists(st.integers(1, 400), max_size=6),
    ended_by=st.sampled_from(["client", "upstream", None, "someone"]),
)
def test_the_writer_and_the_reader_judge_every_session_alike(head, deflate, picks, cuts, ended_by):
    blocks = {side: blocks_of(side, deflate) for side in ("req", "res")}
    streams = {d: b"".join(blocks[d][i] for side, i in picks if side == d) for d in blocks}
    reads = []
    for direction, data in streams.items():
        at = 0
        for cut in [*cuts, len(data)]:
            if at < len(data):
                reads.append((direction, data[at : at + cut]))
            at += cut
    writer, reader = both_judgements(head, reads, ended_by)
    assert writer == reader


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                ResponseHead,
                x=st.sampled_from(["a", "b"]),
                ns=st.just(1),
                status=st.sampled_from([101, 200]),
                head=st.binary(max_size=80).map(lambda extra: SWITCH + extra + b"\r\n"),
            ),
            st.builds(
                BodyChunk,
                x=st.sampled_from(["a", "b"]),
                dir=st.sampled_from(["req", "res"]),
                ns=st.just(2),
                data=st.binary(max_size=64),
            ),
            st.builds(
                ExchangeNote,
                x=st.sampled_from(["a", "b"]),
                kind=st.sampled_from(["websocket", "fault"]),
                detail=st.dictionaries(
                    st.sampled_from(["ended_by", "other"]),
                    st.one_of(st.none(), st.text(max_size=8), st.integers(), st.lists(st.none())),
                ),
            ),
            st.builds(
                ExchangeEnd,
                x=st.sampled_from(["a", "b"]),
                ns=st.just(3),
                outcome=st.sampled_from(["ok", "client_abort"]),
            ),
        ),
        max_size=30,
    )
)
def test_any_records_are_judged_without_an_error(records):
    judge = SessionEnds()
    for record in records:
        judged = judge.judge(record)
        assert type(judged) is type(record)
        if judged is not record:
            assert isinstance(judged, ExchangeEnd)
            assert judged.outcome in ("client_abort", "upstream_error")


def test_a_frame_of_2_to_the_63_bytes_and_endless_frames_hold_no_memory():
    """A hostile side's frame that announces 2^63 - 1 bytes, then 64 MiB of its payload, then
    endless small frames: what the judge holds does not grow with what went by."""
    judge = SessionEnds()
    judge.judge(ResponseHead(x="x1", ns=1, status=101, head=SWITCH + b"\r\n"))
    header = bytes([0x02, 127]) + struct.pack("!Q", (1 << 63) - 1)  # an unfinished message
    judge.judge(BodyChunk(x="x1", dir="res", ns=2, data=header))
    read = bytes(64 * 1024)
    tracemalloc.start()
    try:
        for _ in range(1024):
            judge.judge(BodyChunk(x="x1", dir="res", ns=2, data=read))
        small = FrameProtocol(client=False, extensions=[]).send_data(b"tick")
        endless = bytes(raw_frame("res", 0x89, b"")) * 10 + bytes(small) * 10
        judge = SessionEnds()
        judge.judge(ResponseHead(x="x2", ns=1, status=101, head=SWITCH + b"\r\n"))
        for _ in range(2000):
            judge.judge(BodyChunk(x="x2", dir="res", ns=2, data=endless))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak


def test_sessions_whose_end_never_comes_are_forgotten_past_the_bound():
    """An end record dropped on the way (``--on-full drop``) leaves its session open; the judge
    holds at most ``max_open`` sessions, forgetting the oldest, so memory stays bounded."""
    judge = SessionEnds(max_open=3)
    head = SWITCH + b"\r\n"
    for x in ("lost", "b", "c", "d"):
        judge.judge(ResponseHead(x=x, ns=1, status=101, head=head))
        judge.judge(ExchangeNote(x=x, kind="websocket", detail={"ended_by": "client"}))
    ends = {x: judge.judge(ExchangeEnd(x=x, ns=3, outcome="ok")) for x in ("lost", "b", "d")}
    assert {x: end.outcome for x, end in ends.items()} == {
        "lost": "ok",  # forgotten: passes as it is
        "b": "client_abort",
        "d": "client_abort",
    }
