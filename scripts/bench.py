"""Side-by-side benchmark: direct connection, wirecap (capture on and off), mitmdump, nginx.

    python scripts/bench.py --quick                      # under a minute
    python scripts/bench.py --with-mitmproxy --runs 3    # the full run, written to docs/PERFORMANCE.md

Everything runs on 127.0.0.1: the upstream is scripts/bench_upstream.py (asyncio, hand-parsed, varied
OpenAI-like bodies) in its own process, each subject in its own process, started fresh for every run
so that peak RSS and capture sizes belong to one workload. Subjects are interleaved within each round
and the tables give medians over rounds.

- A: a ~1 KB JSON POST answered with ~2 KB JSON, keep-alive; ``wrk`` at concurrency 1 (latency p50,
  p99) and 32 (requests per second); the subject's CPU time per request from /proc.
- B: 4 concurrent SSE streams of 200 events 2 ms apart; each event carries its send time
  (CLOCK_MONOTONIC, shared by all processes), so the client measures each event's relay delay; the
  tables give the delay added over the direct connection, and the time to first byte.
- C: one large streamed response: MiB/s and the subject's peak RSS (VmHWM).
- D: capture on against off (A and C), and capture file size against the raw bytes that crossed the
  wire for A and B.

mitmdump is installed into a throwaway virtual environment with ``--with-mitmproxy`` (the project
does not depend on it); nginx is used when its binary is found (Debian package ``nginx-light``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
REQUEST_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world " * 80}]}
).encode()
LUA = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {json.dumps(REQUEST_BODY.decode())}
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 0.5


# -- processes ---------------------------------------------------------------------------------------


def wirecap_command(listen: str, upstream_port: int, *extra: str) -> list[str]:
    """``wirecap proxy`` in quiet mode, in front of the benchmark's upstream, plus ``extra``."""
    return [
        *(sys.executable, "-m", "wirecap", "proxy", "--quiet", "--listen", listen),
        *("--upstream", f"http://127.0.0.1:{upstream_port}/", *extra),
    ]


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants, from /proc."""
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by ``pids``, summed."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def peak_rss_kib(pids: list[int]) -> int:
    """The peak resident memory (VmHWM) of ``pids``, summed."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
        except OSError:
            continue
    return peak


@dataclasses.dataclass
class Running:
    name: str
    port: int
    pids: list[int]
    process: subprocess.Popen[bytes] | None
    capture_dir: Path | None = None
    cleanup: Any = None

    def process_tree(self) -> list[int]:
        """The subject's processes and their descendants (wirecap's capture writer process)."""
        return process_tree(self.pids)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the subject's processes, their children included."""
        return cpu_seconds(self.process_tree())

    def peak_rss_mib(self) -> float:
        """The sum of the peak RSS of the subject's processes, children included."""
        return peak_rss_kib(self.process_tree()) / 1024

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.cleanup:
            self.cleanup()


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream() -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_upstream.py")], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    return process, int(line.split()[1])


