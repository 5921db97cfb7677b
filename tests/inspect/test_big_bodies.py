"""Every reader on a capture that holds one large body keeps its memory under twice the body plus
64 MiB, measured as the peak resident memory of the reader's own process (``os.wait4``); ``--raw``
streams in constant memory and writes the exact wire bytes; HAR export can leave the body out.

The captures are written record by record by the real writer: one POST answered with 64 MiB of
text in 256 KiB reads, and one answered with a 32 MiB SSE chat stream in 64 KiB reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio

from tests.captures import Spec, write_capture

MIB = 2**20
TEXT_SIZE = 64 * MIB
SSE_SIZE = 32 * MIB
BLOCK = base64.b64encode(random.Random(7).randbytes(3 * MIB // 4))  # 1 MiB, varied


def bound_mib(size: int) -> float:
    return 2 * size / MIB + 64


def text_chunks() -> list[bytes]:
    piece = 256 * 1024
    return [BLOCK[i % MIB : i % MIB + piece] for i in range(0, TEXT_SIZE, piece)]


def sse_chunks() -> list[bytes]:
    events = bytearray()
    sent = 0
    while sent < SSE_SIZE:
        content = BLOCK[sent % (MIB - 4096) :][:4000]
        chunk = {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": ""}}]}
        line = json.dumps(chunk).replace('"content": ""', f'"content": "{content.decode()}"')
        events += f"data: {line}\n\n".encode()
        sent += len(content)
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    final = {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    events += f"data: {json.dumps({**final, 'usage': usage})}\n\ndata: [DONE]\n\n".encode()
    step = 64 * 1024
    return [bytes(events[i : i + step]) for i in range(0, len(events), step)]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, tuple[Path, Spec]]:
    """The two captures, by kind: (directory, what was written)."""
    root = tmp_path_factory.mktemp("big")
    specs = {
        "text": Spec("bigtext00001", chunks=text_chunks(), content_type="text/plain", path="/big"),
        "sse": Spec("bigstream001", chunks=sse_chunks(), content_type="text/event-stream"),
    }
    for kind, spec in specs.items():
        trio.run(write_capture, root / kind, [spec])
    return {kind: (root / kind, spec) for kind, spec in specs.items()}


def body_size(spec: Spec) -> int:
    return sum(len(c) for c in spec.chunks)


def wire_response(spec: Spec) -> bytes:
    """The response as the writer recorded it: the head, then every read."""
    [head] = [r for r in spec.records(0) if type(r).__name__ == "ResponseHead"]
    return head.head + b"".join(spec.chunks)


#: A small process that runs a command and reports its pid, then its exit code and peak RSS. The
#: peak of the reader's own process is wanted, and Linux folds the peak of the process that forked
#: (vfork) a child into the child's ``ru_maxrss``: so the reader is started from this small process
#: rather than from pytest, whose own memory would count.
MEASURE = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as out:
    process = subprocess.Popen(sys.argv[2:], stdout=out)
    print("pid", process.pid, flush=True)
    _pid, status, usage = os.wait4(process.pid, 0)
print("done", os.waitstatus_to_exitcode(status), usage.ru_maxrss, flush=True)
"""


class Measured:
    """``wirecap ARGS`` run through :data:`MEASURE`, stdout to ``out``, stderr shared."""

    def __init__(self, args: list[str], out: Path) -> None:
        command = [sys.executable, "-c", MEASURE, str(out), sys.executable, "-m", "wirecap"]
        self.process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.pid = int(self.process.stdout.readline().split()[1])

    def finish(self, timeout: float = 300) -> tuple[float, int, str]:
        """Peak RSS in MiB, exit code and stderr of the command, once it ended."""
        out, err = self.process.communicate(timeout=timeout)
        _done, code, peak_kib = out.split()
        return int(peak_kib) / 1024, int(code), err.decode(errors="replace")


def run_measured(args: list[str], out: Path) -> tuple[float, int]:
    """Run ``wirecap ARGS`` with stdout to ``out``; its peak RSS in MiB and exit code."""
    peak, code, err = Measured(args, out).finish()
    assert code == 0, err
    return peak, code


