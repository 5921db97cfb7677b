"""The writer's judgement of how a WebSocket session ended, on records built with wsproto's own
frame encoder (client frames masked, permessage-deflate where the 101 accepted it)."""

from __future__ import annotations

import pytest
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameProtocol

from wirecap.capture.records import BodyChunk, ExchangeEnd, ExchangeNote, ResponseHead
from wirecap.capture.sessions import SessionEnds

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
