"""Fixtures of the interop tests: a cassette vcrpy records at test time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from interop_tools import gzip_llm_upstream, record_cassette


@pytest.fixture
async def cassette(tmp_path, start_upstream) -> Path:
    """A cassette vcrpy recorded of the openai SDK: a gzip JSON answer and an SSE stream."""
    upstream = await start_upstream(gzip_llm_upstream)
    path = tmp_path / "cassette.yaml"
    answers = await trio.to_thread.run_sync(record_cassette, path, f"{upstream.url}v1")
    assert answers == ("Hello there!", "Hello world")
    return path
