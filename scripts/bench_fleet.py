"""Measure shipping and collecting through a local nats-server: frames/s and bytes per exchange.

    python scripts/bench_fleet.py --exchanges 20000 --per-frame 1
    python scripts/bench_fleet.py --exchanges 20000 --per-frame 0     # 1 MiB frames (busy proxy)

Generates a capture with bench_inspect.py's exchanges (OpenAI and Anthropic, JSON and streams),
``--per-frame`` exchanges a frame (a quiet proxy closes a frame every 250 ms, often with one
exchange; 0: frames of 1 MiB of records, as a busy proxy writes). Starts nats-server with JetStream
on 127.0.0.1 (a free port, a temporary store), ships the capture with the shipper, then collects
it with one collector, and prints the rates of each. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import random

from bench_inspect import exchange_records

from wirecap.capture import Header
from wirecap.capture.sink import SegmentSink
from wirecap.fleet.collector import Collector
from wirecap.fleet.config import NatsSettings
from wirecap.fleet.shipper import ConnectionLog, Shipper, connect, ensure_stream


def generate(directory: Path, count: int, per_frame: int) -> int:
    """Write the capture; returns its number of data frames (the header not counted)."""
    rng = random.Random(42)
    header = lambda seg: Header(  # noqa: E731
        wirecap_version="bench",
        created_ns=time.time_ns(),
        host="bench",
        pid=os.getpid(),
        segment=seg,
    )
    sink = SegmentSink(directory, header)
    sink.open()
    frames, batch, size = 0, [], 0
    start = time.time_ns() - count * 100_000_000
    for i in range(count):
        records = exchange_records(i, rng, start + i * 100_000_000)
        batch += records
        size += sum(len(getattr(r, "data", b"")) + len(getattr(r, "head", b"")) for r in records)
        if (per_frame and (i + 1) % per_frame == 0) or (not per_frame and size >= 1 << 20):
            sink.write_records(batch)
            frames, batch, size = frames + 1, [], 0
    if batch:
        sink.write_records(batch)
        frames += 1
    sink.close()
    return frames


async def ship_all(directory: Path, settings: NatsSettings) -> tuple[float, Shipper]:
    shipper = Shipper(directory, settings, "bench", poll_seconds=0.05)
    log = ConnectionLog(settings.url)
    nc = await connect(settings, asyncio.Event(), log)
    js = nc.jetstream(timeout=30)
    await ensure_stream(js, settings)
    began = time.perf_counter()
    while len(shipper.position.done) < 1:
        await shipper.ship_pending(js)
    took = time.perf_counter() - began
    log.closing = True
    await nc.close()
    return took, shipper


async def collect_all(settings: NatsSettings, out: Path, frames: int) -> tuple[float, Collector]:
    collector = Collector(settings, out, durable="bench", idle_close=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    began = time.perf_counter()
    while collector.statistics.frames < frames:
        await asyncio.sleep(0.01)
    took = time.perf_counter() - began
    stop.set()
    await task
    return took, collector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20000)
    parser.add_argument("--per-frame", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wirecap-bench-fleet-"))
    port = free_port()
    server = subprocess.Popen(
        [
            *(shutil.which("nats-server") or "/usr/sbin/nats-server", "-js", "-a", "127.0.0.1"),
            *("-p", str(port), "-sd", str(work / "js")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (work / "src").mkdir()
        frames = generate(work / "src", args.exchanges, args.per_frame)
        size = sum(p.stat().st_size for p in (work / "src").glob("*.cbor.zst"))
        time.sleep(0.5)
        settings = NatsSettings(url=f"nats://127.0.0.1:{port}")
        ship_s, shipper = asyncio.run(ship_all(work / "src", settings))
        collect_s, collector = asyncio.run(collect_all(settings, work / "central", frames))
        n = args.exchanges
        print(
            f"exchanges {n}, data frames {frames}, capture {size} bytes, {size / n:.0f} bytes/exchange"
        )
        for name, took in (("ship", ship_s), ("collect", collect_s)):
            print(
                f"{name:8} {took:7.2f} s  {frames / took:9.0f} frames/s  {n / took:9.0f} exchanges/s"
                f"  {size / took / 1e6:7.1f} MB/s"
            )
        print(
            f"shipped {shipper.statistics.frames} frames, collected {collector.statistics.frames}"
        )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
