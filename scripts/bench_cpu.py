"""A/B the proxy's CPU per request under workload A, alternating configurations.

    python scripts/bench_cpu.py --rounds 5 -- "--no-capture" "--out /tmp/abcap"
    python scripts/bench_cpu.py -- "ENV:NAME=1 --out /tmp/abcap"   # with an environment variable
    python scripts/bench_cpu.py -- "--no-capture" "AT:/tmp/old-checkout --no-capture"  # two builds

Each configuration is a string of extra ``wirecap proxy`` arguments, optionally starting with
``ENV:NAME=VALUE`` (an environment variable) and/or ``AT:DIR`` (run the wirecap of another checkout,
e.g. a ``git worktree`` of an earlier commit). Every round starts each configuration in a fresh
process, warms it up with one second of wrk at concurrency 32, then measures three seconds: requests
per second and the proxy's CPU time per request (from /proc). Rounds alternate the configurations,
in turned order every other round, and the medians are printed: on a shared two-core machine single
runs move by 20%, so decisions need several rounds. ``--authorization`` adds an API key header to
every request, as real clients send. Needs ``wrk``. Capture directories given with --out are removed
after each run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

# The benchmark's workload A: the same request body, upstream and process helpers.
from bench import (
    LUA,
    ROOT,
    Running,
    cpu_seconds,
    free_port,
    start_upstream,
    wait_port,
    wirecap_command,
)

#: An OpenAI-style key in every request (``--authorization``): the capture then redacts a
#: credential line in two heads per exchange, as it does for real clients.
AUTHORIZATION_LUA = 'wrk.headers["Authorization"] = "Bearer sk-proj-' + "k" * 40 + '"\n'


def pin(pid: int, cpu: int) -> None:
    """Run every thread of ``pid`` on ``cpu`` only."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def wrk(url: str, lua: Path, seconds: int, cpu: int | None = None) -> tuple[int, float]:
    taskset = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run(
        [*taskset, "wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if requests is None or rate is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return int(requests.group(1)), float(rate.group(1))


def run_once(
    config: str, upstream_port: int, lua: Path, pinned: bool
) -> tuple[float, float, float]:
    env = dict(os.environ)
    args = config.split()
    checkout = ROOT
    while args and args[0].startswith(("ENV:", "AT:")):
        option = args.pop(0)
        if option.startswith("AT:"):
            checkout = Path(option[3:])
        else:
            name, _, value = option[4:].partition("=")
            env[name] = value
    port = free_port()
    process = subprocess.Popen(
        wirecap_command(f"127.0.0.1:{port}", upstream_port, *args),
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=checkout,  # python -m wirecap imports the package of the working directory
    )
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        running = Running(config, port, [process.pid], process)
        load_cpu = None
        if pinned:  # the proxy alone on CPU 1; its writer process, wrk and the upstream on CPU 0
            time.sleep(0.3)  # the writer process has started
            load_cpu = 0
            for pid in running.process_tree():
                pin(pid, 1 if pid == process.pid else 0)
        wrk(url, lua, 1, load_cpu)
        before, before_main = running.cpu_seconds(), cpu_seconds([process.pid])
        requests, rate = wrk(url, lua, 3, load_cpu)
        used = running.cpu_seconds() - before
        used_main = cpu_seconds([process.pid]) - before_main
    finally:
        process.terminate()
        process.wait()
        if "--out" in args:
            shutil.rmtree(args[args.index("--out") + 1], ignore_errors=True)
    return used / requests * 1e6, rate, used_main / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help='extra proxy arguments, e.g. "--no-capture"')
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--authorization",
        action="store_true",
        help="send an API key header with every request, as real clients do (redacted in captures)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="proxy process alone on CPU 1, everything else on CPU 0: its cost shows as its "
        "throughput, without other processes' noise (A/B of the relay; needs 2 CPUs)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(LUA + (AUTHORIZATION_LUA if args.authorization else ""))
        upstream, upstream_port = start_upstream()
        if args.pin:
            pin(upstream.pid, 0)
        results: dict[str, list[tuple[float, float, float]]] = {c: [] for c in args.configs}
        try:
            for round_no in range(args.rounds):
                # The order turns each round: whatever runs later in a round tends to measure a few
                # us more per request, and alternating cancels that out of the medians.
                order = args.configs if round_no % 2 == 0 else args.configs[::-1]
                for config in order:
                    results[config].append(run_once(config, upstream_port, lua, args.pin))
        finally:
            upstream.terminate()
    width = max(len(c) for c in args.configs)
    for config, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        main = statistics.median(r[2] for r in runs)
        every = ", ".join(f"{r[0]:.0f}" for r in runs)
        print(
            f"{config:{width}}  CPU/request {cpu:5.0f} us (proxy process {main:3.0f})"
            f"  req/s {rate:7.0f}   (CPU: {every})"
        )


if __name__ == "__main__":
    main()
