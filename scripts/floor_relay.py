"""The least a trio relay can do, to measure what the foundation costs before wirecap adds anything.

    python scripts/floor_relay.py --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT --mode bytes|h11

``bytes``: a TCP forwarder on trio; each client connection gets its own upstream connection and
two tasks that copy bytes both ways as they arrive. No HTTP at all.
``h11``: the smallest HTTP/1.1 reverse proxy on trio and h11: each request is parsed by an
``h11.Connection(h11.SERVER)``, sent on the client connection's own upstream connection through an
``h11.Connection(h11.CLIENT)``, and the response's events are sent back through the server
connection as they arrive (h11 frames them again). No capture, no header edits, no timeouts.

Neither is a product: scripts/fairness.py runs them as subjects (``--subject floor-bytes`` and
``floor-h11``) beside ``wirecap proxy``, so that a latency or CPU figure can be read against what
trio, and trio with h11, cost on the same machine in the same run. It prints the port it listens
on, then serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import trio

READ_SIZE = 65536
Handler = Callable[[tuple[str, int], trio.SocketStream], Awaitable[None]]


async def _copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(READ_SIZE):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def forward_bytes(upstream: tuple[str, int], client: trio.SocketStream) -> None:
    async with client, await trio.open_tcp_stream(*upstream) as up, trio.open_nursery() as nursery:
        nursery.start_soon(_copy, client, up)
        nursery.start_soon(_copy, up, client)


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(READ_SIZE))


async def forward_h11(upstream: tuple[str, int], client: trio.SocketStream) -> None:
    server, conn = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    async with client, await trio.open_tcp_stream(*upstream) as up:
        while True:
            event = await _next(server, client)
            if not isinstance(event, h11.Request):
                return
            await up.send_all(conn.send(event) or b"")
            while not isinstance(event, h11.EndOfMessage):
                event = await _next(server, client)
                await up.send_all(conn.send(event) or b"")
            while not isinstance(event := await _next(conn, up), h11.EndOfMessage):
                await client.send_all(server.send(event) or b"")
            await client.send_all(server.send(event) or b"")
            if h11.MUST_CLOSE in (server.our_state, conn.our_state):
                return
            server.start_next_cycle()
            conn.start_next_cycle()


async def _serve_one(
    handler: Handler, upstream: tuple[str, int], client: trio.SocketStream
) -> None:
    """One client connection; a peer that breaks it or speaks bad HTTP ends it alone."""
    with contextlib.suppress(
        trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError
    ):
        await handler(upstream, client)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--mode", choices=("bytes", "h11"), required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    up_host, _, up_port = args.upstream.rpartition(":")
    handler = forward_bytes if args.mode == "bytes" else forward_h11
    listeners = await trio.open_tcp_listeners(int(port), host=host, backlog=4096)
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(partial(_serve_one, handler, (up_host, int(up_port))), listeners)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
