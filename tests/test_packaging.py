"""What a user gets from a wheel: the package, its fixtures as package data, the command line and
the pytest plugin, working with no source tree around."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import trio
from readme import snippets

ROOT = Path(__file__).parent.parent


def test_every_package_is_in_the_wheel_list():
    """pyproject.toml lists the packages (the fixtures need a package-dir mapping, which rules out
    discovery): a new folder of wirecap/ must be added there."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "wirecap").rglob("__init__.py")
    }
    assert listed == found | {"wirecap.fixtures"}


def build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of what an sdist holds (no build/ or egg-info left in the tree)."""
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("wirecap", "fixtures"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    # Offline: the build backend comes from this environment (the test extra pins setuptools).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(source),
        ],
        check=True,
    )
    [wheel] = (tmp / "dist").glob("wirecap-*.whl")
    return wheel


@pytest.mark.slow
async def test_a_wheel_in_a_fresh_venv_runs_demo_serve_and_the_readme_pytest_example(tmp_path):
    wheel = await trio.to_thread.run_sync(build_wheel, tmp_path)
    venv = tmp_path / "venv"
    # The dependencies come from this environment; the venv's own site-packages, with the wheel,
    # come first, so `import wirecap` is the wheel's.
    await trio.run_process(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]
    )
    python, wirecap = venv / "bin" / "python", venv / "bin" / "wirecap"
    await trio.run_process(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    )
    elsewhere = tmp_path / "user"  # no source tree here, and none on the path
    elsewhere.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_COLOR", "FORCE_COLOR")
    }

    async def run(*args: str | Path) -> str:
        done = await trio.run_process(
            list(args),
            cwd=elsewhere,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, (args, done.stdout.decode(), done.stderr.decode())
        return done.stdout.decode()

    where = await run(python, "-c", "import wirecap; print(wirecap.__file__)")
    assert Path(where.strip()).is_relative_to(venv)
    fixtures = Path((await run(wirecap, "fixtures")).strip())
    assert fixtures.is_relative_to(venv) and len(list(fixtures.glob("*.cbor.zst"))) == 10

    demo = await run(wirecap, "demo")
    assert "4. wirecap inspect:" in demo and "done;" in demo, demo

    await check_serve(wirecap, fixtures, elsewhere, env)

    example = next(s for s in snippets() if s.kind == "pytest")  # the plugin's own example
    (elsewhere / "test_readme_example.py").write_text(example.code)
    tests = await run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme_example.py"
    )
    assert re.search(r"^1 passed", tests, re.MULTILINE), tests


async def check_serve(wirecap: Path, fixtures: Path, cwd: Path, env: dict[str, str]) -> None:
    process = await trio.lowlevel.open_process(
        [wirecap, "serve", fixtures, "--listen", "127.0.0.1:0", "--timing", "none"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        banner = b""
        with trio.fail_after(60):
            while (match := re.search(rb"serve on (http://127\.0\.0\.1:\d+)", banner)) is None:
                chunk = await process.stderr.receive_some(4096)
                assert chunk, banner
                banner += chunk
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    match.group(1).decode() + "/openai/v1/chat/completions",
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "Say hello"}],
                    },
                )
            assert answer.json()["choices"][0]["message"]["content"] == "Hello there!"
            log = b""
            while b"\n" not in log:
                log += await process.stdout.receive_some(4096)
        assert b"POST /openai/v1/chat/completions -> " in log and log.rstrip().endswith(b" 200")
    finally:
        process.terminate()
        with trio.fail_after(30):
            await process.wait()
