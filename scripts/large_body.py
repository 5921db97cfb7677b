"""Stream a large response through ``wirecap proxy`` (a real subprocess) and report MB/s and peak RSS.

    python scripts/large_body.py --size 1GiB

An upstream in this process sends SIZE bytes of varied text (base64 of random bytes, like LLM output it
does not repeat within a frame) with a Content-Length; a client in this process reads and discards it.
The same transfer is made directly and through the proxy (capture on, then off), in the same run. The
proxy's peak resident memory is VmHWM from /proc/PID/status after the transfer, summed over the proxy and
its capture writer process. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from bench import cpu_seconds, peak_rss_kib, process_tree, wirecap_command

BLOCK = base64.b64encode(os.urandom(3 * 1024 * 1024 // 4 * 1))[
    : 1024 * 1024
]  # 1 MiB of varied text


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise SystemExit(f"bad size {text!r}")
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")


async def upstream(size: int, task_status: trio.TaskStatus[int]) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % size
            )
            sent = 0
            view = memoryview(BLOCK)
            while sent < size:
                n = min(len(BLOCK), size - sent)
                await stream.send_all(view[:n])
                sent += n

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def fetch(port: int, path: str) -> tuple[int, float]:
    start = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = 0
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        while chunk := await stream.receive_some(1 << 20):
            received += len(chunk)
    return received, time.perf_counter() - start


async def through_proxy(up_port: int, size: int, capture: bool, out: Path) -> dict[str, float]:
    args = wirecap_command(
        "127.0.0.1:0", up_port, *(("--out", str(out)) if capture else ("--no-capture",))
    )
    process = await trio.lowlevel.open_process(args, stderr=subprocess.PIPE)
    banner = b""
    while (match := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", banner)) is None:
        chunk = await process.stderr.receive_some(4096)
        if not chunk:
            raise SystemExit(banner.decode())
        banner += chunk
    port = int(match.group(1))
    try:
        rss_before = peak_rss_kib(process_tree([process.pid]))
        received, seconds = await fetch(port, "/big")
        tree = process_tree([process.pid])  # the proxy and its capture writer process
        rss_peak = peak_rss_kib(tree)
        print(
            f"capture {'on' if capture else 'off'}, per process (the proxy first): "
            f"CPU seconds {[cpu_seconds([pid]) for pid in tree]}, "
            f"peak RSS KiB {[peak_rss_kib([pid]) for pid in tree]}",
            file=sys.stderr,
        )
    finally:
        process.terminate()
        await process.wait()
    captured = sum(p.stat().st_size for p in out.glob("*.cbor.zst")) if capture else 0
    return {
        "received": received,
        "seconds": seconds,
        "rss_start_mib": rss_before / 1024,
        "rss_peak_mib": rss_peak / 1024,
        "capture_bytes": captured,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GiB", help="response size, e.g. 256MiB or 1GiB")
    args = parser.parse_args()
    size = parse_size(args.size)
    workdir = Path(tempfile.mkdtemp(prefix="wirecap-large-"))
    try:
        async with trio.open_nursery() as nursery:
            up_port = await nursery.start(upstream, size)
            received, seconds = await fetch(up_port, "/big")
            assert received >= size
            rows = [("direct", size / seconds / 2**20, None, None, None)]
            for capture in (True, False):
                out = workdir / ("on" if capture else "off")
                r = await through_proxy(up_port, size, capture, out)
                assert r["received"] >= size, r
                rows.append(
                    (
                        f"proxy, capture {'on' if capture else 'off'}",
                        size / r["seconds"] / 2**20,
                        r["rss_start_mib"],
                        r["rss_peak_mib"],
                        r["capture_bytes"] / size if capture else None,
                    )
                )
                shutil.rmtree(out, ignore_errors=True)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{size / 2**20:.0f} MiB response, {os.cpu_count()} cores")
    print(
        "| path | MiB/s | proxy RSS at start (MiB) | proxy peak RSS, VmHWM (MiB) | capture file / body |"
    )
    print("|---|---|---|---|---|")
    for name, rate, start, peak, ratio in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"| {name} | {rate:.0f} | {fmt(start, '.1f')} | {fmt(peak, '.1f')} | {fmt(ratio, '.2f')} |"
        )


if __name__ == "__main__":
    trio.run(main)
