"""Real captures and the ways a hostile or damaged file differs from them, for the reader's tests."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import samples
import zstandard

from wirecap.capture import (
    BodyChunk,
    ExchangeEnd,
    Gap,
    Header,
    RequestReceived,
    ResponseHead,
    UpstreamRequest,
    decoding,
    frames,
)
from wirecap.capture.sink import SegmentSink

if TYPE_CHECKING:
    from collections.abc import Callable

JSON_ID, SSE_ID, ERROR_ID, CUT_ID = "a0a0a0a0a0a0", "b1b1b1b1b1b1", "c2c2c2c2c2c2", "d3d3d3d3d3d3"
IDS = [JSON_ID, SSE_ID, ERROR_ID, CUT_ID]
RUNNER = Path(__file__).parent / "hostile_runner.py"


def _header(segment: int) -> Header:
    return Header(wirecap_version="test", created_ns=time.time_ns(), host="h", pid=1)


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(parts: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


def write_real_capture(directory: Path) -> Path:
    """A capture as the proxy writes it: a JSON exchange, a chunked SSE stream spread over several
    frames, an answer from upstream with an X-Proxy-Path head, one exchange cut off by a crash (no
    end), a gap record; then the index and footer."""
    directory.mkdir(parents=True, exist_ok=True)
    sink = SegmentSink(directory, _header)
    path = sink.open()
    request = json.dumps(samples.CHAT_REQUEST).encode()
    answer = json.dumps(samples.CHAT_JSON).encode()
    req_head = _head(
        "POST /openai/v1/chat/completions HTTP/1.1", "Host: x", f"Content-Length: {len(request)}"
    )

    def start(x: str, wall_ns: int) -> list:
        return [
            RequestReceived(
                x=x,
                wall_ns=wall_ns,
                method="POST",
                target="/openai/v1/chat/completions",
                head=req_head,
                client="127.0.0.1:1",
                proxy_url="http://127.0.0.1:5601/openai/v1",
                route="/openai",
                upstream_url="https://api.openai.com/v1/chat/completions",
            ),
            BodyChunk(x=x, dir="req", ns=10, data=request),
        ]

    sink.write_records(
        [
            *start(JSON_ID, 1_700_000_000_000_000_000),
            ResponseHead(
                x=JSON_ID,
                ns=20,
                status=200,
                head=_head(
                    "HTTP/1.1 200 OK",
                    "Content-Type: application/json",
                    f"Content-Length: {len(answer)}",
                ),
            ),
            BodyChunk(x=JSON_ID, dir="res", ns=30, data=answer),
            ExchangeEnd(
                x=JSON_ID,
                ns=40,
                outcome="ok",
                status=200,
                req_bytes=len(request),
                res_bytes=len(answer),
                ttfb_ns=20,
            ),
            *start(SSE_ID, 1_700_000_001_000_000_000),
        ]
    )
    sink.write_records(
        [
            ResponseHead(
                x=SSE_ID,
                ns=50,
                status=200,
                head=_head(
                    "HTTP/1.1 200 OK",
                    "Content-Type: text/event-stream",
                    "Transfer-Encoding: chunked",
                ),
            )
        ]
    )
    stream = _chunked(samples.chat_stream())
    for i, piece in enumerate(stream):
        sink.write_records([BodyChunk(x=SSE_ID, dir="res", ns=60 + i, data=piece)])
    error = b'{"error": {"message": "Rate limit reached", "type": "requests"}}'
    sink.write_records(
        [
            ExchangeEnd(
                x=SSE_ID,
                ns=100,
                outcome="ok",
                status=200,
                req_bytes=len(request),
                res_bytes=sum(len(p) for p in samples.chat_stream()),
                ttfb_ns=50,
            ),
            *start(ERROR_ID, 1_700_000_002_000_000_000),
            UpstreamRequest(
                x=ERROR_ID,
                ns=11,
                head=req_head[:-2] + b"X-Proxy-Path: http://127.0.0.1:5601/openai/v1\r\n\r\n",
            ),
            ResponseHead(
                x=ERROR_ID,
                ns=21,
                status=429,
                head=_head(
                    "HTTP/1.1 429 Too Many Requests",
                    "Retry-After: 1",
                    f"Content-Length: {len(error)}",
                ),
            ),
            BodyChunk(x=ERROR_ID, dir="res", ns=31, data=error),
            ExchangeEnd(
                x=ERROR_ID,
                ns=41,
                outcome="ok",
                status=429,
                req_bytes=len(request),
                res_bytes=len(error),
                ttfb_ns=21,
            ),
            Gap(
                wall_ns=1_700_000_003_000_000_000, records=3, bytes=300, exchanges=("e4e4e4e4e4e4",)
            ),
            *start(CUT_ID, 1_700_000_004_000_000_000),
            ResponseHead(
                x=CUT_ID,
                ns=22,
                status=200,
                head=_head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"),
            ),
            BodyChunk(x=CUT_ID, dir="res", ns=32, data=_chunked([b"data: partial\n\n"])[0]),
        ]
    )
    sink.close()
    return path


# -- the parts of a file -----------------------------------------------------------------------------


def split_index(data: bytes) -> tuple[int, dict[str, Any]]:
    """Where a closed file's index frame starts, and the index map it holds."""
    pointer = frames.decode_footer(data[-frames.FOOTER_SIZE :])
    assert pointer is not None
    offset, length = pointer
    return offset, decoding.decode_index_frame(data[offset : offset + length])


