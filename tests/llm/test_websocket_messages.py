"""decode_session: stored reads of both directions -> messages, with wsproto; frames made by
wsproto's own sender (masked client frames, permessage-deflate both ways), cut at any byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from wirecap.llm.websocket import (
    MAX_SESSION_DECODED,
    MESSAGE_COST,
    decode_session,
    deflate_params,
)

DEFLATE = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


def switch_head(extensions: str | None) -> bytes:
    line = f"Sec-WebSocket-Extensions: {extensions}\r\n".encode() if extensions else b""
    return HEAD + line + b"\r\n"


def sender(client: bool, deflate: bool) -> FrameProtocol:
    extensions = []
    if deflate:
        ext = PerMessageDeflate()
        ext.finalize(DEFLATE)
        extensions.append(ext)
    return FrameProtocol(client=client, extensions=extensions)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@settings(max_examples=60, deadline=None)
@given(
    deflate=st.booleans(),
    texts=st.lists(st.text(max_size=300), min_size=1, max_size=4),
    blob=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_messages_come_back_whole_however_the_reads_were_cut(deflate, texts, blob, cuts):
    client, server = sender(True, deflate), sender(False, deflate)
    sent = b""
    for text in texts:  # each text in two fragments: a frame and its continuation
        half = len(text) // 2
        sent += bytes(client.send_data(text[:half], fin=False))
        sent += bytes(client.send_data(text[half:], fin=True))
    sent += bytes(client.ping(b"p")) + bytes(client.close(1000, "bye"))
    answer = (
        bytes(server.send_data(blob)) + bytes(server.pong(b"p")) + bytes(server.close(4001, "x"))
    )
    reads = [("req", i, piece) for i, piece in enumerate(cut(sent, cuts))]
    reads += [("res", 10_000 + i, piece) for i, piece in enumerate(cut(answer, cuts))]
    session = decode_session(switch_head(DEFLATE if deflate else None), reads)
    assert session.problems == {}
    req = session.of("req")
    assert [m.text for m in req if m.opcode == "text"] == texts
    assert [m.opcode for m in req][-2:] == ["ping", "close"]
    assert req[-1].close_code == 1000 and req[-1].data == b"bye"
    res = session.of("res")
    assert [(m.opcode, m.data) for m in res] == [("binary", blob), ("pong", b"p"), ("close", b"x")]
    assert res[-1].close_code == 4001
    assert session.closed_by("req") and session.closed_by("res")


def test_a_message_time_is_the_read_that_completed_it():
    frames = sender(False, deflate=False)
    data = bytes(frames.send_data("hello"))
    session = decode_session(switch_head(None), [("res", 5, data[:3]), ("res", 9, data[3:])])
    [message] = session.messages
    assert (message.ns, message.text, message.size) == (9, "hello", 5)


def test_bytes_that_end_inside_a_message_or_do_not_decode_are_named_not_raised():
    frames = sender(True, deflate=False)
    data = bytes(frames.send_data("a" * 100))
    cut_short = decode_session(switch_head(None), [("req", 1, data[:50])])
    assert cut_short.messages == []
    assert "end inside a message" in cut_short.problems["req"]
    garbage = decode_session(switch_head(None), [("res", 1, b"\xff\xff\xff\xff")])
    assert garbage.messages == [] and "res" in garbage.problems


def test_compressed_frames_without_a_negotiated_extension_are_a_problem():
    data = bytes(sender(False, deflate=True).send_data("compressed " * 20))
    session = decode_session(switch_head(None), [("res", 1, data)])
    assert session.messages == [] and "res" in session.problems


def test_the_deflate_offer_is_found_among_other_extensions():
    assert deflate_params(f"x-other; a=1, {DEFLATE}") == DEFLATE
    assert deflate_params("x-other") is None
    assert deflate_params(None) is None


def test_a_deflate_bomb_costs_a_bounded_inflation_and_is_named():
    """A message of a few hundred KB that inflates to far more than the bound stops its
    direction's decoding, with the reason; the messages before it stay."""
    client = sender(True, deflate=True)
    sent = bytes(client.send_data("first")) + bytes(client.send_data(b"\0" * (200 * 2**20)))
    assert len(sent) < 2**20  # the whole bomb is under a megabyte on the wire
    session = decode_session(switch_head(DEFLATE), [("req", 1, sent)])
    assert [m.text for m in session.of("req")] == ["first"]
    assert "req" in session.problems


def test_a_101_with_bad_extension_parameters_is_a_problem_not_an_error():
    client = sender(True, deflate=True)
    reads = [("req", 1, bytes(client.send_data("hello")))]
    bad = "permessage-deflate; server_max_window_bits=abc"
    session = decode_session(switch_head(bad), reads)
    assert session.messages == [] and "Sec-WebSocket-Extensions" in session.problems["req"]


def test_millions_of_empty_frames_stop_at_the_session_bound():
    """Each message costs its holding (MESSAGE_COST), not only its payload: 16 million empty
    frames in one read stop after the first quarter million, one frame at a time."""
    session = decode_session(switch_head(None), [("res", 1, b"\x82\x00" * (16 << 20))])
    assert len(session.messages) == MAX_SESSION_DECODED // MESSAGE_COST + 1
    assert "decoding stops past 64 MiB" in session.problems["res"]


def test_millions_of_empty_frames_of_one_message_stop_at_the_bound():
    """The frames of a message being assembled are held too: a million empty continuation frames
    (16 million would take minutes and gigabytes of parts) stop after a quarter million."""
    frames = b"\x02\x00" + b"\x00\x00" * (1 << 20) + b"\x80\x00"
    reads = [("res", 1, frames[i : i + (1 << 20)]) for i in range(0, len(frames), 1 << 20)]
    session = decode_session(switch_head(None), reads)
    assert session.messages == []
    assert "a message of over 64 MiB (262145 frame(s)" in session.problems["res"]
