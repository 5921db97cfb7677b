"""Time inspect, --id and --detect-issues on a generated capture of many exchanges.

    python scripts/bench_inspect.py --exchanges 100000

The capture mixes OpenAI chat JSON, OpenAI chat streams and Anthropic streams (varied text, a few
errors and truncated streams), written in the real format by the real writer. Each command runs as a
subprocess (``python -m wirecap``), output discarded, twice: the first run works out every row
and fills the row cache (a fresh one, in the work directory), the second reads it. The table reports
both wall times and the larger peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wirecap.capture import (
    BodyChunk,
    ExchangeEnd,
    Header,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.capture.sink import SegmentSink

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "models",
    "stream",
    "tokens",
    "to",
    "eager",
    "clients",
]


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def exchange_records(i: int, rng: random.Random, wall_ns: int) -> list:
    x = f"{i:012x}"
    kind = rng.random()
    prompt = text(rng, 30)
    if kind < 0.4:
        path, req = (
            "/openai/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
        )
        answer = text(rng, 60)
        status = 500 if rng.random() < 0.01 else 200
        body = json.dumps(
            {
                "id": f"chatcmpl-{i}",
                "object": "chat.completion",
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 40, "completion_tokens": 80, "total_tokens": 120},
            }
        ).encode()
        chunks, ctype = [body], "application/json"
    elif kind < 0.8:
        path, req = (
            "/openai/v1/chat/completions",
            {
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
        )
        status, ctype = 200, "text/event-stream"
        base = {
            "id": f"chatcmpl-{i}",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini-2024-07-18",
        }
        chunks = [
            f"data: {json.dumps(dict(base, choices=[{'index': 0, 'delta': {'content': w + ' '}, 'finish_reason': None}]))}\n\n".encode()
            for w in text(rng, 20).split()
        ]
        chunks.append(
            f"data: {json.dumps(dict(base, choices=[{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]))}\n\n".encode()
        )
        if rng.random() > 0.01:
            chunks.append(b"data: [DONE]\n\n")
    else:
        path, req = (
            "/anthropic/v1/messages",
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 500,
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
        )
        status, ctype = 200, "text/event-stream"
        chunks = [
            b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5-20250929","usage":{"input_tokens":40,"output_tokens":1}}}\n\n'
        ]
        chunks += [
            f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{w} "}}}}\n\n'.encode()
            for w in text(rng, 20).split()
        ]
        chunks.append(
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
    req_body = json.dumps(req).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:5601\r\nContent-Type: application/json\r\nAuthorization: Bearer [redacted sha256:1a2b3c4d]\r\nContent-Length: {len(req_body)}\r\n\r\n".encode()
    records = [
        RequestReceived(
            x=x,
            wall_ns=wall_ns,
            method="POST",
            target=path,
            head=head,
            route="/" + path.split("/")[1],
            upstream_url="https://api.example.com" + path,
        ),
        UpstreamRequest(x=x, ns=50_000, head=head),
        BodyChunk(x=x, dir="req", ns=60_000, data=req_body),
        ResponseHead(
            x=x,
            ns=200_000_000,
            status=status,
            head=f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\n\r\n".encode(),
        ),
    ]
    ns = 200_000_000
    for chunk in chunks:
        ns += rng.randint(5_000_000, 30_000_000)
        records.append(BodyChunk(x=x, dir="res", ns=ns, data=chunk))
    records.append(
        ExchangeEnd(
            x=x,
            ns=ns + 1000,
            outcome="ok",
            status=status,
            req_bytes=len(req_body),
            res_bytes=sum(map(len, chunks)),
            ttfb_ns=200_000_000,
        )
    )
    return records


def generate(directory: Path, count: int) -> tuple[Path, str]:
    rng = random.Random(42)
    sink = SegmentSink(
        directory,
        lambda seg: Header(
            wirecap_version="bench",
            created_ns=time.time_ns(),
            host="bench",
            pid=os.getpid(),
            segment=seg,
        ),
    )
    path = sink.open()
    batch: list = []
    size = 0
    start = time.time_ns() - count * 100_000_000
    last = ""
    for i in range(count):
        records = exchange_records(i, rng, start + i * 100_000_000)
        batch += records
        size += sum(len(getattr(r, "data", b"")) + len(getattr(r, "head", b"")) for r in records)
        last = records[0].x
        if size >= 1 << 20:
            sink.write_records(batch)
            batch, size = [], 0
    if batch:
        sink.write_records(batch)
    sink.close()
    return path, last


def timed(args: list[str], cache: Path) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one ``python -m wirecap`` run."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "wirecap", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "WIRECAP_CACHE_DIR": str(cache)},
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        raise SystemExit(f"wirecap {' '.join(args)} failed with {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--generate-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_into:
        path, last = generate(args.generate_into, args.exchanges)
        print(path, last)
        return
    workdir = Path(tempfile.mkdtemp(prefix="wirecap-bench-inspect-"))
    try:
        t0 = time.perf_counter()
        # Generated in a child process, so that this process stays small: a child's peak RSS, as the
        # kernel reports it, includes what it inherited from its parent before exec.
        made = subprocess.run(
            [
                sys.executable,
                __file__,
                "--exchanges",
                str(args.exchanges),
                "--generate-into",
                str(workdir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        path_text, last = made.stdout.split()
        path = Path(path_text)
        generated = time.perf_counter() - t0
        print(
            f"{args.exchanges} exchanges, capture {path.stat().st_size / 2**20:.1f} MiB, generated in {generated:.1f}s"
        )
        print("| command | first run (s) | second run (s) | peak RSS (MiB) |")
        print("|---|---|---|---|")
        for label, command in (
            ("inspect --id LAST (through the index)", ["inspect", str(path), "--id", last]),
            ("inspect (table)", ["inspect", str(path)]),
            ("inspect --json", ["inspect", str(path), "--json"]),
            ("inspect --detect-issues", ["inspect", str(path), "--detect-issues"]),
            ("stats", ["stats", str(path)]),
        ):
            first, rss_first = timed(command, workdir / "cache")
            second, rss_second = timed(command, workdir / "cache")
            shown = " ".join(c if c != str(path) else "CAPTURE" for c in command)
            print(
                f"| `wirecap {shown}` ({label}) | {first:.2f} | {second:.2f} "
                f"| {max(rss_first, rss_second):.0f} |"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