def data_frames(data: bytes, stop: int) -> list[bytes]:
    """The frames before ``stop``, as bytes."""
    return [
        data[f.offset : f.end]
        for f in frames.iter_frames(data, 0, stop)
        if isinstance(f, frames.FrameInfo)
    ]


def index_bytes(index_map: Any, splice: dict[str, bytes] | None = None) -> bytes:
    """The CBOR of ``index_map``, with each text value named in ``splice`` replaced by raw CBOR
    (huge arrays, declared lengths: what cbor2 will not encode from Python objects)."""
    raw = cbor2.dumps(index_map)
    for marker, replacement in (splice or {}).items():
        raw = raw.replace(cbor2.dumps(marker), replacement)
    return raw


def attach_index(body: bytes, index_cbor: bytes) -> bytes:
    """``body`` (data frames) followed by an index frame holding ``index_cbor`` and a footer."""
    compressed = frames.new_compressor().compress(index_cbor)
    frame = frames.skippable_frame(frames.INDEX_MAGIC, frames.INDEX_TAG + compressed)
    return body + frame + frames.encode_footer(len(body), len(frame))


def with_index(data: bytes, index_map: Any, splice: dict[str, bytes] | None = None) -> bytes:
    """``data`` with its index replaced by ``index_map``."""
    offset, _ = split_index(data)
    return attach_index(data[:offset], index_bytes(index_map, splice))


def set_path(index_map: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``index_map`` with the item at ``path`` (keys and list positions) set to ``value``."""
    edited = copy.deepcopy(index_map)
    target: Any = edited
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return edited


def index_paths(index_map: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every field of an index: its parts, each column, each element, a frame offset, a gap and
    its fields, a damage entry and its fields (``index_map`` must hold one gap and one damage)."""
    columns = index_map["columns"]
    rows = len(columns["x"])
    paths: list[tuple[Any, ...]] = [(key,) for key in index_map]
    paths += [("columns", name) for name in columns]
    paths += [("columns", name, row) for name in columns for row in range(rows)]
    paths += [("columns", "frames", row, 0) for row in range(rows)]
    for part in ("gaps", "damage"):
        paths += [(part, 0), *((part, 0, key) for key in index_map[part][0])]
    return paths


#: One value of each CBOR type (and the shapes between them that a reader might confuse).
CBOR_TYPES: list[Any] = [
    0,
    2**64 - 1,
    -1,
    -(2**64),
    1.5,
    float("nan"),
    True,
    None,
    cbor2.undefined,
    cbor2.CBORSimpleValue(99),
    "",
    "text",
    b"",
    b"\xff\x00",
    [],
    [1, "a", None],
    {},
    {"offset": 1},
    cbor2.CBORTag(1, 0),
]

#: Raw CBOR that declares more than any file holds, or holds more than it should.
HUGE_CBOR: dict[str, bytes] = {
    "array of 10 million": b"\x9a" + (10**7).to_bytes(4, "big") + b"\x00" * 10**7,
    "map of 2 million": b"\xba" + (2 * 10**6).to_bytes(4, "big") + b"\x00\x00" * (2 * 10**6),
    "array of 2 million empty arrays": b"\x9a"
    + (2 * 10**6).to_bytes(4, "big")
    + b"\x80" * 2 * 10**6,
    "declared array of 2**62": b"\x9b" + (2**62).to_bytes(8, "big") + b"\x00",
    "declared map of 2**62": b"\xbb" + (2**62).to_bytes(8, "big") + b"\x00",
    "declared bytes of 2**62": b"\x5b" + (2**62).to_bytes(8, "big") + b"\x00",
    "declared text of 2**31": b"\x7a" + (2**31).to_bytes(4, "big") + b"a",
    "nested 100000 deep": b"\x81" * 100_000 + b"\x00",
}


# -- data-frame attacks ------------------------------------------------------------------------------

_ZSTD = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)


def _frame(payload: bytes) -> bytes:
    return bytes(_ZSTD.compress(payload))


def _declaring(content: bytes, declared: int) -> bytes:
    """A frame of ``content`` whose header declares ``declared`` bytes (8-byte content size)."""
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(content))
    assert frame[4] >> 6 == 0 and frame[4] & 0x20  # 1-byte content size, single segment
    return (
        bytes(frame[:4])
        + bytes([0xE0 | (frame[4] & 0x1F)])
        + declared.to_bytes(8, "little")
        + bytes(frame[6:])
    )


