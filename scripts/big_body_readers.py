"""Peak memory and wall time of every reader on a capture that holds one big body.

    python scripts/big_body_readers.py --size 200MiB
    python scripts/big_body_readers.py --size 1GiB --kinds text,sse --keep /tmp/big

For each kind of body, a real ``wirecap proxy`` subprocess relays one SIZE-byte response from an
upstream in this process (trio + h11, on 127.0.0.1) into a fresh capture:

- ``text``: ``GET /big``, SIZE bytes of varied text (base64 of random bytes), Content-Length;
- ``json``: ``POST /v1/chat/completions``, a chat completion whose answer is SIZE bytes of text;
- ``sse``: the same request with ``"stream": true``, a chunked SSE stream of ~4 KiB deltas.

Then each reader runs as a subprocess (``python -m wirecap``, output to /dev/null or a file) and
the table gives its peak resident memory (``ru_maxrss`` of that child, from ``os.wait4``) and wall
time, beside the bound every reader keeps: twice the body plus 64 MiB. ``replay`` sends the request
to the same upstream; ``serve`` answers it once and is then interrupted. ``--keep DIR`` keeps the
captures there and reuses them on the next run. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h11
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wirecap.capture import open_capture  # noqa: E402

#: 1 MiB of text that does not repeat within a frame, the same in every run (replay compares).
BLOCK = base64.b64encode(random.Random(1).randbytes(786432))
KINDS = ("text", "json", "sse")
MIB = 2**20


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise SystemExit(f"bad size {text!r}")
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")


# -- the upstream (trio + h11, in a thread of this process) ------------------------------------------


def text_pieces(size: int, piece: int = MIB):
    """``size`` bytes of varied text, ``piece`` bytes at a time."""
    view = memoryview(BLOCK)
    sent = 0
    while sent < size:
        n = min(piece, size - sent, len(BLOCK))
        yield bytes(view[:n])
        sent += n


def json_answer(size: int) -> tuple[int, list]:
    """A chat completion whose answer is ``size`` bytes of text: (length, pieces to send)."""
    before = (
        b'{"id":"chatcmpl-big","object":"chat.completion","created":1,"model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"'
    )
    after = (
        b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":%d,'
        b'"total_tokens":%d}}' % (size // 4, size // 4 + 10)
    )
    return len(before) + size + len(after), [[before], text_pieces(size), [after]]


def sse_events(size: int, delta: int = 4096):
    """SSE chat completion chunks carrying ``size`` bytes of text, ~64 KiB a write, then [DONE]."""
    head = b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"'
    tail = b'"},"finish_reason":null}]}\n\n'
    batch = bytearray()
    view = memoryview(BLOCK)
    sent = 0
    while sent < size:
        n = min(delta, size - sent)
        start = sent % (len(BLOCK) - delta)
        batch += head + view[start : start + n] + tail
        sent += n
        if len(batch) >= 64 * 1024:
            yield bytes(batch)
            batch.clear()
    batch += (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":%d,'
        b'"total_tokens":%d}}\n\ndata: [DONE]\n\n' % (size // 4, size // 4 + 10)
    )
    yield bytes(batch)


async def _answer(stream: trio.SocketStream, conn: h11.Connection, request: h11.Request) -> None:
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            break
    url = urlsplit(request.target.decode())
    size = int(parse_qs(url.query).get("size", ["1048576"])[0])
    if url.path.endswith("/big"):
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(size))]
        parts: list = [text_pieces(size)]
    elif json.loads(body or b"{}").get("stream"):
        headers = [("Content-Type", "text/event-stream")]
        parts = [sse_events(size)]
    else:
        length, parts = json_answer(size)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(length))]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
    for part in parts:
        for piece in part:
            await stream.send_all(conn.send(h11.Data(data=piece)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _serve_one_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(event, h11.Request):
                return
            await _answer(stream, conn, event)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


def start_upstream() -> int:
    """The upstream, serving in a daemon thread; returns its port."""
    ready: list[int] = []
    started = threading.Event()

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        ready.append(listeners[0].socket.getsockname()[1])
        started.set()
        await trio.serve_listeners(_serve_one_connection, listeners)

    threading.Thread(target=trio.run, args=(main,), daemon=True).start()
    started.wait(10)
    return ready[0]


# -- a blocking h11 client ---------------------------------------------------------------------------


def fetch(port: int, method: str, target: str, body: bytes = b"") -> tuple[int, int]:
    """Send one request to 127.0.0.1:``port``; returns (status, body bytes received)."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", f"127.0.0.1:{port}"), ("Connection", "close")]
    if body:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    status = received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(conn.send(h11.Request(method=method, target=target, headers=headers)))
        if body:
            sock.sendall(conn.send(h11.Data(data=body)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(MIB))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += len(event.data)
            else:
                return status, received


def request_of(kind: str, size: int) -> tuple[str, str, bytes]:
    if kind == "text":
        return "GET", f"/big?size={size}", b""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a long answer"}]}
    if kind == "sse":
        body["stream"] = True
    return "POST", f"/v1/chat/completions?size={size}", json.dumps(body).encode()


# -- processes ---------------------------------------------------------------------------------------


def wirecap(*args: str) -> list[str]:
    return [sys.executable, "-m", "wirecap", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def port_from(process: subprocess.Popen[bytes], pattern: bytes) -> int:
    """Read ``process``'s stderr until ``pattern`` (one group: the port) shows up."""
    assert process.stderr is not None
    seen = b""
    while (match := re.search(pattern, seen)) is None:
        line = process.stderr.readline()
        if not line:
            raise SystemExit(f"no {pattern!r} in: {seen.decode(errors='replace')}")
        seen += line
    return int(match.group(1))


def make_capture(kind: str, size: int, up_port: int, out: Path) -> None:
    """One exchange of ``kind`` through a real ``wirecap proxy`` into ``out``."""
    proxy = subprocess.Popen(
        wirecap(
            "proxy", "--quiet", "--listen", "127.0.0.1:0", "--upstream",
            f"http://127.0.0.1:{up_port}/", "--out", str(out),
        ),
        stderr=subprocess.PIPE,
        env=child_env(),
    )  # fmt: skip
    try:
        port = port_from(proxy, rb"listening on http://127\.0\.0\.1:(\d+)")
        status, received = fetch(port, *request_of(kind, size))
        if status != 200 or received < size:
            raise SystemExit(f"{kind}: status {status}, {received} bytes through the proxy")
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy.wait(120)


def measure(args: list[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, float, int]:
    """Run ``args``; (peak RSS in MiB, seconds, exit code)."""
    start = time.monotonic()
    process = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE, env=child_env())
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, seconds, process.returncode


def measure_serve(capture: Path, kind: str, size: int) -> tuple[float, float, int]:
    """``wirecap serve`` answering the recorded request once, then interrupted."""
    start = time.monotonic()
    process = subprocess.Popen(
        wirecap("serve", str(capture), "--listen", "127.0.0.1:0", "--timing", "none", "-q"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    port = port_from(process, rb"serve on http://127\.0\.0\.1:(\d+)")
    status, received = fetch(port, *request_of(kind, size))
    seconds = time.monotonic() - start
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 15
    while (waited := os.wait4(process.pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # not the measurement: the peak is in already
            print("serve did not stop on SIGINT within 15 s: killed", file=sys.stderr)
            process.kill()
            waited = os.wait4(process.pid, 0)
            break
        time.sleep(0.05)
    ok = status == 200 and received >= size
    return waited[2].ru_maxrss / 1024, seconds, 0 if ok else 1


def reader_runs(
    capture: Path, exchange_id: str, up_port: int, work: Path
) -> list[tuple[str, list]]:
    """(label, argv) of every reader command."""
    c = str(capture)
    return [
        ("inspect DIR", wirecap("inspect", c)),
        ("inspect DIR --id ID", wirecap("inspect", c, "--id", exchange_id)),
        ("inspect --id ID --raw response", wirecap("inspect", c, "--id", exchange_id, "--raw", "response")),
        ("inspect --detect-issues", wirecap("inspect", c, "--detect-issues")),
        ("stats DIR", wirecap("stats", c)),
        ("export --format har", wirecap("export", c, "--format", "har", "-o", str(work / "x.har"))),
        ("export --format har --max-body 1MiB", wirecap("export", c, "--format", "har", "--max-body", "1MiB", "-o", str(work / "x.har"))),
        ("export --format jsonl", wirecap("export", c, "--format", "jsonl", "-o", str(work / "x.jsonl"))),
        ("replay --target UPSTREAM", wirecap("replay", c, "--target", f"http://127.0.0.1:{up_port}/")),
    ]  # fmt: skip


def run_kind(kind: str, size: int, up_port: int, base: Path, only: str | None) -> list[tuple]:
    capture = base / f"{kind}-{size}"
    if not capture.exists():
        began = time.monotonic()
        make_capture(kind, size, up_port, capture)
        print(f"{kind}: captured in {time.monotonic() - began:.1f} s", file=sys.stderr)
    with open_capture(capture) as cap:  # the body spans segments: the last one's entry has its end
        entries = [e for f in cap.files for e in f.index().entries]
    exchange_id = entries[0].x
    body = max(e.res_bytes for e in entries)  # the payload: SSE and JSON wrap SIZE of text
    rows = []
    work = Path(tempfile.mkdtemp(prefix="wirecap-readers-"))
    try:
        for label, argv in reader_runs(capture, exchange_id, up_port, work):
            if only and only not in label:
                continue
            rss, seconds, code = measure(argv)
            rows.append((kind, body, label, rss, seconds, code))
            print(
                f"{kind:5} {label:38} {rss:8.0f} MiB {seconds:7.1f} s exit {code}", file=sys.stderr
            )
            for leftover in work.iterdir():
                leftover.unlink()
        if not only or "serve" in only:
            rss, seconds, code = measure_serve(capture, kind, size)
            rows.append((kind, body, "serve (one answer)", rss, seconds, code))
            print(
                f"{kind:5} {'serve (one answer)':38} {rss:8.0f} MiB {seconds:7.1f} s exit {code}",
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="200MiB", help="body size, e.g. 200MiB or 1GiB")
    parser.add_argument("--kinds", default=",".join(KINDS), help="text, json, sse (comma list)")
    parser.add_argument("--keep", type=Path, help="keep the captures here (and reuse them)")
    parser.add_argument("--only", help="run only the commands whose label contains this")
    args = parser.parse_args()
    size = parse_size(args.size)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := set(kinds) - set(KINDS):
        raise SystemExit(f"unknown kinds: {', '.join(sorted(unknown))}")
    base = args.keep or Path(tempfile.mkdtemp(prefix="wirecap-big-"))
    base.mkdir(parents=True, exist_ok=True)
    up_port = start_upstream()
    rows = []
    try:
        for kind in kinds:
            rows += run_kind(kind, size, up_port, base, args.only)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"one body of {size / MIB:.0f} MiB of text; bound: 2 x body + 64 MiB")
    print("| body (MiB) | command | peak RSS (MiB) | seconds | bound (MiB) |")
    print("|---|---|---:|---:|---:|")
    for kind, body, label, rss, seconds, code in rows:
        bound = 2 * body / MIB + 64
        verdict = "" if rss <= bound else " OVER"
        if code:
            verdict += f" (exit {code})"
        print(
            f"| {kind} ({body / MIB:.0f}) | `{label}` | {rss:.0f} | {seconds:.1f} | {bound:.0f}{verdict} |"
        )


if __name__ == "__main__":
    main()
