"""The floor under target D: what the cheapest conceivable capture costs on this machine.

    python scripts/bench_floor.py                       # 5 rounds, about 2 minutes
    python scripts/bench_floor.py --rounds 3 --size 512MiB --seconds 3

Target D asks that capture cost at most 10% of throughput against capture off. Whatever a capture's
design, it must at least put the bytes that crossed the wire into a file (workload C's body), and
for A keep that file under 20% of the raw bytes, so compress them. This script measures that floor
with no capture design in the way: ``wirecap proxy --no-capture`` carries the traffic, and beside
it a *floor process* does only what any capture must do with the bytes, nothing else:

- C: from the moment the transfer starts, it writes ``--size`` bytes into a file in the capture's
  directory at the rate the same proxy last reached alone, 1 MiB per ``write`` from one ready buffer
  (no copy out of the proxy, no framing, no compression: the file as big as the body), giving its
  pages back to the kernel as it grows, as the capture sink does (``--write``: other ways);
- A: at the request rate the same proxy last reached alone, it compresses the CBOR records of
  A's exchanges (encoded once beforehand, every answer different, as ``bench_writer.py`` builds
  them) in 1 MiB zstd frames at the fastest level that keeps them under 20% of the wire bytes, and
  writes the frames to a file: no hand-off, no encoding, no redaction, no index.

Both paces are the proxy's rate alone, which beside the floor process it does not quite reach: the
floor is overstated by that much, never understated. Each round measures the proxy alone and with
the floor process beside it, in turned order every other round, each in a fresh proxy process, after
one uncounted run alone that sets the first pace; the medians are printed, with the floor process's
own CPU time. A throughput ratio below 0.90 means no capture that stores the bytes can meet D on
this machine, whatever its design. Needs ``wrk``; everything on 127.0.0.1, files in a temporary
directory that is removed.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import (
    LUA,
    _wrk,
    start_subject,
    start_upstream,
    workload_c,
)
from bench_writer import exchange_records
from large_body import parse_size

from wirecap.capture import frames
from wirecap.capture.direct import DirectAppender, enable_direct
from wirecap.capture.sink import RELEASE_STEP, release_window

FRAME_BYTES = 1024 * 1024
#: The file-size target of D for A and B, against the bytes that crossed the wire.
SIZE_TARGET = 0.20
LEVELS = (-5, -3, -1, 1, 2, 3)
#: Exchanges of workload A encoded for the floor (their stream wraps around while it runs).
A_EXCHANGES = 4000


def a_stream() -> tuple[bytes, int]:
    """The CBOR records of A_EXCHANGES exchanges of workload A, and the bytes they carried on the
    wire (request and response, heads and bodies)."""
    rng = random.Random(1)
    parts: list[bytes] = []
    wire = 0
    for n in range(A_EXCHANGES):
        records = exchange_records(n, rng, authorization=False)
        parts += [frames.encode_record(r) for r in records]
        # request, upstream, request body, response head, response body, end
        request, _, request_body, response, response_body, _ = records
        wire += len(request.head) + len(request_body.data) + len(response.head)
        wire += len(response_body.data)
    return b"".join(parts), wire


def fastest_level(stream: bytes, wire: int) -> tuple[int, float]:
    """The lowest zstd level whose 1 MiB frames of ``stream`` stay under the size target, and its
    ratio to the wire bytes."""
    view = memoryview(stream)
    for level in LEVELS:
        compressor = frames.new_compressor(level)
        size = sum(
            len(compressor.compress(view[i : i + FRAME_BYTES]))
            for i in range(0, len(stream), FRAME_BYTES)
        )
        if size / wire <= SIZE_TARGET:
            return level, size / wire
    raise SystemExit(f"no level in {LEVELS} keeps A's records under {SIZE_TARGET:.0%}")


# -- the floor process --------------------------------------------------------------------------------


class FloorFile:
    """A new file written the way a capture sink writes one frame after another.

    ``mode`` ``direct`` (the sink's way where the filesystem has O_DIRECT): through the sink's own
    ``direct.DirectAppender``, from an aligned staging buffer, no page cache at all; ``release``
    (the sink's way elsewhere, sink.SegmentSink._write): every RELEASE_STEP bytes its last pages go
    back to the kernel (sink.release_window), so that new writes reuse warm pages instead of
    touching fresh memory, which costs several times more on this project's VMs; ``keep``: the
    pages stay in the page cache.
    """

    def __init__(self, path: Path, mode: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.offset = self.released_at = 0
        self.mode = mode
        self.appender: DirectAppender | None = None
        if mode == "direct":
            if not enable_direct(self.fd):
                raise SystemExit("no O_DIRECT for files in the temporary directory")
            self.appender = DirectAppender(self.fd)

    def write(self, data: bytes | memoryview) -> int:
        if self.appender is not None:
            self.appender.append(data)
            return len(data)
        written = os.write(self.fd, data)
        self.offset += written
        if self.mode == "release" and self.offset - self.released_at >= RELEASE_STEP:
            release_window(self.fd, self.offset)
            self.released_at = self.offset
        return written

    def close(self) -> None:
        if self.appender is not None:
            self.appender.close()
        os.close(self.fd)


def floor_c(directory: Path, size: int, rate: float, mode: str) -> None:
    """Write ``size`` bytes to a new file in ``directory`` at ``rate`` bytes a second, 1 MiB a
    ``write`` (sleeping until the next MiB is due, as a writer waits for its data)."""
    block = os.urandom(FRAME_BYTES)
    file = FloorFile(directory / "floor-c", mode)
    start = time.monotonic()
    try:
        written = 0
        while written < size:
            due = min(size, int((time.monotonic() - start) * rate))
            while written + FRAME_BYTES <= due or (due == size and written < size):
                written += file.write(block[: min(FRAME_BYTES, size - written)])
            if written < size:
                next_at = start + (written + FRAME_BYTES) / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        file.close()


def floor_a(
    directory: Path, stream: bytes, rate: float, seconds: float, level: int, mode: str
) -> None:
    """Compress and write ``stream`` (:func:`a_stream`) at ``rate`` exchanges a second for
    ``seconds``: a frame each time 1 MiB of records is due, or 250 ms after the last one."""
    per_exchange = len(stream) / A_EXCHANGES
    view = memoryview(stream)  # frames compressed from where they lie: no copy, no fresh memory
    compressor = frames.new_compressor(level)
    file = FloorFile(directory / "floor-a", mode)
    start = last = time.monotonic()
    done = 0  # bytes of the stream compressed so far (it wraps around)
    try:
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate * per_exchange) - done
            if due >= FRAME_BYTES or (due > 0 and now - last >= 0.25):
                at = done % len(stream)
                piece = view[at : at + min(due, FRAME_BYTES)]
                file.write(compressor.compress(piece))
                done += len(piece)
                last = now
            else:  # sleep until a frame is due
                wait = (FRAME_BYTES - max(due, 0)) / (rate * per_exchange)
                time.sleep(max(0.001, min(wait, 0.25 - (now - last))))
    finally:
        file.close()


def start_floor(*args: str) -> subprocess.Popen[bytes]:
    """This script as a floor process, waiting for a line on its stdin before it starts."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--floor", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    process.stdout.readline()  # ready
    return process


def go(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()


def floor_main(argv: list[str]) -> None:
    kind, directory, mode = argv[0], Path(argv[1]), argv[-1]
    stream = a_stream()[0] if kind == "a" else b""  # before the measured run
    print("ready", flush=True)
    sys.stdin.readline()
    before = resource.getrusage(resource.RUSAGE_SELF)
    if kind == "c":
        floor_c(directory, int(argv[2]), float(argv[3]), mode)
    else:
        floor_a(directory, stream, float(argv[2]), float(argv[3]), int(argv[4]), mode)
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"{used:.3f}", flush=True)  # the CPU seconds of the floor's work, start-up left out


# -- the driver ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", default="1GiB", help="C's response size")
    parser.add_argument("--seconds", type=int, default=4, help="A's wrk run at concurrency 32")
    parser.add_argument(
        "--write",
        choices=("release", "keep", "direct"),
        default="release",
        help="how the floor writes its file: pages released as the sink does (default), kept in "
        "the page cache, or O_DIRECT from an aligned buffer",
    )
    parser.add_argument("--only", choices=("A", "C"), help="measure one workload")
    args = parser.parse_args()
    write_mode = args.write
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    size = parse_size(args.size)
    stream, wire = a_stream()
    level, ratio = fastest_level(stream, wire)
    print(
        f"A's records: {len(stream) / A_EXCHANGES:.0f} bytes an exchange "
        f"({wire / A_EXCHANGES:.0f} on the wire); "
        f"zstd level {level} keeps 1 MiB frames at {ratio:.1%} of the wire bytes",
        file=sys.stderr,
    )
    workloads = (args.only,) if args.only else ("A", "C")
    workdir = Path(tempfile.mkdtemp(prefix="wirecap-floor-"))
    lua = workdir / "post.lua"
    lua.write_text(LUA)
    upstream, up_port = start_upstream()
    results: dict[str, list[float]] = {k: [] for k in ("A alone", "A floor", "C alone", "C floor")}
    floor_cpu: dict[str, list[float]] = {"A": [], "C": []}

    def measure(workload: str, which: str, rate: float) -> float:
        """One run of ``workload`` through a fresh proxy, alone or beside a floor process paced
        at ``rate`` (exchanges or bytes a second)."""
        run = start_subject("wirecap-nocapture", up_port, workdir, None)
        time.sleep(0.5)
        floor = None
        try:
            if which == "floor":
                floor = (
                    start_floor("c", str(workdir), str(size), str(rate), write_mode)
                    if workload == "C"
                    else start_floor(
                        "a", str(workdir), str(rate), str(args.seconds), str(level), write_mode
                    )
                )
                go(floor)
            if workload == "C":
                return workload_c(run, size)["mib_s"] * 2**20
            return _wrk(run.port, 32, args.seconds, lua)["rps"]
        finally:
            if floor is not None:
                assert floor.stdout is not None
                floor_cpu[workload].append(float(floor.stdout.readline()))
                floor.wait()
            run.stop()
            for name in ("floor-a", "floor-c"):
                (workdir / name).unlink(missing_ok=True)

    try:
        # The floor's pace: the latest rate measured alone (first from a run not counted).
        rates = {workload: measure(workload, "alone", 0.0) for workload in workloads}
        for round_no in range(args.rounds):
            order = ("alone", "floor") if round_no % 2 == 0 else ("floor", "alone")
            for workload in workloads:
                got = {}
                unit = 2**20 if workload == "C" else 1
                for which in order:
                    got[which] = measure(workload, which, rates[workload])
                    if which == "alone":
                        rates[workload] = got[which]
                    results[f"{workload} {which}"].append(got[which] / unit)
                print(
                    f"round {round_no + 1} {workload}: alone {got['alone'] / unit:.0f}, "
                    f"with the floor {got['floor'] / unit:.0f} ({got['floor'] / got['alone']:.2f}x), "
                    f"floor process {floor_cpu[workload][-1]:.2f} CPU s",
                    file=sys.stderr,
                )
    finally:
        upstream.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.rounds} rounds, medians; {os.cpu_count()} cores")
    print(
        "| workload | wirecap --no-capture alone | with the floor process beside it | ratio, median "
        "(rounds) | floor process CPU s, median |"
    )
    print("|---|---|---|---|---|")
    for workload, unit in (("A", "req/s"), ("C", "MiB/s")):
        if workload not in workloads:
            continue
        alone = statistics.median(results[f"{workload} alone"])
        floor = statistics.median(results[f"{workload} floor"])
        ratios = [
            f / a
            for a, f in zip(results[f"{workload} alone"], results[f"{workload} floor"], strict=True)
        ]
        print(
            f"| {workload} | {alone:.0f} {unit} | {floor:.0f} {unit} | "
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}) | "
            f"{statistics.median(floor_cpu[workload]):.2f} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor"]:
        floor_main(sys.argv[2:])
    else:
        main()
