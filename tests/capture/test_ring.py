"""The shared ring that carries big body chunks to the capture writer process."""

from __future__ import annotations

import os

import pytest

from wirecap.capture.child import join_blobs, split_blobs
from wirecap.capture.packing import BIG_BODY_BYTES, BODY, REQUEST
from wirecap.capture.ring import BodyRing

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
    assert writer.released == 30_000
    assert reader.take(at_second, len(second)) == second
    assert writer.released == 70_000


def test_no_room_until_the_reader_gives_it_back(rings):
    writer, reader = rings
    at = writer.put(b"a" * 60_000)
    assert at == 0
    assert writer.put(b"b" * 60_000) is None  # 120,000 bytes in a 100,000-byte ring
    assert writer.put(b"c" * 200_000) is None  # bigger than the ring: never
    reader.take(at, 60_000)
    assert writer.put(b"b" * 60_000) is not None


def test_a_chunk_never_lies_across_the_end(rings):
    writer, reader = rings
    reader.take(writer.put(b"a" * 70_000), 70_000)
    data = os.urandom(50_000)
    at = writer.put(data)  # 30,000 bytes left before the end: the next lap
    assert at == 100_000
    assert reader.take(at, len(data)) == data
    assert writer.released == 150_000  # the skipped bytes are given back with the chunk
    assert writer.put(b"x" * 50_000) == 150_000


def body(x: str, data: bytes) -> tuple:
    return (BODY, (x, "res", 1, data))


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
    assert batch == original
    assert writer.released == len(big[0]) + len(big[1])


def test_join_stops_where_the_pipe_ended(rings):
    writer, reader = rings
    first, second = os.urandom(BIG_BODY_BYTES), os.urandom(90_000)
    batch = [body("a", first), body("b", second)]
    assert len(split_blobs(batch, writer)) == 1  # the second does not fit beside the first
    assert not join_blobs(batch, lambda: None, reader)  # ...and the pipe ends before it
    assert batch == [body("a", first)]
