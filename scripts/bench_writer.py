"""The capture writer process's CPU per exchange of workload A, without processes or sockets.

    python scripts/bench_writer.py [--exchanges 5000] [--rounds 7] [--authorization]

Builds the six records of each of N exchanges of workload A (the benchmark's request, answers from
its upstream, every answer different), packs them as the proxy does, and times in this process,
alternating, what the writer process does with them: ``records`` goes the record's way (unpack,
redact the record, ``cbor2.dumps(record.to_map())``, index item), ``packed`` the fast lane
(:meth:`SegmentSink.encode_batch`: redact and encode the packed tuples, a batch at a time). Then the other steps of a
frame, once each: ``marshal.loads`` of the batches, zstd level 1, the index. Prints the minimum and
median of the rounds in microseconds per exchange: the minimum is the cost, the spread is the
machine. ``--authorization`` adds an API key header to every request (real clients send one; the
benchmark's wrk does not), so head redaction runs for every exchange.
"""

from __future__ import annotations

import argparse
import marshal
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import REQUEST_BODY
from bench_upstream import chat_body

from wirecap.capture import frames
from wirecap.capture.index import IndexBuilder, index_item
from wirecap.capture.packing import PackedRecord, pack_record, unpack_record
from wirecap.capture.records import (
    BodyChunk,
    ExchangeEnd,
    Record,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
)
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.proxy.config import DEFAULT_REDACT_BODY, DEFAULT_REDACT_HEADERS
from wirecap.proxy.redact import Redactor, Rules

#: Records per batch the writer process reads: 25 exchanges (the proxy sends a batch every 5 ms, so
#: about 37 exchanges at 7,500 a second).
BATCH_RECORDS = 150


def exchange_records(n: int, rng: random.Random, authorization: bool) -> list[Record]:
    x = f"{rng.getrandbits(48):012x}"
    key = b"Authorization: Bearer sk-proj-" + b"k" * 40 + b"\r\n" if authorization else b""
    request_head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\n" + key + b"Content-Length: %d\r\n\r\n"
    ) % len(REQUEST_BODY)
    answer = chat_body(rng, n)
    response_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ) % len(answer)
    target = "/v1/chat/completions"
    return [
        RequestReceived(
            x=x,
            wall_ns=time.time_ns(),
            method="POST",
            target=target,
            head=request_head,
            client="127.0.0.1:40000",
            proxy_url="http://127.0.0.1:8080" + target,
            route="/",
            upstream_url="http://127.0.0.1:9000" + target,
        ),
        UpstreamRequest(x=x, ns=21_000, head=request_head.replace(b"8080", b"9000")),
        BodyChunk(x=x, dir="req", ns=22_000, data=REQUEST_BODY),
        ResponseHead(x=x, ns=95_000, status=200, head=response_head),
        BodyChunk(x=x, dir="res", ns=96_000, data=answer),
        ExchangeEnd(
            x=x,
            ns=99_000,
            outcome="ok",
            status=200,
            req_bytes=len(REQUEST_BODY),
            res_bytes=len(answer),
            ttfb_ns=95_000,
        ),
    ]


def new_sink() -> SegmentSink:
    """A sink with the proxy's default redaction; never opened, so it writes no file."""
    rules = Rules.compile(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_BODY)
    unused = Path(tempfile.gettempdir()) / "wirecap-bench-writer"
    return SegmentSink(unused, SegmentHeader(redaction={}), prepare=Redactor(rules), level=1)


def by_records(sink: SegmentSink, packed: list[PackedRecord]) -> list[object]:
    out: list[object] = []
    for item in packed:
        record, data = sink.encode(unpack_record(item))
        out.append((index_item(record), data))
    return out


def by_packed(sink: SegmentSink, packed: list[PackedRecord]) -> list[object]:
    out: list[object] = []
    for i in range(0, len(packed), BATCH_RECORDS):
        out += sink.encode_batch(packed[i : i + BATCH_RECORDS])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exchanges", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--authorization", action="store_true")
    args = parser.parse_args()
    rng = random.Random(1)
    records = [
        r for n in range(args.exchanges) for r in exchange_records(n, rng, args.authorization)
    ]
    packed = [pack_record(r) for r in records]
    per = 1e6 / args.exchanges
    times: dict[str, list[float]] = {"records": [], "packed": []}
    for _ in range(args.rounds):
        for name, lane in (("records", by_records), ("packed", by_packed)):
            sink = new_sink()
            start = time.perf_counter()
            lane(sink, packed)
            times[name].append((time.perf_counter() - start) * per)
    # The rest of the writer process's work, once: reading batches, compressing, indexing.
    sink = new_sink()
    batches = [
        marshal.dumps(packed[i : i + BATCH_RECORDS]) for i in range(0, len(packed), BATCH_RECORDS)
    ]
    start = time.perf_counter()
    for batch in batches:
        marshal.loads(batch)
    times["marshal.loads"] = [(time.perf_counter() - start) * per]
    encoded = by_packed(sink, packed)
    payloads = [
        b"".join(part for _, head, data in encoded[i : i + 3000] for part in (head, data))
        for i in range(0, len(encoded), 3000)
    ]
    compressor = frames.new_compressor(1)
    start = time.perf_counter()
    for payload in payloads:
        compressor.compress(payload)
    times["zstd level 1"] = [(time.perf_counter() - start) * per]
    index = IndexBuilder()
    start = time.perf_counter()
    for i in range(0, len(encoded), 3000):
        index.observe_all([item for item, _, _ in encoded[i : i + 3000]], i)
    times["index"] = [(time.perf_counter() - start) * per]
    print(f"{args.exchanges} exchanges of workload A, {args.rounds} rounds; us per exchange")
    print("| step | min | median |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
