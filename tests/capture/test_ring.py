"""The shared ring that carries big body chunks to the capture writer process."""

from __future__ import annotations

import os
import select
import socket

import pytest
import trio
import trio.testing

from wirecap.capture.child import WriterSpec, join_blobs, split_blobs
from wirecap.capture.packing import BIG_BODY_BYTES, BODY, REQUEST, packed_body
from wirecap.capture.ring import RING_BYTES, BodyRing, RingChunk
from wirecap.capture.sink import _in_memory
from wirecap.capture.writer import ProcessCaptureWriter, SegmentHeader
from wirecap.proxy.server import _receive_into_ring
from wirecap.proxy.transport import SocketTransport

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the ring needs memfd")


@pytest.fixture
def rings():
    """The proxy's side and, on a descriptor of its own, the writer process's side of one ring."""
    writer = BodyRing.create(100_000)
    assert writer is not None
    reader = BodyRing(os.dup(writer.fd), writer.capacity)
    yield writer, reader
    writer.close()
    reader.close()


def test_a_chunk_put_by_one_side_is_taken_by_the_other(rings):
    writer, reader = rings
    first, second = os.urandom(30_000), os.urandom(40_000)
    at_first, at_second = writer.put(first), writer.put(bytearray(second))
    assert (at_first, at_second) == (0, 30_000)
    assert reader.take(at_first, len(first)) == first
    assert reader.take(at_second, len(second)) == second
    assert writer.released == 0  # taking copies; the space goes back when released
    reader.release(30_000)
    assert writer.released == 30_000
    reader.release(10_000)  # never backwards
    assert writer.released == 30_000


def test_no_room_until_the_reader_gives_it_back(rings):
    writer, reader = rings
    at = writer.put(b"a" * 60_000)
    assert at == 0
    assert writer.put(b"b" * 60_000) is None  # 120,000 bytes in a 100,000-byte ring
    assert writer.reserve(60_000) is None
    assert writer.put(b"c" * 200_000) is None  # bigger than the ring: never
    reader.take(at, 60_000)
    reader.release(60_000)
    assert writer.put(b"b" * 60_000) is not None


def test_a_chunk_never_lies_across_the_end(rings):
    writer, reader = rings
    reader.take(writer.put(b"a" * 70_000), 70_000)
    reader.release(70_000)
    data = os.urandom(50_000)
    at = writer.put(data)  # 30,000 bytes left before the end: the next lap
    assert at == 100_000
    assert reader.take(at, len(data)) == data
    reader.release(at + len(data))  # the skipped bytes go back with the chunk after them
    assert writer.put(b"x" * 50_000) == 150_000


def test_the_skipped_end_of_a_lap_is_released_before_the_chunk_after_it_is_there(rings):
    writer, reader = rings
    assert writer.put(b"a" * 70_000) == 0
    assert writer.reserve(50_000) is None  # 30,000 bytes to the end: the next lap, no room yet
    assert writer.written == 100_000  # the skipped end counts as written...
    reader.release(writer.written)  # ...so the reader can give it back with what came before it
    slot = writer.reserve(50_000)
    assert slot is not None and slot[0] == 100_000


def test_a_reserved_slot_is_filled_in_place_and_shrinks_to_what_was_used(rings):
    writer, reader = rings
    slot = writer.reserve(40_000)
    assert slot is not None
    start, view = slot
    data = os.urandom(25_000)
    view[: len(data)] = data  # what recv_into does
    writer.shrink(start, 40_000, len(data))
    assert writer.written == 25_000  # the unused 15,000 bytes are free again
    assert reader.take(start, len(data)) == data
    assert writer.put(b"z" * 10) == 25_000
    # Shrinking a slot that is no longer the last one changes nothing (its tail stays a hole that
    # a later release gives back).
    second = writer.reserve(1000)
    assert second is not None
    writer.put(b"y")
    writer.shrink(second[0], 1000, 0)
    assert writer.written == 25_010 + 1000 + 1