def start_subject(name: str, upstream_port: int, workdir: Path, mitmdump: str | None) -> Running:
    if name == "direct":
        return Running(name, upstream_port, [], None)
    port = free_port()
    if name.startswith("wirecap"):
        capture = name != "wirecap-nocapture"
        out = workdir / f"cap-{time.time_ns()}"
        workers = name.removeprefix("wirecap-workers") if "-workers" in name else "1"
        args = wirecap_command(
            f"127.0.0.1:{port}",
            upstream_port,
            *(("--out", str(out)) if capture else ("--no-capture",)),
            "--workers",
            workers,
        )
        process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        wait_port(port)
        return Running(name, port, [process.pid], process, out if capture else None)
    if name.startswith("floor-"):  # scripts/floor_relay.py: what trio (and h11) cost alone
        floor = Path(__file__).with_name("floor_relay.py")
        command = [sys.executable, str(floor), "--upstream", f"127.0.0.1:{upstream_port}"]
        mode = name.removeprefix("floor-")
        process = subprocess.Popen([*command, "--mode", mode], stdout=subprocess.PIPE)
        assert process.stdout is not None
        return Running(name, int(process.stdout.readline()), [process.pid], process)
    if name == "mitmdump":
        assert mitmdump is not None
        flows = workdir / f"flows-{time.time_ns()}"
        flows.mkdir()
        process = subprocess.Popen(
            [
                mitmdump,
                "--mode",
                f"reverse:http://127.0.0.1:{upstream_port}/",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(port),
                "-w",
                str(flows / "flows.mitm"),
                "-q",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, 60)
        return Running(name, port, [process.pid], process, flows)
    if name == "nginx":
        conf_dir = Path(tempfile.mkdtemp(prefix="wirecap-nginx-"))
        (conf_dir / "nginx.conf").write_text(
            f"""daemon off; worker_processes 1; pid {conf_dir}/nginx.pid; error_log {conf_dir}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {conf_dir}; proxy_temp_path {conf_dir};
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; }} }} }}
"""
        )
        process = subprocess.Popen(
            [
                shutil.which("nginx") or "nginx",
                "-c",
                str(conf_dir / "nginx.conf"),
                "-p",
                str(conf_dir),
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_port(port)
        time.sleep(0.2)
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        return Running(
            name,
            port,
            [process.pid, *map(int, children)],
            process,
            None,
            lambda: shutil.rmtree(conf_dir, ignore_errors=True),
        )
    raise SystemExit(f"unknown subject {name}")


def capture_size(run: Running) -> int:
    if run.capture_dir is None or not run.capture_dir.exists():
        return 0
    return sum(p.stat().st_size for p in run.capture_dir.rglob("*") if p.is_file())


# -- workloads ---------------------------------------------------------------------------------------


def _wrk(
    port: int, connections: int, seconds: float, lua: Path, attempt: int = 1
) -> dict[str, float]:
    try:
        return _wrk_once(port, connections, seconds, lua)
    except (AttributeError, subprocess.CalledProcessError) as exc:
        if attempt >= 3:
            raise
        print(f"wrk run failed ({exc}); trying again", file=sys.stderr)
        return _wrk(port, connections, seconds, lua, attempt + 1)


def _wrk_once(port: int, connections: int, seconds: float, lua: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(connections, 2)}",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def duration(text: str) -> float:
        match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
        if match is None:
            print(f"cannot read wrk duration {text!r} in:\n{out}", file=sys.stderr)
        value, unit = match.groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]

    if "50%" not in out:
        print(out, file=sys.stderr)
    p50 = duration(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = duration(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    read = re.search(r"requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", out)
    read_bytes = (
        float(read.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[read.group(2)]
    )  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": requests,
        "rps": requests / seconds,
        "read_bytes": read_bytes,
        "errors": 1.0 if errors else 0.0,
    }


def workload_a(run: Running, seconds: float, lua: Path) -> dict[str, float]:
    c1 = _wrk(run.port, 1, max(int(seconds // 2), 1), lua)
    cpu0 = run.cpu_seconds()
    c32 = _wrk(run.port, 32, seconds, lua)
    cpu = run.cpu_seconds() - cpu0
    request_bytes = len(REQUEST_BODY) + 120
    return {
        "p50_ms": c1["p50_ms"],
        "p99_ms": c1["p99_ms"],
        "rps": c32["rps"],
        "cpu_us_per_request": (cpu / c32["requests"] * 1e6) if run.pids else 0.0,
        "raw_bytes": c32["read_bytes"]
        + c1["read_bytes"]
        + (c32["requests"] + c1["requests"]) * request_bytes,
        "errors": c32["errors"] + c1["errors"],
    }


async def _stream(
    port: int, chunks: int, delays: list[float], ttfbs: list[float], counts: list[int]
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        start = time.monotonic_ns()
        await stream.send_all(
            b"POST /v1/stream?chunks=%d&gap_ms=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (chunks, len(REQUEST_BODY), REQUEST_BODY)
        )
        buf = b""
        first = True
        total = 0
        while chunk := await stream.receive_some(65536):
            now = time.monotonic_ns()
            total += len(chunk)
            if first:
                ttfbs.append((now - start) / 1e6)
                first = False
            buf += chunk
            delays.extend((now - int(sent)) / 1e6 for sent in re.findall(rb'"t":(\d+)', buf))
            buf = buf[buf.rfind(b"\n\n") + 2 :] if b"\n\n" in buf else buf
        counts.append(total + len(REQUEST_BODY) + 150)


def workload_b(run: Running, chunks: int, streams: int = 4) -> dict[str, float]:
    delays: list[float] = []
    ttfbs: list[float] = []
    counts: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(_stream, run.port, chunks, delays, ttfbs, counts)

    trio.run(main)
    delays.sort()
    expected = chunks * streams
    return {
        "delay_p50_ms": statistics.median(delays),
        "delay_p99_ms": delays[int(0.99 * (len(delays) - 1))],
        "delay_max_ms": delays[-1],
        "ttfb_ms": statistics.median(ttfbs),
        "events_seen": len(delays) / expected,
        "raw_bytes": float(sum(counts)),
    }


def workload_c(run: Running, size: int) -> dict[str, float]:
    async def main() -> float:
        stream = await trio.open_tcp_stream("127.0.0.1", run.port)
        received = 0
        start = time.perf_counter()
        async with stream:
            await stream.send_all(
                b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size
            )
            while chunk := await stream.receive_some(1 << 20):
                received += len(chunk)
        if received < size:
            raise SystemExit(f"{run.name}: got {received} of {size} bytes")
        return time.perf_counter() - start

    seconds = trio.run(main)
    return {
        "mib_s": size / seconds / 2**20,
        "peak_rss_mib": run.peak_rss_mib() if run.pids else 0.0,
    }


# -- driver ------------------------------------------------------------------------------------------


def ensure_mitmdump(workdir: Path) -> str:
    venv = ROOT / ".bench-venv"
    binary = venv / "bin" / "mitmdump"
    if not binary.exists():
        print("installing mitmproxy into .bench-venv (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "mitmproxy"], check=True)
    return str(binary)


def median_of(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs: under a minute")
    parser.add_argument(
        "--with-mitmproxy",
        action="store_true",
        help="also measure mitmdump -w (installed into .bench-venv)",
    )
    parser.add_argument(
        "--with-floor",
        action="store_true",
        help="also measure scripts/floor_relay.py: a bare trio+h11 relay (and a trio byte "
        "forwarder), what the foundation costs before wirecap adds anything",
    )
    parser.add_argument("--runs", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument(
        "--write",
        type=Path,
        default=None,
        help="write the markdown report here (e.g. docs/PERFORMANCE.md)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    runs = args.runs or (1 if args.quick else 3)
    a_seconds = 2.0 if args.quick else 10.0
    b_chunks = 60 if args.quick else 200
    c_size = (256 if args.quick else 1024) * 2**20
    workdir = Path(tempfile.mkdtemp(prefix="wirecap-bench-"))
    lua = workdir / "post.lua"
    lua.write_text(LUA)
    mitmdump = ensure_mitmdump(workdir) if args.with_mitmproxy else None
    subjects = ["direct", "wirecap", "wirecap-workers2", "wirecap-nocapture"]
    if mitmdump:
        subjects.append("mitmdump")
    if shutil.which("nginx"):
        subjects.append("nginx")
    if args.with_floor:
        subjects += ["floor-h11", "floor-bytes"]
    upstream, up_port = start_upstream()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    started = time.time()
    try:
        for round_no in range(runs):
            for workload in ("A", "B", "C"):
                for name in subjects:
                    run = start_subject(name, up_port, workdir, mitmdump)
                    # Measure a running proxy, not its start-up (wirecap's writer process is still
                    # importing when the port opens): the same pause for every subject.
                    time.sleep(SETTLE_SECONDS)
                    try:
                        if workload == "A":
                            row = workload_a(run, a_seconds, lua)
                        elif workload == "B":
                            row = workload_b(run, b_chunks)
                        else:
                            row = workload_c(run, c_size)
                    finally:
                        run.stop()
                    if run.capture_dir is not None:
                        raw = row["raw_bytes"] if workload in ("A", "B") else c_size
                        row["capture_ratio"] = capture_size(run) / raw
                    results.setdefault((workload, name), []).append(row)
                    print(
                        f"round {round_no + 1} {workload} {name}: {json.dumps({k: round(v, 3) for k, v in row.items()})}",
                        file=sys.stderr,
                    )
    finally:
        upstream.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(
        results, subjects, runs, args, time.time() - started, a_seconds, b_chunks, c_size
    )
    print(report)
    if args.write:
        args.write.write_text(report)


def render(
    results: dict[tuple[str, str], list[dict[str, float]]],
    subjects: list[str],
    runs: int,
    args: argparse.Namespace,
    elapsed: float,
    a_seconds: float,
    b_chunks: int,
    c_size: int,
) -> str:
    def m(workload: str, name: str, key: str) -> float:
        return median_of(results.get((workload, name), []), key)

    command = (
        "python scripts/bench.py"
        + (" --quick" if args.quick else "")
        + (" --with-mitmproxy" if args.with_mitmproxy else "")
        + (" --with-floor" if args.with_floor else "")
        + (f" --runs {args.runs}" if args.runs else "")
    )
    lines = [
        "# Performance",
        "",
        f"`{command}` on {os.cpu_count()} cores, {runs} round(s), medians, {elapsed:.0f} s in all. "
        f"A: {a_seconds:g} s per wrk run; B: 4 streams x {b_chunks} events 2 ms apart; C: {c_size // 2**20} MiB.",
        "",
        "## A. Non-streaming JSON (1 KB request, ~2 KB varied answer, keep-alive)",
        "",
        "| subject | req/s at c=32 | vs direct | p50 at c=1 (ms) | added p50 (ms) | p99 at c=1 (ms) | CPU per request (us) | capture / raw bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    direct_rps = m("A", "direct", "rps")
    direct_p50 = m("A", "direct", "p50_ms")
    for name in subjects:
        ratio = m("A", name, "capture_ratio")
        lines.append(
            f"| {name} | {m('A', name, 'rps'):.0f} | {m('A', name, 'rps') / direct_rps:.2f}x | {m('A', name, 'p50_ms'):.3f} | "
            f"{m('A', name, 'p50_ms') - direct_p50:+.3f} | {m('A', name, 'p99_ms'):.3f} | "
            f"{'-' if name == 'direct' else format(m('A', name, 'cpu_us_per_request'), '.0f')} | {'-' if ratio != ratio else format(ratio, '.0%')} |"
        )
    lines += [
        "",
        "## B. SSE streams (relay delay per event: client receive time minus upstream send time)",
        "",
        "| subject | delay p50 (ms) | added p50 | delay p99 (ms) | added p99 | max (ms) | TTFB (ms) | events seen | capture / raw bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    d50, d99 = m("B", "direct", "delay_p50_ms"), m("B", "direct", "delay_p99_ms")
    for name in subjects:
        ratio = m("B", name, "capture_ratio")
        lines.append(
            f"| {name} | {m('B', name, 'delay_p50_ms'):.3f} | {m('B', name, 'delay_p50_ms') - d50:+.3f} | {m('B', name, 'delay_p99_ms'):.3f} | "
            f"{m('B', name, 'delay_p99_ms') - d99:+.3f} | {m('B', name, 'delay_max_ms'):.3f} | {m('B', name, 'ttfb_ms'):.2f} | "
            f"{m('B', name, 'events_seen'):.0%} | {'-' if ratio != ratio else format(ratio, '.0%')} |"
        )
    lines += [
        "",
        f"## C. One {c_size // 2**20} MiB streamed response",
        "",
        "| subject | MiB/s | peak RSS, VmHWM (MiB) | capture / body |",
        "|---|---|---|---|",
    ]
    for name in subjects:
        rss = m("C", name, "peak_rss_mib")
        kept = m("C", name, "capture_ratio")
        ratio = "-" if math.isnan(kept) else f"{kept:.0%}"  # NaN: nothing captured
        lines.append(
            f"| {name} | {m('C', name, 'mib_s'):.0f} | {'-' if name == 'direct' else format(rss, '.1f')} | {ratio} |"
        )
    if "wirecap-nocapture" in subjects:
        lines += [
            "",
            "## D. Cost of capture (wirecap with capture on, against off)",
            "",
            f"- A: {m('A', 'wirecap', 'rps') / m('A', 'wirecap-nocapture', 'rps'):.2f}x the requests per second;",
            f"- C: {m('C', 'wirecap', 'mib_s') / m('C', 'wirecap-nocapture', 'mib_s'):.2f}x the throughput;",
            f"- capture files: {m('A', 'wirecap', 'capture_ratio'):.1%} of the raw bytes for A, {m('B', 'wirecap', 'capture_ratio'):.1%} for B.",
        ]
    lines += [
        "",
        "The load generators are not the bottleneck: wrk and the upstream serve the direct subject at "
        f"{direct_rps:.0f} req/s, and direct C runs at {m('C', 'direct', 'mib_s'):.0f} MiB/s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
