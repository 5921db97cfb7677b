"""Runs wirecap's commands on capture files, each file in a forked child under limits.

    python tests/capture/hostile_runner.py

Reads one JSON request a line on stdin: ``{"files": [...], "ids": [...], "commands": [...],
"memory": bytes, "timeout": seconds}``. For each request it forks a child (the parent has imported
wirecap once, so a child starts in milliseconds) that caps its address space at what the parent
uses plus ``memory`` (RLIMIT_AS), then runs each command on each file the way the ``wirecap``
executable does (click's standalone mode: a click error is a message and an exit status; any
other exception is a traceback the user would see), and the Capture API. It answers one JSON line:
``{"results": [...], "peak": bytes}`` with, per file and command, the exit status, any traceback
and the start of its output (and the most memory the child used beyond the parent's), or
``{"killed": reason}`` when the child ran past ``timeout`` (a hang guard) or died by a signal.

Commands are argument lists in which ``{file}``, ``{id}`` and ``{out}`` are replaced; a command
with ``{id}`` runs once per id. ``["api"]`` runs the Capture API (every exchange, a lookup of each
id, the gaps, a full damage scan); its CaptureError is status 1.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import wirecap.cli
from wirecap.capture import CaptureError, open_capture


def _address_space() -> int:
    """This process's virtual memory size, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _expand(command: list[str], file: str, ids: list[str], out: str) -> list[list[str]]:
    if any("{id}" in arg for arg in command):
        return [[arg.format(file=file, id=x, out=out) for arg in command] for x in ids]
    return [[arg.format(file=file, out=out) for arg in command]]


def _api(file: str, ids: list[str]) -> None:
    with open_capture(file) as capture:
        for exchange in capture.exchanges():
            exchange.request_bytes()
            exchange.response_bytes()
            len(exchange.response_body)  # the payload h11 reads out of the wire bytes
        for x in ids:
            capture.get(x)
        list(capture.gaps())
        capture.scan_damage()


def _run_one(args: list[str], file: str, ids: list[str], scratch: str) -> dict[str, Any]:
    """Run one command with stdout and stderr going to files; what the user would have seen."""
    sys.stdout.flush()
    sys.stderr.flush()
    status: int | None = 0
    escaped = None
    with tempfile.TemporaryFile(dir=scratch) as out, tempfile.TemporaryFile(dir=scratch) as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            if args == ["api"]:
                try:
                    _api(file, ids)
                except CaptureError:  # the API's one error: not a capture at all
                    status = 1
            else:
                wirecap.cli.main.main(args=args, prog_name="wirecap", standalone_mode=True)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            status, escaped = None, traceback.format_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        out.seek(0)
        stdout = out.read(1 << 16).decode("utf-8", "replace")
    if escaped is None and "Traceback (most recent call last)" in stderr:
        escaped = stderr
    return {
        "args": args,
        "status": status,
        "traceback": escaped,
        "stderr": stderr[-2000:],
        "stdout": stdout,
    }


def _peak() -> int:
    """The largest virtual memory size this process has had, in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmPeak:"))
    return int(line.split()[1]) * 1024


def _child(request: dict[str, Any], reply_fd: int) -> None:
    start = _address_space()
    limit = start + request["memory"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        out = str(Path(scratch) / "export.out")
        for file in request["files"]:
            for command in request["commands"]:
                for args in _expand(command, file, request["ids"], out):
                    result = _run_one(args, file, request["ids"], scratch)
                    result["file"] = file
                    results.append(result)
    data = json.dumps({"results": results, "peak": _peak() - start}).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(reply_fd, view) :]


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _child(request, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + request["timeout"]
    killed = None
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([read_fd], [], [], max(left, 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            killed = f"still running after {request['timeout']} s"
            break
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    if killed is None and os.WIFSIGNALED(wait_status):
        killed = f"died by signal {os.WTERMSIG(wait_status)}"
    if killed is not None:
        return {"killed": killed}
    reply: dict[str, Any] = json.loads(b"".join(chunks) or b'{"killed": "no answer"}')
    return reply


def main() -> None:
    for line in sys.stdin:
        reply = _serve(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