def body(x: str, data: bytes) -> tuple:
    return (BODY, (x, "res", 1, data))


def in_memory(batch: list) -> list:
    """``batch`` with the chunks join_blobs left in the ring copied out."""
    return [_in_memory(packed) for packed in batch]


def test_split_and_join_use_the_ring_where_it_has_room_and_the_pipe_otherwise(rings):
    writer, reader = rings
    big = [os.urandom(BIG_BODY_BYTES + n) for n in (0, 60_000, 9)]
    batch = [
        (REQUEST, ("a", 1, "POST", "/", b"head", "", "", None, None)),
        body("a", b"small"),
        *(body("a", data) for data in big),
    ]
    original = list(batch)
    pipe = split_blobs(batch, writer)
    # The first two fit (92,768 of 100,000 bytes), the third would wait for room: the pipe.
    assert pipe == [big[2]]
    assert [type(values[3]) for _code, values in batch[2:]] == [tuple, tuple, int]
    messages = iter(bytearray(data) for data in pipe)
    assert join_blobs(batch, lambda: next(messages), reader)
    # Big chunks stay where they lie in the ring (their frame copies them from there).
    assert [type(values[3]) for _code, values in batch[2:]] == [RingChunk, RingChunk, bytearray]
    assert in_memory(batch) == original


def test_split_forgets_the_chunks_the_relay_received_into_the_ring(rings):
    writer, reader = rings
    received: dict[int, None] = {}
    slots = []
    for size in (20_000, 30_000):
        slot = writer.reserve(size)
        assert slot is not None
        slot[1][:] = os.urandom(size)
        received[slot[0]] = None
        slots.append((slot[0], size))
    big = os.urandom(BIG_BODY_BYTES)
    # The second slot's record went into a batch before the first's: the oldest one still to come
    # is what the writer process may not release.
    batch = [body("a", slots[1]), body("b", big)]
    assert split_blobs(batch, writer, received) == []
    assert list(received) == [slots[0][0]]
    assert batch[1][1][3] == (50_000, len(big))  # the pump's copy goes after the slots
    assert join_blobs(batch, lambda: None, reader)
    assert in_memory(batch)[1] == body("b", big)
    split_blobs([body("a", slots[0])], writer, received)
    assert received == {}


def test_join_stops_where_the_pipe_ended(rings):
    writer, reader = rings
    first, second = os.urandom(BIG_BODY_BYTES), os.urandom(90_000)
    batch = [body("a", first), body("b", second)]
    assert len(split_blobs(batch, writer)) == 1  # the second does not fit beside the first
    assert not join_blobs(batch, lambda: None, reader)  # ...and the pipe ends before it
    assert in_memory(batch) == [body("a", first)]


async def test_the_relay_fills_a_slot_from_its_socket_and_gives_back_what_it_did_not_use(tmp_path):
    """The proxy's side alone (no writer process): a slot is claimed for a read, filled by
    ``recv_into``, shrunk to what came; with nothing to read it is given back before the relay
    waits, so a slot is never held across a wait."""
    ring = BodyRing.create(100_000)
    assert ring is not None
    writer = ProcessCaptureWriter(WriterSpec(directory=tmp_path, header=SegmentHeader({})))
    writer._ring = ring  # as run() sets it
    ours, theirs = socket.socketpair()
    transport = SocketTransport(ours)
    try:
        received = []
        async with trio.open_nursery() as nursery:

            async def relay() -> None:
                received.append(await _receive_into_ring(transport, writer, 256 * 1024))

            nursery.start_soon(relay)
            await trio.testing.wait_all_tasks_blocked()
            assert ring.written == 0 and not writer._received  # waiting, holding nothing
            theirs.send(b"x" * 1000)
        [(data, where)] = received
        assert bytes(data) == b"x" * 1000 and where == (0, 1000)
        # Asked 256 KiB, given a quarter of the ring (25,000 bytes), kept what came.
        assert ring.written == 1000
        assert list(writer._received) == [0]  # until its record goes out in a batch
    finally:
        transport.close()
        theirs.close()
        ring.close()