def _body(x: str, data: Any, **more: Any) -> bytes:
    """A body record of exchange ``x``; a text ``data`` or value in ``more`` that names a key of
    HUGE_CBOR or is ``"@items"`` becomes that raw CBOR."""
    raw = cbor2.dumps({"t": "body", "x": x, "dir": "res", "ns": 1, "data": data, **more})
    for name, replacement in HUGE_CBOR.items():
        raw = raw.replace(cbor2.dumps(name), replacement)
    return raw.replace(
        cbor2.dumps("@items"), b"\x9a" + (300_000).to_bytes(4, "big") + b"\x00" * 300_000
    )


@functools.cache
def zeros_frame() -> bytes:
    """A frame of 64 MiB of zeros (2 KB): CBOR integers, not records."""
    return _frame(bytes(64 << 20))


#: Frames (or bytes) that cost a careless reader gigabytes or minutes, by name.
FRAME_ATTACKS: dict[str, Callable[[], bytes]] = {
    "64 MiB of zeros, 20 frames": lambda: zeros_frame() * 20,
    "declares 2**40 bytes": lambda: _declaring(_body(SSE_ID, b"x"), 2**40),
    "declares 64 MiB + 1": lambda: _declaring(_body(SSE_ID, b"x"), (64 << 20) + 1),
    "record declaring 2**62 bytes": lambda: _frame(_body(SSE_ID, "declared bytes of 2**62")),
    "record of 300000 items": lambda: _frame(_body(SSE_ID, b"x", junk="@items")),
    "record of 2 million empty arrays": lambda: _frame(
        _body(SSE_ID, b"x", junk="array of 2 million empty arrays")
    ),
    "record of 100000 empty arrays": lambda: _frame(_body(SSE_ID, b"x", junk=[[]] * 100_000)),
    "300000 tiny records": lambda: _frame(cbor2.dumps({"t": "z"}) * 300_000),
    "40 MiB body of an exchange": lambda: _frame(_body(CUT_ID, b"\x00" * (40 << 20))),
    "tagged record": lambda: _frame(cbor2.dumps(cbor2.CBORTag(55799, {"t": "body"}))),
    "nested 100000 deep": lambda: _frame(HUGE_CBOR["nested 100000 deep"]),
    "skippable magics in a row": lambda: b"\x50\x2a\x4d\x18\xff\xff\xff\x7f" * 50_000,
    "zstd magics in a row": lambda: b"\x28\xb5\x2f\xfd\x00\x00\x00" * 50_000,
    "a block of 2 MiB": lambda: (
        b"\x28\xb5\x2f\xfd\x20\x00"
        + ((((2 << 20) - 1) << 3) | 1).to_bytes(3, "little")
        + b"\x00" * 64
    ),
}


@functools.cache
def frame_attack(name: str) -> bytes:
    return FRAME_ATTACKS[name]()


# -- running commands --------------------------------------------------------------------------------

#: Every reading command, as the user runs it; ``index`` last (it writes), then readers again.
COMMANDS: list[list[str]] = [
    ["inspect", "{file}"],
    ["inspect", "--json", "{file}"],
    ["inspect", "--detect-issues", "{file}"],
    ["stats", "{file}"],
    ["export", "--format", "har", "-o", "{out}", "{file}"],
    ["export", "--format", "jsonl", "-o", "{out}", "{file}"],
    ["inspect", "--id", "{id}", "{file}"],
    ["inspect", "--id", "{id}", "--raw", "response", "{file}"],
    ["inspect", "--id", "{id}", "--raw", "request", "{file}"],
    ["inspect", "--id", "{id}", "--raw", "upstream", "{file}"],
    ["api"],
    ["index", "{file}"],
    ["inspect", "--id", "{id}", "{file}"],
    ["index", "{file}"],
]


class Runner:
    """The command runner (hostile_runner.py) in a subprocess of its own."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )

    def run(
        self,
        files: list[Path],
        commands: list[list[str]] = COMMANDS,
        *,
        ids: list[str] = IDS,
        memory: int,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Run ``commands`` on ``files`` under an address-space limit of what the runner has
        plus ``memory`` bytes, ``timeout`` seconds being a hang guard."""
        assert self._process.stdin is not None and self._process.stdout is not None
        request = {
            "files": [str(f) for f in files],
            "ids": ids,
            "commands": commands,
            "memory": memory,
            "timeout": timeout,
        }
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        assert line, "the command runner died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()  # the runner ends with its input
        self._process.wait(timeout=30)
        self._process.stdout.close()


def failures(reply: dict[str, Any]) -> list[str]:
    """What went wrong for the user: a command killed, a traceback, an unexpected exit status
    (0 done, 1 an error message, 2 click's usage error such as an id that is not there)."""
    if "killed" in reply:
        return [f"runner child {reply['killed']}"]
    return [
        f"{' '.join(r['args'])} on {r['file']}: status {r['status']}\n{r['traceback'] or r['stderr']}"
        for r in reply["results"]
        if r["traceback"] is not None or r["status"] not in (0, 1, 2)
    ]
