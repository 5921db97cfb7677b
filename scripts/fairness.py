"""Do plain JSON requests keep their latency while thousands of long streams run through the proxy?

    python scripts/fairness.py --streams 2000 --chunks 200 --gap-ms 250

One ``wirecap proxy`` (capture on; ``--subject`` picks another relay) in front of the benchmark upstream (scripts/bench_upstream.py).
First ``wrk`` sends workload A's JSON request at concurrency 16 for ``--seconds`` alone; then a load
process (asyncio, raw sockets) opens ``--streams`` SSE streams of ``--chunks`` events ``--gap-ms``
apart through the proxy, and once every stream has its first event, ``wrk`` runs again for the same
time beside them. The table gives both runs' p50 and p99 and their ratio, the proxy's CPU per second
in each, and whether every stream got every event. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import LUA, REQUEST_BODY, Running, _wrk, start_subject, start_upstream

STREAM_REQUEST = (
    b"POST /v1/stream?chunks=%d&gap_ms=%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
)


# -- the stream load (runs in its own process: python fairness.py --load PORT ...) -------------------


async def _one_stream(
    port: int, request: bytes, started: asyncio.Event, tally: dict[str, int]
) -> None:
    events = 0
    first = True

    def begun(outcome: str) -> None:
        tally[outcome] += 1
        if tally["started"] + tally["failed"] == tally["streams"]:
            started.set()

    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        tail = b""
        while chunk := await reader.read(65536):
            if first:
                first = False
                begun("started")
            data = tail + chunk  # an event's "data: " may be cut between two reads
            events += data.count(b"data: ")
            tail = data[-5:]
        writer.close()
        tally["finished"] += 1
    except Exception as exc:  # a failed stream is counted, never left hanging
        print(f"stream failed: {exc!r}", file=sys.stderr)
        if first:
            begun("failed")
        else:
            tally["failed"] += 1
    tally["events"] += events


async def _load(port: int, streams: int, chunks: int, gap_ms: int) -> None:
    request = STREAM_REQUEST % (chunks, gap_ms, len(REQUEST_BODY), REQUEST_BODY)
    started = asyncio.Event()
    tally = {"streams": streams, "started": 0, "finished": 0, "failed": 0, "events": 0}
    tasks = []
    for _ in range(streams):
        tasks.append(asyncio.create_task(_one_stream(port, request, started, tally)))
        await asyncio.sleep(0)  # open them over a moment, not in one burst
    with contextlib.suppress(TimeoutError):  # a stream that never starts is reported, not waited on
        await asyncio.wait_for(started.wait(), 60)
    print("started", flush=True)
    _done, late = await asyncio.wait(tasks, timeout=chunks * gap_ms / 1000 * 3 + 60)
    for task in late:
        task.cancel()
    tally["hung"] = len(late)
    print(json.dumps(tally), flush=True)


# -- the measurement ---------------------------------------------------------------------------------


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _measure(run: Running, seconds: float, lua: Path) -> dict[str, float]:
    cpu0, t0 = run.cpu_seconds(), time.monotonic()
    result = _wrk(run.port, 16, seconds, lua)
    result["proxy_cpu"] = (run.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--gap-ms", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--subject",
        default="wirecap",
        choices=("wirecap", "wirecap-nocapture", "nginx", "floor-bytes", "floor-h11"),
        help="what relays: wirecap proxy (capture on or off), nginx, or the trio floor relays of "
        "scripts/floor_relay.py (bytes only, or h11 without anything wirecap adds)",
    )
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _raise_fd_limit(4 * args.streams + 1024)  # children inherit it
    if args.load:
        asyncio.run(_load(args.load, args.streams, args.chunks, args.gap_ms))
        return

    workdir = Path(tempfile.mkdtemp(prefix="wirecap-fairness-"))
    lua = workdir / "post.lua"
    lua.write_text(LUA)
    upstream, upstream_port = start_upstream()
    run = start_subject(args.subject, upstream_port, workdir, None)
    load = None
    try:
        _wrk(run.port, 16, 2, lua)  # warm-up
        alone = _measure(run, args.seconds, lua)
        load = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--load",
                str(run.port),
                "--streams",
                str(args.streams),
                "--chunks",
                str(args.chunks),
                "--gap-ms",
                str(args.gap_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert load.stdout is not None
        if load.stdout.readline().strip() != "started":
            raise SystemExit("the stream load did not start")
        beside = _measure(run, args.seconds, lua)
        tally = json.loads(load.stdout.readline())
        load.wait()
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        run.stop()
        upstream.terminate()
    expected = args.streams * (args.chunks + 1)  # the events, then data: [DONE]
    print(
        f"{args.streams} streams of {args.chunks} events {args.gap_ms} ms apart "
        f"({args.streams * 1000 / args.gap_ms:.0f} events/s); JSON at c=16 for {args.seconds:g}s"
    )
    print("| JSON at c=16 | p50 (ms) | p99 (ms) | req/s | proxy CPU (cores) |")
    print("|---|---|---|---|---|")
    for name, r in (("alone", alone), (f"beside {args.streams} streams", beside)):
        print(
            f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.0f} | {r['proxy_cpu']:.2f} |"
        )
    print(f"p50 ratio: {beside['p50_ms'] / alone['p50_ms']:.2f}x (target: 3x or less)")
    print(
        f"streams: {tally['started']} started, {tally['finished']} finished, {tally['failed']} "
        f"failed, {tally['hung']} hung; "
        f"events {tally['events']} of {expected}"
    )


if __name__ == "__main__":
    main()