@pytest.mark.parametrize("ring_bytes", [RING_BYTES, 256 * 1024])
def test_a_batch_of_ring_chunks_is_due_before_it_holds_half_the_ring(tmp_path, ring_bytes):
    """The relay lets the pump send once half the ring waits in records (a batch is then due),
    so the other half is free to receive into meanwhile; with a ring smaller than two batches,
    a batch that waited for its byte bound would hold the ring full until its time bound."""
    spec = WriterSpec(directory=tmp_path, header=SegmentHeader({}))
    writer = ProcessCaptureWriter(spec, ring_bytes=ring_bytes)
    slot = 32 * 1024
    held = 0
    while not writer.due:
        assert writer.offer(packed_body("a", "res", held, (held, slot)))
        held += slot
    assert ring_bytes // 4 < held <= ring_bytes // 2 + slot


def test_the_reader_signals_released_space_only_when_the_proxy_asked_for_it(rings):
    writer, _ = rings
    assert writer.event_fd >= 0  # eventfd: Linux, like memfd
    reader = BodyRing(os.dup(writer.fd), writer.capacity, os.dup(writer.event_fd))
    try:
        signalled = lambda: bool(select.select([writer.event_fd], [], [], 0)[0])  # noqa: E731
        writer.put(b"a" * 60_000)
        reader.release(30_000)
        assert not signalled()  # nobody waits
        writer.want()
        reader.release(30_000)  # nothing new released: no signal
        assert not signalled()
        reader.release(60_000)
        assert signalled()
        os.eventfd_read(writer.event_fd)
        reader.release(70_000)  # the wish was used up
        assert not signalled()
    finally:
        reader.close()


@pytest.mark.parametrize(("on_full", "waits"), [("drop", False), ("block", True)])
async def test_under_drop_a_full_ring_is_never_waited_for(tmp_path, on_full, waits):
    ring = BodyRing.create(100_000)
    assert ring is not None
    spec = WriterSpec(directory=tmp_path, header=SegmentHeader({}))
    writer = ProcessCaptureWriter(spec, on_full=on_full)
    writer._ring = ring  # as run() sets it
    try:
        assert writer.ring_slot(100_000) is not None  # a quarter of the ring
        ring.put(b"x" * 75_000)  # the rest
        assert writer.ring_slot(1000) is None
        assert await writer.wait_for_ring() is waits  # block: waited (RING_WAIT), try again
    finally:
        ring.close()


def test_a_chunk_is_read_where_it_lies_until_its_space_is_released(rings):
    writer, reader = rings
    data = b"QUJD" * 5000 + b"-tail"
    at = writer.put(data)
    assert at is not None
    chunk = reader.chunk(at, len(data))
    assert len(chunk) == len(data)
    assert bytes(chunk) == data
    assert ord("-") in chunk  # the redaction prefilter's question, answered by memchr in place
    assert ord("+") not in chunk
    with chunk.view() as view:
        assert view == data


def test_a_chunk_copied_into_its_frame_frees_no_further_than_the_chunks_still_to_copy(rings):
    """The relay received two slots; the batch names the later one first. Copying it frees
    nothing (the earlier slot is still to copy); copying the other frees up to the batch's word."""
    writer, reader = rings
    first, second = os.urandom(BIG_BODY_BYTES), os.urandom(BIG_BODY_BYTES + 1)
    at_first, at_second = writer.put(first), writer.put(second)
    assert at_first is not None and at_second is not None
    small = writer.put(b"s" * 100)  # a small read: copied out at once, held by no one
    batch = [body("b", (at_second, len(second))), body("a", (at_first, len(first)))]
    batch.append(body("c", (small, 100)))
    release = writer.written
    assert join_blobs(batch, lambda: None, reader, release)
    later, earlier = batch[0][1][3], batch[1][1][3]
    assert batch[2][1][3] == b"s" * 100
    assert reader.released == 0
    later.copied()
    assert reader.released == 0
    earlier.copied()
    assert reader.released == release
