"""The import rules of the design: capture/ is the ground floor, sans-IO modules never import trio."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "wirecap"
SANS_IO = [
    "capture/records.py",
    "capture/frames.py",
    "capture/index.py",
    "proxy/config.py",
    "proxy/routing.py",
    "proxy/headers.py",
    "proxy/http1.py",
    "proxy/redact.py",
    "proxy/console.py",
]


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_do_not_import_trio(module):
    assert not {n for n in imports_of(PACKAGE / module) if n.split(".")[0] == "trio"}


@pytest.mark.parametrize(
    ("folder", "allowed"),
    [
        ("capture", {"capture"}),
        ("llm", set()),
        ("proxy", {"capture", "proxy"}),
        ("inspect", {"capture", "llm", "inspect"}),
    ],
)
def test_package_import_rules(folder, allowed):
    for path in (PACKAGE / folder).glob("*.py"):
        used = {
            n.split(".")[1]
            for n in imports_of(path)
            if n.startswith("wirecap.") and n.count(".") >= 1
        }
        assert used <= allowed | {folder}, (path, used)
        assert "wirecap.cli" not in imports_of(path)
