"""The page ships in the package and needs nothing from the network."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import trio
from test_packaging import build_wheel

STATIC = Path(__file__).parent.parent.parent / "wirecap" / "ui" / "static"
PAGE_FILES = {"index.html", "app.js", "app.css", "icon.svg"}


def test_the_page_loads_nothing_from_elsewhere():
    assert {p.name for p in STATIC.iterdir()} == PAGE_FILES
    for path in STATIC.iterdir():
        text = path.read_text()
        # the SVG namespace is a name, not a place the page goes to
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {
            "http://www.w3.org/2000/svg"
        }
        assert not urls, f"{path.name} refers to {urls}"
        assert "innerHTML" not in text and "eval(" not in text, path.name


@pytest.mark.slow
async def test_the_wheel_ships_the_page(tmp_path):
    wheel = await trio.to_thread.run_sync(build_wheel, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"wirecap/ui/static/{name}" for name in PAGE_FILES} <= names
