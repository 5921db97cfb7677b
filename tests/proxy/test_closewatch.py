"""CloseWatch: a Close frame is seen from the frame headers alone, however the reads cut the bytes,
and never inside a payload. Frames are made by wsproto, masked (client) and unmasked (server)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from wirecap.proxy.closewatch import CloseWatch

#: Payloads that look like Close frame headers, of each length form (7-bit, 16-bit, 64-bit).
payloads = st.one_of(
    st.binary(max_size=140),
    st.just(b"\x88\x00" * 100),
    st.binary(min_size=126, max_size=70_000).map(lambda b: b"\x88\x02" + b),
)


def fed_in_pieces(data: bytes, cuts: list[int]) -> CloseWatch:
    watch = CloseWatch()
    start = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        watch.feed(data[start:cut])
        start = cut
    return watch


@given(
    client=st.booleans(),
    messages=st.lists(payloads, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=80_000), max_size=8),
)
def test_data_and_ping_frames_are_not_a_close(client, messages, cuts):
    frames = FrameProtocol(client=client, extensions=[])
    data = b"".join(bytes(frames.send_data(m)) for m in messages) + bytes(frames.ping(b"\x88"))
    assert not fed_in_pieces(data, cuts).close_seen


@given(
    client=st.booleans(),
    messages=st.lists(payloads, max_size=4),
    code=st.sampled_from([1000, 1001, 4001]),
    cuts=st.lists(st.integers(min_value=0, max_value=80_000), max_size=8),
)
def test_a_close_frame_after_data_is_seen(client, messages, code, cuts):
    frames = FrameProtocol(client=client, extensions=[])
    before = b"".join(bytes(frames.send_data(m)) for m in messages)
    data = before + bytes(frames.close(code, "bye"))
    assert fed_in_pieces(data, cuts).close_seen
    assert not fed_in_pieces(before, cuts).close_seen


def test_a_close_frame_cut_before_its_second_byte_is_not_seen_yet():
    close = bytes(FrameProtocol(client=True, extensions=[]).close(1000, ""))
    watch = CloseWatch()
    watch.feed(close[:1])
    assert not watch.close_seen
    watch.feed(close[1:])
    assert watch.close_seen
