from __future__ import annotations

import functools
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from wirecap.ui.app import run_ui

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"


@pytest.fixture
def fixture_copy(tmp_path) -> Path:
    """A copy of the shipped fixtures, one capture file per exchange."""
    target = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, target)
    return target


@pytest.fixture
async def start_ui(nursery):
    """Starts ``wirecap ui`` in the test's event loop on 127.0.0.1, port 0; returns its URL once
    the capture has been read to its end."""

    async def start(*targets, token=None, **options) -> str:
        url = await nursery.start(
            functools.partial(run_ui, targets, host="127.0.0.1", port=0, token=token, **options)
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            with trio.fail_after(30):
                while not (await client.get("/api/summary")).json()["caught_up"]:
                    await trio.sleep(0.02)
        return url

    return start


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=30) as http:
        yield http
