"""Write tests/data/mitmproxy/llm.mitm with the real mitmdump: a reverse proxy (``mitmdump -w``)
in front of a loopback LLM-like server, driven by httpx; then llm.har, mitmproxy's HAR export of
the same flows (``mitmdump -r llm.mitm --set hardump=llm.har``). Everything stays on 127.0.0.1.

    python scripts/make_mitmproxy_samples.py [--mitmdump PATH] [--out tests/data/mitmproxy]

The flows: an OpenAI chat completion (JSON), the same gzip-coded, a streamed answer (SSE,
chunked), a 404, a POST with a binary body, and a request the server drops without answering
(mitmproxy keeps it as a flow with an error and no response). The mitmproxy version goes in the
README beside the file.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
CHAT = {
    "id": "chatcmpl-mitm",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
}


def sse_events() -> list[bytes]:
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(
            404, b'{"error": {"message": "no such model"}}', {"Content-Type": "application/json"}
        )

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path == "/upload":
            self._answer(200, body[::-1], {"Content-Type": "application/octet-stream"})
            return
        if json.loads(body).get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in sse_events():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
            return
        answer = json.dumps(CHAT).encode()
        if "gzip" in self.headers.get("Accept-Encoding", "") and self.path.endswith("?gzip"):
            self._answer(
                200,
                gzip.compress(answer),
                {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        else:
            self._answer(200, answer, {"Content-Type": "application/json"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(base: str) -> None:
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=base, timeout=10) as client:
        client.post("/v1/chat/completions", json=ask, headers={"Authorization": "Bearer sk-sample"})
        client.post("/v1/chat/completions?gzip", json=ask, headers={"Accept-Encoding": "gzip"})
        with client.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as r:
            for _ in r.iter_bytes():
                pass
        client.get("/v1/models/nope")
        client.post("/upload", content=bytes(range(256)))
        with contextlib.suppress(httpx.HTTPError):
            client.post("/drop", json=ask)


@contextlib.contextmanager
def mitmdump(path: str, mode: str, out: str) -> Iterator[int]:
    """A mitmdump on a free loopback port in ``mode``, writing flows to ``out``."""
    port = free_port()
    args = [path, "-q", "--listen-host", "127.0.0.1", "-p", str(port), "--mode", mode, "-w", out]
    proxy = subprocess.Popen(args)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mitmdump", default=str(ROOT / ".bench-venv/bin/mitmdump"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests/data/mitmproxy")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = args.out / "llm.mitm"
    target.unlink(missing_ok=True)
    upstream = f"127.0.0.1:{server.server_address[1]}"
    try:
        with mitmdump(args.mitmdump, f"reverse:http://{upstream}", str(target)) as port:
            drive(f"http://127.0.0.1:{port}")
        # a raw TCP flow, appended (+): an importer of HTTP skips it and says so
        with (
            mitmdump(args.mitmdump, f"reverse:tcp://{upstream}", f"+{target}") as port,
            socket.create_connection(("127.0.0.1", port)) as raw,
        ):
            raw.sendall(b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while raw.recv(65536):
                pass
    finally:
        server.shutdown()
    # mitmproxy's own HAR export of the same flows
    har = args.out / "llm.har"
    har.unlink(missing_ok=True)
    subprocess.run(
        [args.mitmdump, "-q", "-n", "-r", str(target), "--set", f"hardump={har}"], check=True
    )
    version = subprocess.run(
        [args.mitmdump, "--version"], capture_output=True, text=True, check=True
    )
    print(f"{target}: {target.stat().st_size} bytes")
    print(version.stdout.splitlines()[0])


if __name__ == "__main__":
    main()
