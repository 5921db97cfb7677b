"""Every README snippet marked runnable runs, against copies of the fixtures (see readme.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from readme import snippets

FIXTURES = Path(__file__).parent.parent / "fixtures"
RUNNABLE = snippets()


def test_the_readme_has_runnable_snippets_of_each_kind():
    assert {s.kind for s in RUNNABLE} == {"sh", "python", "pytest"}
    assert any("zstd -dc" in s.code and "cbor2" in s.code for s in RUNNABLE)


def workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A user's directory: the fixtures as ``captures/`` and ``fixtures/``, and ``wirecap`` and
    ``python`` on PATH running this interpreter (so the code under test is what runs)."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("captures", "fixtures"):
        shutil.copytree(FIXTURES, work / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("wirecap", "-m wirecap"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command} "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return work, env


@pytest.mark.parametrize("snippet", RUNNABLE, ids=lambda s: s.name)
def test_readme_snippet_runs(snippet, tmp_path):
    if "zstd " in snippet.code and shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed (.ci/run installs it)")
    work, env = workdir(tmp_path)
    if snippet.kind == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", snippet.code]
    elif snippet.kind == "python":
        command = [sys.executable, "-c", snippet.code]
    else:
        (work / "test_readme_example.py").write_text(snippet.code)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_readme_example.py",
        ]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{snippet.name}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
