"""The benchmark's upstream: a small, fast, OpenAI-like HTTP/1.1 server (asyncio, hand-parsed).

    python scripts/bench_upstream.py --port 0    # prints "listening PORT" on stdout

It must never be the bottleneck, so it parses only what it needs (request line, Content-Length, the
body) and answers from prebuilt pieces:

- ``POST /v1/chat/completions``: a ~2 KB chat completion whose text, id and timing vary per request;
- ``POST /v1/stream?chunks=N&gap_ms=G``: N SSE events G ms apart, each carrying its send time
  (``time.monotonic_ns()``, comparable across processes on Linux) and varied text, then ``[DONE]``;
- ``GET /big?size=N``: N bytes of varied text with a Content-Length (1 MiB of base64 repeated).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import time
from urllib.parse import parse_qs, urlsplit

WORDS = [
    *[
        "the",
        "model",
        "answers",
        "questions",
        "about",
        "weather,",
        "code,",
        "history",
        "and",
        "science",
        "with",
        "care",
        "while",
    ],
    *[
        "streaming",
        "tokens",
        "quickly",
        "to",
        "many",
        "eager",
        "clients",
        "that",
        "wait",
        "for",
        "every",
        "word",
        "it",
        "writes",
    ],
]
BIG_BLOCK = base64.b64encode(
    os.urandom(786432)
)  # 1 MiB of text that does not repeat inside a frame


#: Byte value -> word, so that one ``randbytes`` call picks a whole answer's words (260 ``choice``
#: calls cost 60 us a request, more than the proxy's relay; this costs 5).
_WORD_OF_BYTE = [WORDS[i % len(WORDS)].encode() for i in range(256)]
_CHAT_TEMPLATE = (
    b'{"id": "chatcmpl-%016x", "object": "chat.completion", "created": %d, '
    b'"model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_%08x", "choices": [{"index": 0, '
    b'"message": {"role": "assistant", "content": "%s"}, "finish_reason": "stop"}], '
    b'"usage": {"prompt_tokens": %d, "completion_tokens": 260, "total_tokens": %d}}'
)


def chat_body(rng: random.Random, n: int) -> bytes:
    """A ~2 KB chat completion: 260 random words, a random id and fingerprint, the time."""
    text = b" ".join(map(_WORD_OF_BYTE.__getitem__, rng.randbytes(260)))
    return _CHAT_TEMPLATE % (
        rng.getrandbits(64),
        int(time.time()),
        rng.getrandbits(32),
        text,
        200 + n % 50,
        460 + n % 50,
    )


class Handler(asyncio.Protocol):
    counter = 0

    def __init__(self) -> None:
        self.buf = bytearray()
        self.rng = random.Random()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.close_after = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end == -1:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            length = 0
            self.close_after = False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                    self.close_after = True
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            _method, target, _ = head.split(" ", 2)
            url = urlsplit(target)
            Handler.counter += 1
            if url.path.endswith("/stream"):
                query = parse_qs(url.query)
                self.busy = True
                asyncio.get_running_loop().create_task(
                    self.stream(
                        int(query.get("chunks", ["200"])[0]), float(query.get("gap_ms", ["2"])[0])
                    )
                )
                return
            if url.path.endswith("/big"):
                self.busy = True
                size = int(parse_qs(url.query).get("size", [str(1 << 30)])[0])
                asyncio.get_running_loop().create_task(self.big(size))
                return
            body = chat_body(self.rng, Handler.counter)
            assert self.transport is not None
            if self.close_after:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                    % len(body)
                    + body
                )
                self.transport.close()
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_%d\r\nContent-Length: %d\r\n\r\n"
                % (Handler.counter, len(body))
                + body
            )

    async def stream(self, chunks: int, gap_ms: float) -> None:
        assert self.transport is not None
        t = self.transport
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(chunks):
            words = " ".join(self.rng.choice(WORDS) for _ in range(3))
            event = (
                b'data: {"i":%d,"t":%d,"choices":[{"index":0,"delta":{"content":"%s "}}]}\n\n'
                % (i, time.monotonic_ns(), words.encode())
            )
            t.write(b"%x\r\n%s\r\n" % (len(event), event))
            await asyncio.sleep(gap_ms / 1000)
        done = b"data: [DONE]\n\n"
        t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        self.finish()

    async def big(self, size: int) -> None:
        assert self.transport is not None
        t = self.transport
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size)
        sent = 0
        view = memoryview(BIG_BLOCK)
        while sent < size:
            n = min(len(BIG_BLOCK), size - sent)
            t.write(view[:n])
            sent += n
            await self.can_write.wait()
        self.finish()

    def finish(self) -> None:
        assert self.transport is not None
        if self.close_after:
            self.transport.close()
            return
        self.busy = False
        self.process()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, "127.0.0.1", args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
