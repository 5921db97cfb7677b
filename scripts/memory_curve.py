"""Resident memory of a capturing proxy against the number of exchanges it has carried.

    python scripts/memory_curve.py --exchanges 1000000 --every 50000

Starts the benchmark upstream (bench_upstream.py: a ~2 KB JSON chat completion per request) and
``wirecap proxy`` with rotation raised so that every exchange goes into one segment, then drives
N small JSON POSTs through it on keep-alive connections (an h11 client on trio). Every K exchanges,
and at 10,000 (the reference point), it reads the resident memory (VmRSS in /proc) of the proxy and
of its capture writer process and prints a row. At the end it stops the proxy with SIGTERM (the
writer writes the index), reports the writer's peak memory (VmHWM) seen up to its exit, and checks
that the capture is one indexed segment whose index lists exactly N exchanges, all complete.
Exits non-zero when the index is incomplete or memory grew more than --limit-mb after the
reference point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h11
import trio

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = 10_000
BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
).encode()
PAGE_KIB = 1024


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/PID/status; None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def start_upstream() -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_upstream.py")], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline().split()[1])


def start_proxy(upstream_port: int, out: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``wirecap proxy`` writing one segment for the whole run; returns it, its port, its writer."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "wirecap", "proxy", "--quiet", "--listen", "127.0.0.1:0"),
            *("--upstream", f"http://127.0.0.1:{upstream_port}/", "--out", str(out)),
            *("--rotate-bytes", "1TiB", "--rotate-seconds", "1000000"),
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    port = 0
    while not port:
        line = process.stderr.readline().decode()
        if not line:
            raise SystemExit("the proxy exited before listening")
        if "listening on http://" in line:
            port = int(line.rsplit(":", 1)[1])
    drain = threading.Thread(target=shutil.copyfileobj, args=(process.stderr, sys.stderr.buffer))
    drain.start()  # its later lines (a warning on SIGTERM) go on to our stderr
    writers: list[int] = []
    deadline = time.monotonic() + 20
    while not writers and time.monotonic() < deadline:
        writers = children(process.pid)
        time.sleep(0.05)
    if not writers:
        raise SystemExit("no capture writer process under the proxy")
    return process, port, writers[0]


class Run:
    """Hands out exchanges to the connections and samples memory as they complete."""

    def __init__(self, total: int, every: int, proxy: int, writer: int) -> None:
        self.total = total
        self.points = set(range(every, total + 1, every)) | {min(REFERENCE, total), total}
        self.proxy, self.writer = proxy, writer
        self.issued = self.completed = self.failed = 0
        self.started = time.monotonic()
        self.rows: list[tuple[int, int, int]] = []

    def take(self) -> bool:
        if self.issued >= self.total:
            return False
        self.issued += 1
        return True

    def done(self, status: int) -> None:
        self.completed += 1
        self.failed += status != 200
        if self.completed in self.points:
            self.sample()

    def sample(self) -> None:
        proxy, writer = status_kib(self.proxy, "VmRSS") or 0, status_kib(self.writer, "VmRSS") or 0
        self.rows.append((self.completed, proxy, writer))
        seconds = time.monotonic() - self.started
        print(
            f"| {self.completed:>9,} | {proxy / PAGE_KIB:8.1f} | {writer / PAGE_KIB:8.1f} "
            f"| {(proxy + writer) / PAGE_KIB:8.1f} | {seconds:7.0f} |",
            flush=True,
        )


async def drive(port: int, run: Run, concurrency: int, per_connection: int) -> None:
    request = h11.Request(
        method="POST",
        target="/v1/chat/completions",
        headers=[
            ("Host", f"127.0.0.1:{port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(BODY))),
        ],
    )

    async def connection() -> None:
        while run.issued < run.total:
            await keep_alive()

    async def keep_alive() -> None:
        """One client connection, for ``per_connection`` exchanges."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        async with stream:
            for _ in range(per_connection):
                if not run.take():
                    return
                await stream.send_all(
                    conn.send(request)
                    + conn.send(h11.Data(data=BODY))
                    + conn.send(h11.EndOfMessage())
                )
                status = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.EndOfMessage):
                        break
                conn.start_next_cycle()
                run.done(status)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(connection)


def stop(proxy: subprocess.Popen[bytes], writer: int) -> int:
    """SIGTERM the proxy; the writer's peak resident memory (KiB) seen until it exits."""
    proxy.send_signal(signal.SIGTERM)
    peak = 0
    while (hwm := status_kib(writer, "VmHWM")) is not None:
        peak = max(peak, hwm)
        time.sleep(0.01)
    proxy.wait(120)
    return peak


def check_index(out: Path, total: int) -> list[str]:
    """What is wrong with the capture's index (nothing: an empty list)."""
    sys.path.insert(0, str(ROOT))
    from wirecap.capture.reader import Capture

    problems: list[str] = []
    with Capture(out) as capture:
        if len(capture.files) != 1:
            problems.append(f"{len(capture.files)} segments instead of one")
        ids: set[str] = set()
        for f in capture.files:
            index = f.index()
            if not f.index_from_file:
                problems.append(f"{f.path.name} has no stored index")
            columns = index.to_map()["columns"]
            ids.update(columns["x"])
            not_ok = sum(outcome != "ok" for outcome in columns["outcome"])
            if not_ok:
                problems.append(f"{not_ok} exchanges in the index are not complete")
    if len(ids) != total:
        problems.append(f"the index lists {len(ids):,} exchanges, {total:,} were sent")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=None, help="sample every K (default N/10)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--per-connection", type=int, default=10**9, help="exchanges per client connection"
    )
    parser.add_argument("--limit-mb", type=float, default=20, help="allowed growth after 10,000")
    parser.add_argument("--keep", type=Path, default=None, help="write the capture here, keep it")
    args = parser.parse_args()
    every = args.every or max(args.exchanges // 10, 1)
    workdir = Path(tempfile.mkdtemp(prefix="wirecap-memory-"))
    out = args.keep or workdir / "capture"
    upstream, upstream_port = start_upstream()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        proxy, port, writer = start_proxy(upstream_port, out)
        run = Run(args.exchanges, every, proxy.pid, writer)
        print(
            f"{args.exchanges:,} exchanges, {args.concurrency} connections, "
            f"proxy pid {proxy.pid}, writer pid {writer}"
        )
        print("| exchanges | proxy MiB | writer MiB | total MiB | seconds |")
        print("|---:|---:|---:|---:|---:|")
        trio.run(drive, port, run, args.concurrency, args.per_connection)
        peak = stop(proxy, writer)
        problems = check_index(out, args.exchanges)
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"writer peak (VmHWM) up to its exit, index written: {peak / PAGE_KIB:.1f} MiB")
        print(f"capture: {size / 2**20:,.0f} MiB; non-200 answers: {run.failed}")
        reference = next(r for r in run.rows if r[0] >= min(REFERENCE, args.exchanges))
        growth_mb = (
            ((run.rows[-1][1] + run.rows[-1][2]) - (reference[1] + reference[2])) * 1024 / 1e6
        )
        print(
            f"growth after {reference[0]:,} exchanges: {growth_mb:+.1f} MB "
            f"(limit {args.limit_mb:g} MB)"
        )
        if growth_mb > args.limit_mb:
            problems.append(f"memory grew {growth_mb:.1f} MB")
        for problem in problems:
            print(f"FAIL: {problem}")
        if not problems:
            print(f"OK: the index lists all {args.exchanges:,} exchanges, each complete")
        status = 1 if problems else 0
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.kill()
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
