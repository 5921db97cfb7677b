"""Large bodies of exchanges read together: packed in memory while they compress well, so that a
pass over a capture of many concurrent long bodies decodes each frame once, not once per exchange
whose body it holds a piece of."""

from __future__ import annotations

import random
import tempfile

import pytest

from tests.captures import Spec
from wirecap.capture import BodyChunk, open_capture
from wirecap.capture.records import Redaction
from wirecap.capture.sink import SegmentHeader, SegmentSink

READ = 4096
READS = 128  # 512 KiB per exchange: past HELD_BODY_BYTES


def interleaved_capture(directory, count: int, body) -> list[str]:
    """``count`` exchanges whose response reads alternate across the same 1 MiB frames, as the
    proxy writes concurrent streams; ``body(k, i)`` is read ``i`` of exchange ``k``."""
    directory.mkdir(exist_ok=True)
    sink = SegmentSink(directory, SegmentHeader({"enabled": False}))
    sink.open()
    ids = [f"inter{k:07d}" for k in range(count)]
    specs = [Spec(id=x, chunks=[b"-"], content_type="application/octet-stream") for x in ids]
    records = [spec.records(k) for k, spec in enumerate(specs)]
    sink.write_records([r for rs in records for r in rs[:4]])  # heads and request bodies
    batch: list[BodyChunk] = []
    for i in range(READS):
        for k, x in enumerate(ids):
            redactions = (
                (Redaction(where="body", name="OpenAI key", fp="0badf00d"),) if i == 3 else ()
            )
            batch.append(
                BodyChunk(x=x, dir="res", ns=2_000_000 + i, data=body(k, i), redactions=redactions)
            )
            if len(batch) * READ >= 1 << 20:
                sink.write_records(batch)
                batch = []
    sink.write_records(batch)
    sink.write_records([rs[-1] for rs in records])  # ends
    sink.close()
    return ids


def response_wire(exchange) -> bytes:
    return b"".join(c.data for c in exchange.iter_wire("res"))


def text_read(k: int, i: int) -> bytes:
    """Compressible text, different for every read."""
    return (f"exchange {k} read {i}: " * 200).encode()[:READ]


def test_concurrent_large_bodies_are_read_in_one_pass(tmp_path, frames_decoded):
    ids = interleaved_capture(tmp_path, 40, text_read)
    with open_capture(tmp_path) as capture:
        exchanges = list(capture.exchanges())
        frames_in_file = len(frames_decoded)
        bodies = {e.id: response_wire(e) for e in exchanges}
        again = {e.id: response_wire(e) for e in exchanges}
    assert frames_in_file > 20
    assert len(frames_decoded) == frames_in_file  # no frame decoded again for a body
    assert sorted(bodies) == ids
    for k, x in enumerate(ids):
        assert bodies[x] == again[x] == b"".join(text_read(k, i) for i in range(READS))


def test_packed_chunks_keep_their_times_directions_and_redactions(tmp_path):
    ids = interleaved_capture(tmp_path, 3, text_read)
    with open_capture(tmp_path) as capture:
        for exchange in capture.exchanges():
            assert not exchange.holds_bodies  # packed, not held as they are
            chunks = list(exchange.iter_wire())
            assert [(c.dir, c.ns) for c in chunks] == [("req", 20)] + [
                ("res", 2_000_000 + i) for i in range(READS)
            ]
            assert [bool(c.redactions) for c in chunks[1:]] == [i == 3 for i in range(READS)]
            assert chunks[4].redactions[0].fp == "0badf00d"
            assert [c.data for c in exchange.iter_wire("req")] == [chunks[0].data]
    assert ids


@pytest.fixture
def spools(tmp_path, monkeypatch):
    """The temporary directory spool files go to, for this test."""
    directory = tmp_path / "spools"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def noisy_capture(directory, count: int, seed: int) -> dict[str, bytes]:
    """``count`` interleaved exchanges of random bytes (they do not pack): each id's body."""
    rng = random.Random(seed)
    noise = {(k, i): rng.randbytes(READ) for k in range(count) for i in range(READS)}
    ids = interleaved_capture(directory, count, lambda k, i: noise[k, i])
    return {x: b"".join(noise[k, i] for i in range(READS)) for k, x in enumerate(ids)}


def test_concurrent_bodies_that_do_not_pack_are_spooled(tmp_path, frames_decoded, spools):
    """The first of them is read again from the capture (its frames hold the others' records
    too); the others go to spool files of their own, mode 0600, removed with their exchanges."""
    bodies = noisy_capture(tmp_path / "capture", 6, seed=3)
    with open_capture(tmp_path / "capture") as capture:
        exchanges = list(capture.exchanges())
        scanned = len(frames_decoded)
        assert sorted(p.stat().st_mode & 0o777 for p in spools.iterdir()) == [0o600] * 5
        assert [(e.id, response_wire(e)) for e in exchanges] == list(bodies.items())
    assert scanned < len(frames_decoded) <= 2 * scanned  # only the first is read again
    del exchanges
    assert list(spools.iterdir()) == []


def test_a_lone_body_that_does_not_pack_stays_in_the_capture(tmp_path, spools):
    bodies = noisy_capture(tmp_path / "capture", 1, seed=4)
    with open_capture(tmp_path / "capture") as capture:
        [exchange] = capture.exchanges()
        assert [(exchange.id, response_wire(exchange))] == list(bodies.items())
        assert not exchange.holds_bodies and list(spools.iterdir()) == []


def test_bodies_that_cannot_be_spooled_are_read_again_from_the_capture(
    tmp_path, frames_decoded, monkeypatch
):
    """No temporary directory to spool into: every body that does not pack stays in the capture,
    read whole again, with no error."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    bodies = noisy_capture(tmp_path / "capture", 3, seed=5)
    with open_capture(tmp_path / "capture") as capture:
        exchanges = list(capture.exchanges())
        scanned = len(frames_decoded)
        assert not any(e.holds_bodies for e in exchanges)
        assert [(e.id, response_wire(e)) for e in exchanges] == list(bodies.items())
    assert len(frames_decoded) > 2 * scanned  # each of the three read again
