"""Fixtures of the capture tests."""

from __future__ import annotations

import pytest

from wirecap.capture import reader


@pytest.fixture
def frames_decoded(monkeypatch):
    """The offsets of the data frames the reader decodes in this process, in order (clear it to
    count from a point on)."""
    decoded: list[int] = []
    real = reader.read_frame_records

    def counting(frame, info, budget):
        decoded.append(info.offset)
        return real(frame, info, budget)

    monkeypatch.setattr(reader, "read_frame_records", counting)
    return decoded