def fetch(port: int, method: str, target: str, body: bytes) -> tuple[int, str]:
    """One request over a real socket (h11); the status and the SHA-256 of the body received."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "127.0.0.1"), ("Content-Length", str(len(body))), ("Connection", "close")]
    digest = hashlib.sha256()
    status = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(conn.send(h11.Request(method=method, target=target, headers=headers)))
        sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(MIB))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                digest.update(event.data)
            else:
                return status, digest.hexdigest()


class Serving:
    """``wirecap serve`` on a capture, measured: its port, then its peak RSS once stopped."""

    def __init__(self, capture: Path, out: Path) -> None:
        args = ["serve", str(capture), "--listen", "127.0.0.1:0", "--timing", "none", "-q"]
        self.measured = Measured(args, out)
        assert self.measured.process.stderr is not None
        banner = self.measured.process.stderr.readline().decode()
        match = re.search(r"serve on http://127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        self.port = int(match.group(1))

    def stop(self) -> float:
        """Interrupt it (killed if it has not gone after 30 s: a hang guard); its peak RSS."""
        os.kill(self.measured.pid, signal.SIGINT)
        try:
            return self.measured.finish(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.kill(self.measured.pid, signal.SIGKILL)
            return self.measured.finish(timeout=30)[0]


READERS = {
    "table": ["inspect", "{dir}"],
    "id": ["inspect", "{dir}", "--id", "{id}"],
    "id-json": ["inspect", "{dir}", "--id", "{id}", "--json"],
    "detect-issues": ["inspect", "{dir}", "--detect-issues", "--fail-on", "error"],
    "stats": ["stats", "{dir}"],
    "har": ["export", "{dir}", "--format", "har", "-o", "{tmp}/out.har"],
    "jsonl": ["export", "{dir}", "--format", "jsonl", "-o", "{tmp}/out.jsonl"],
}


@pytest.mark.parametrize("kind", ["text", "sse"])
@pytest.mark.parametrize("reader", list(READERS))
def test_reader_stays_under_twice_the_body_plus_64_mib(big, tmp_path, kind, reader):
    directory, spec = big[kind]
    args = [a.format(dir=directory, id=spec.id, tmp=tmp_path) for a in READERS[reader]]
    peak, _code = run_measured(args, tmp_path / "stdout")
    assert peak < bound_mib(body_size(spec)), f"{reader} on {kind}: {peak:.0f} MiB"


def test_raw_streams_the_exact_wire_bytes_in_constant_memory(big, tmp_path):
    directory, spec = big["text"]
    out = tmp_path / "response.bin"
    peak, code = run_measured(
        ["inspect", str(directory), "--id", spec.id, "--raw", "response"], out
    )
    assert code == 0
    expected = wire_response(spec)
    assert out.stat().st_size == len(expected)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(expected).digest()
    assert peak < 64, f"--raw: {peak:.0f} MiB for a {body_size(spec) // MIB} MiB body"


def test_detail_view_cuts_a_large_body(big, tmp_path):
    directory, spec = big["text"]
    run_measured(["inspect", str(directory), "--id", spec.id], tmp_path / "view.txt")
    view = (tmp_path / "view.txt").read_text()
    assert len(view) < 100_000
    assert f"of {body_size(spec)} bytes; use --raw response)" in view


def test_har_leaves_a_body_over_max_body_out_and_says_so(big, tmp_path):
    directory, spec = big["text"]
    har = tmp_path / "out.har"
    args = ["export", str(directory), "--format", "har", "--max-body", "1MiB", "-o", str(har)]
    peak, code = run_measured(args, tmp_path / "stdout")
    assert code == 0
    [entry] = json.loads(har.read_text())["log"]["entries"]
    content = entry["response"]["content"]
    assert "text" not in content and content["size"] == body_size(spec)
    assert "left out" in content["comment"] and "--max-body 1048576" in content["comment"]
    assert entry["_wirecap"] == {"left_out": ["response body"], "max_body": MIB}
    assert "response body" in entry["comment"]
    assert entry["response"]["bodySize"] == body_size(spec)
    assert peak < 64


def test_har_without_max_body_holds_the_whole_body(big, tmp_path):
    directory, spec = big["text"]
    har = tmp_path / "out.har"
    run_measured(["export", str(directory), "--format", "har", "-o", str(har)], tmp_path / "o")
    [entry] = json.loads(har.read_text())["log"]["entries"]
    text = entry["response"]["content"]["text"].encode()
    assert hashlib.sha256(text).digest() == hashlib.sha256(b"".join(spec.chunks)).digest()
    assert "comment" not in entry and "_wirecap" not in entry


def test_serve_answers_a_large_body_under_the_bound(big, tmp_path):
    directory, spec = big["text"]
    serving = Serving(directory, tmp_path / "serve.out")
    try:
        status, digest = fetch(serving.port, "POST", "/big", request_body(spec))
    finally:
        peak = serving.stop()
    assert status == 200
    assert digest == hashlib.sha256(b"".join(spec.chunks)).hexdigest()
    assert peak < bound_mib(body_size(spec)), f"serve: {peak:.0f} MiB"


def test_replay_of_a_large_body_passes_under_the_bound(big, tmp_path):
    directory, spec = big["text"]
    target = Serving(directory, tmp_path / "serve.out")
    try:
        args = ["replay", str(directory), "--target", f"http://127.0.0.1:{target.port}/"]
        peak, code, err = Measured(args, tmp_path / "report.txt").finish()
    finally:
        target.stop()
    report = (tmp_path / "report.txt").read_text()
    assert code == 0, report + err
    assert "1 passed, 0 failed" in report
    assert peak < bound_mib(body_size(spec)), f"replay: {peak:.0f} MiB"


def request_body(spec: Spec) -> bytes:
    [chunk] = [r for r in spec.records(0) if getattr(r, "dir", None) == "req"]
    return chunk.data
