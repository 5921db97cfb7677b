"""Assembling a running proxy from a config: capture writer, redactor, server, signals."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Final, TextIO

import trio

from wirecap import __version__
from wirecap.capture.allocator import reuse_large_buffers
from wirecap.capture.child import ProcessSpec
from wirecap.capture.process import ProcessWriter
from wirecap.capture.redact import Redactor, Rules
from wirecap.proxy.server import ProxyServer

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.proxy.config import ProxyConfig

logger = logging.getLogger("wirecap.proxy")


def make_redactor(config: ProxyConfig) -> Redactor | None:
    """The capture-time redactor the config asks for, or None with ``--no-redact``."""
    settings = config.capture
    if not settings.redact:
        return None
    rules = Rules.compile(settings.redact_headers, settings.redact_body)
    per_route = {
        r.prefix: rules.merged(r.redact_headers, r.redact_body)
        for r in config.routes
        if r.redact_headers or r.redact_body
    }
    return Redactor(rules, per_route)


def make_writer(config: ProxyConfig, redactor: Redactor | None) -> ProcessWriter:
    """The proxy's capture writer for ``config``: a writer process (see capture/process.py). The
    output directory is created with mode 0700."""
    settings = config.capture
    settings.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    redaction = (
        {"enabled": True, **redactor.rules.describe()}
        if redactor is not None
        else {"enabled": False, "headers": [], "body_patterns": []}
    )
    spec = ProcessSpec(
        directory=str(settings.out),
        redaction=redaction,
        redactor=redactor.describe() if redactor is not None else None,
        listen=f"{config.listen_host}:{config.listen_port}",
        host=socket.gethostname(),
        pid=os.getpid(),
        level=settings.level,
        rotate_bytes=settings.rotate_bytes,
        rotate_seconds=settings.rotate_seconds,
    )
    return ProcessWriter(spec, on_full=settings.on_full)


#: ``wirecap proxy``'s exit status when capture stopped, or lost or dropped records, during the run.
EXIT_CAPTURE_INCOMPLETE: Final = 3


def exit_summary(server: ProxyServer) -> tuple[str, int]:
    """The proxy's last line and its exit status: how many exchanges it answered (those it answered
    itself counted apart), where the capture went, and what capture lost. The status is
    :data:`EXIT_CAPTURE_INCOMPLETE` when capture stopped or lost or dropped records, so that a
    supervisor can tell; else 0."""
    stats = server.stats
    n = stats.exchanges
    message = f"wirecap: {n} exchange{'' if n == 1 else 's'}"
    if stats.answered_by_proxy:
        message += f" ({stats.answered_by_proxy} answered by the proxy itself)"
    if server.writer is None:
        return f"{message}; capture off", 0
    capture = server.writer.statistics()
    message += f"; capture: {', '.join(str(p) for p in capture.paths) or 'none'}"
    if capture.records_dropped:
        message += f"; {capture.records_dropped} records dropped (--on-full drop)"
    if capture.failed:
        message += f"; CAPTURE STOPPED ({capture.failed}), {capture.records_lost} records lost"
    elif capture.records_lost:
        message += f"; {capture.records_lost} records lost"
    incomplete = capture.failed or capture.records_lost or capture.records_dropped
    return message, EXIT_CAPTURE_INCOMPLETE if incomplete else 0


def tune_interpreter() -> None:
    """The objects of start-up (modules, functions, config) moved out of the garbage collector's
    sight, so that its collections only look at what traffic allocates; big buffers reused
    (:mod:`wirecap.capture.allocator`)."""
    reuse_large_buffers()
    gc.collect()
    gc.freeze()


async def run_proxy(
    config: ProxyConfig, *, console: TextIO | None = None, banner: TextIO | None = None
) -> ProxyServer:
    """Run the proxy for ``config`` until SIGINT/SIGTERM; returns the server (for its statistics).

    The first signal starts a graceful shutdown (exchanges in flight get ``shutdown_grace`` seconds,
    then the capture file gets its index); a second one cancels whatever is left at once.
    """
    server = ProxyServer(config, console=console)
    await server.bind()  # fail on a taken address before creating any capture file
    tune_interpreter()
    writer = make_writer(config, make_redactor(config)) if config.capture.enabled else None
    server.writer = writer
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if server.shutting_down:
                        logger.warning("second %s: stopping now", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                    logger.warning(
                        "%s: finishing exchanges in flight, then closing the capture",
                        signal.Signals(signum).name,
                    )
                    server.shutdown()

            async def serve() -> None:
                host, port = await nursery.start(server.run)
                path = await nursery.start(writer.run) if writer is not None else None
                if banner is not None:
                    print(_banner(server, host, port, path), file=banner, flush=True)

            nursery.start_soon(watch_signals)
            await serve()
            await server.wait_stopped()
            if writer is not None:
                await writer.wait_finished()
            nursery.cancel_scope.cancel()
    return server


def _banner(server: ProxyServer, host: str, port: int, path: Path | None) -> str:
    lines = [f"wirecap {__version__} proxy listening on http://{host}:{port}"]
    for route in server.router.routes:
        extra = "" if route.capture else " (not captured)"
        if route.capture and route.sample < 1:
            extra = f" (sampled {route.sample:g})"
        lines.append(f"  {route.describe():<24} -> {route.upstream.url}{extra}")
    if server.writer is None:
        lines.append("capture is off")
    else:
        lines.append(f"capturing to {path}")
        if not server.config.capture.redact:
            lines.append("REDACTION IS OFF: credentials will be stored in the capture")
    return "\n".join(lines)
