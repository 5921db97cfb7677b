"""Small capture files written record by record, for command-line tests that need exact contents
(chosen exchange ids, a given number of body chunks, binary bodies)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import trio

from wirecap.capture import BodyChunk, ExchangeEnd, RequestReceived, ResponseHead, UpstreamRequest
from wirecap.capture.sink import SegmentHeader, SegmentSink
from wirecap.capture.writer import CaptureWriter

WALL_NS = 1_795_000_000_000_000_000


@dataclasses.dataclass
class Spec:
    """One exchange to write: a chat completion (or any body) answered in ``chunks``."""

    id: str
    status: int = 200
    model: str = "gpt-4o-mini"
    chunks: list[bytes] = dataclasses.field(default_factory=list)
    content_type: str = "application/json"
    gap_ns: list[int] | None = None  # the gap before each chunk; 1 ms by default
    path: str = "/v1/chat/completions"

    def records(self, index: int) -> list:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "hi"}]})
        request_body = body.encode()
        path = self.path
        head = (
            f"POST {path} HTTP/1.1\r\nHost: up\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(request_body)}\r\n\r\n"
        ).encode()
        chunks = self.chunks or [
            json.dumps(
                {
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
        ]
        length = sum(len(c) for c in chunks)
        response_head = (
            f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        records: list = [
            RequestReceived(
                x=self.id,
                wall_ns=WALL_NS + index * 1_000_000_000,
                method="POST",
                target=path,
                head=head,
                route="/",
                upstream_url="http://up" + path,
            ),
            UpstreamRequest(x=self.id, ns=10, head=head),
            BodyChunk(x=self.id, dir="req", ns=20, data=request_body),
            ResponseHead(x=self.id, ns=1_000_000, status=self.status, head=response_head),
        ]
        ns = 1_000_000
        for i, chunk in enumerate(chunks):
            ns += self.gap_ns[i] if self.gap_ns else 1_000_000
            records.append(BodyChunk(x=self.id, dir="res", ns=ns, data=chunk))
        records.append(
            ExchangeEnd(
                x=self.id,
                ns=ns + 1000,
                outcome="ok",
                status=self.status,
                req_bytes=len(request_body),
                res_bytes=length,
                ttfb_ns=1_000_000,
            )
        )
        return records


async def write_capture(directory: Path, specs: list[Spec]) -> Path:
    """Write ``specs`` as one capture segment in ``directory``; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    writer = CaptureWriter(SegmentSink(directory, SegmentHeader({"enabled": False})))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for index, spec in enumerate(specs):
            for record in spec.records(index):
                await writer.submit(record)
        await writer.aclose()
    [path] = sorted(directory.glob("*.cbor.zst"))
    return path
