"""Assembling a running proxy from a config: capture writer, redactor, server, signals."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Literal, TextIO

import trio

from wirecap import __version__
from wirecap.capture.allocator import reuse_large_buffers
from wirecap.capture.child import ProcessSpec
from wirecap.capture.process import ProcessWriter
from wirecap.capture.redact import Redactor, Rules
from wirecap.proxy.admin import PATHS, AdminServer
from wirecap.proxy.metrics import ProxyMetrics
from wirecap.proxy.routing import Router
from wirecap.proxy.server import ProxyServer

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.capture.writer import WriterStatistics
    from wirecap.proxy.config import ProxyConfig, Route
    from wirecap.proxy.server import ProxyStatistics

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


def exit_summary(stats: ProxyStatistics, capture: WriterStatistics | None) -> tuple[str, int]:
    """The proxy's last line and its exit status: how many exchanges it answered (those it answered
    itself counted apart), where the capture went (``capture``: None when off), and what capture
    lost. The status is :data:`EXIT_CAPTURE_INCOMPLETE` when capture stopped or lost or dropped
    records, so that a supervisor can tell; else 0."""
    message = f"wirecap: {_count(stats.exchanges, 'exchange')}"
    if stats.answered_by_proxy:
        message += f" ({stats.answered_by_proxy} answered by the proxy itself)"
    if capture is None:
        return f"{message}; capture off", 0
    message += f"; capture: {', '.join(str(p) for p in capture.paths) or 'none'}"
    if capture.records_dropped:
        message += f"; {_count(capture.records_dropped, 'record')} dropped (--on-full drop)"
    if capture.failed:
        message += f"; CAPTURE STOPPED ({capture.failed})"
    if capture.records_lost:
        message += f"; {_count(capture.records_lost, 'record')} lost"
    incomplete = capture.failed or capture.records_lost or capture.records_dropped
    return message, EXIT_CAPTURE_INCOMPLETE if incomplete else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def tune_interpreter() -> None:
    """The objects of start-up (modules, functions, config) moved out of the garbage collector's
    sight, so that its collections only look at what traffic allocates; big buffers reused
    (:mod:`wirecap.capture.allocator`)."""
    reuse_large_buffers()
    gc.collect()
    gc.freeze()


#: A second signal of the same kind this soon (seconds) after the first is the same request
#: delivered twice: ``timeout``, process managers and shells signal a child and then its whole
#: process group. A person's second Ctrl-C, after reading the first one's message, comes later.
DUPLICATE_SIGNAL_WINDOW: Final = 0.5

SignalAction = Literal["graceful", "duplicate", "stop"]


@dataclasses.dataclass(slots=True)
class ShutdownSignals:
    """What each SIGINT/SIGTERM means. Sans-IO: the caller passes the time.

    The first signal starts a graceful shutdown; the same signal again within ``window`` seconds is
    a duplicate delivery and changes nothing; any other one after that stops at once."""

    window: float = DUPLICATE_SIGNAL_WINDOW
    first: tuple[int, float] | None = None
    duplicates: int = 0

    def on_signal(self, signum: int, now: float) -> SignalAction:
        if self.first is None:
            self.first = (signum, now)
            return "graceful"
        first_signum, first_at = self.first
        if signum == first_signum and now - first_at < self.window:
            self.duplicates += 1
            return "duplicate"
        return "stop"


async def watch_signals(
    policy: ShutdownSignals,
    graceful: Callable[[], object],
    stop: Callable[[], object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Turn SIGINT/SIGTERM into ``graceful()`` and ``stop()`` as ``policy`` says, with a line on
    stderr for each; started (``nursery.start``) once the signals are caught."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        task_status.started()
        async for signum in received:
            name = signal.Signals(signum).name
            action = policy.on_signal(signum, trio.current_time())
            if action == "stop":
                logger.warning("second %s: stopping now", name)
                stop()
            elif action == "duplicate":
                logger.warning(
                    "%s again within %gs: the same request delivered twice; "
                    "still finishing (send it again to stop now)",
                    name,
                    policy.window,
                )
            else:
                logger.warning("%s: finishing exchanges in flight, then closing the capture", name)
                graceful()


#: What tells a running proxy to stop: given the server and the scope that ends the run, it calls
#: ``server.shutdown()`` for a graceful stop or cancels the scope to stop at once.
Control = Callable[[ProxyServer, trio.CancelScope], Awaitable[None]]


async def run_proxy(
    config: ProxyConfig,
    *,
    server: ProxyServer | None = None,
    console: TextIO | None = None,
    banner: TextIO | None = None,
    signals: ShutdownSignals | None = None,
    control: Control | None = None,
    beside: Callable[[Path], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> ProxyServer:
    """Run the proxy for ``config`` (on ``server``, default a new one) until SIGINT/SIGTERM;
    returns the server (for its statistics).

    The first signal starts a graceful shutdown (exchanges in flight get ``shutdown_grace`` seconds,
    then the capture file gets its index); the same signal delivered again at once (see
    :class:`ShutdownSignals`) changes nothing; a later one cancels whatever is left at once.
    ``control``, when given, is what stops the proxy instead of signals (a ``--workers`` worker
    obeys its supervisor). ``task_status`` gets the address once the proxy listens and captures.
    ``beside`` (``--ui``: the inspector) is started then with the capture directory, and cancelled
    when the proxy stops.
    """
    if server is None:
        server = ProxyServer(config, console=console)
    admin = make_admin(server)
    await bind_all(server, admin)  # fail on a taken address before creating any capture file
    tune_interpreter()
    writer = make_writer(config, make_redactor(config)) if config.capture.enabled else None
    server.writer = writer
    async with trio.open_nursery() as nursery:
        if control is None:
            policy = signals if signals is not None else ShutdownSignals()
            cancel = nursery.cancel_scope.cancel
            await nursery.start(watch_signals, policy, server.shutdown, cancel)
        else:
            nursery.start_soon(control, server, nursery.cancel_scope)
        host, port = await nursery.start(server.run)
        path = await nursery.start(writer.run) if writer is not None else None
        if admin is not None:
            await nursery.start(admin.run)
        if banner is not None:
            print(banner_text(config, host, port, path), file=banner, flush=True)
            if admin is not None:
                print(f"admin on {admin.url} ({', '.join(PATHS)})", file=banner, flush=True)
        if beside is not None and writer is not None:
            nursery.start_soon(beside, config.capture.out)
        task_status.started((host, port))
        await server.wait_stopped()
        if writer is not None:
            await writer.wait_finished()
        nursery.cancel_scope.cancel()
    return server


async def bind_all(server: ProxyServer, admin: AdminServer | None) -> list[trio.SocketListener]:
    """Bind the proxy's listening sockets, then the admin listener's (if any); when the admin
    address is taken, the proxy's are closed again before the error goes on."""
    listeners = await server.bind()
    if admin is not None:
        try:
            await admin.bind()
        except OSError:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            raise
    return listeners


def make_admin(server: ProxyServer) -> AdminServer | None:
    """The admin listener ``server``'s config asks for, with the metrics it serves attached to
    the server; None when ``--admin`` is not given (then nothing is counted)."""
    if server.config.admin.address is None:
        return None
    server.metrics = ProxyMetrics(server)
    return AdminServer(server, server.config.admin, server.metrics)


def client_base_urls(route: Route, proxy_url: str) -> list[tuple[str, str]]:
    """What to give an SDK to send through ``route``: (client, base URL) pairs, from the upstream's
    host. OpenAI's SDK wants the ``/v1`` in its base URL, Anthropic's adds it itself, OpenRouter's
    API lives under ``/api/v1``, Ollama's clients take the host alone; any other upstream gets the
    route's URL, to which a client adds the API's own path."""
    base = proxy_url.rstrip("/") + route.prefix.rstrip("/")
    upstream = route.upstream
    path = upstream.base_path.rstrip("/")
    if upstream.host == "api.anthropic.com":
        return [("Anthropic SDK", base)]
    if upstream.host == "openrouter.ai":
        return [("OpenAI SDK (OpenRouter)", base + ("" if path.endswith("/v1") else "/api/v1"))]
    if upstream.host == "api.openai.com":
        return [("OpenAI SDK", base + ("" if path.endswith("/v1") else "/v1"))]
    if upstream.port == 11434:
        return [("Ollama", base), ("OpenAI SDK", base + "/v1")]
    if path.endswith("/v1"):
        return [("OpenAI-compatible SDK", base)]
    return [("base URL", base)]


def _client_url(host: str, port: int) -> str:
    """The URL a local client uses: a wildcard listen address is reached through loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def banner_text(
    config: ProxyConfig, host: str, port: int, capture: Path | str | None, *, workers: int = 1
) -> str:
    """What ``wirecap proxy`` prints once it listens: its routes, the base URL to give each SDK,
    and where it captures (``capture``: the file, or the files of its workers; None when off)."""
    proxy_url = _client_url(host, port)
    lines = [f"wirecap {__version__} proxy listening on http://{host}:{port}"]
    if workers > 1:
        lines[0] += f" ({workers} worker processes)"
    for route in Router(config.routes).routes:
        extra = "" if route.capture else " (not captured)"
        if route.capture and route.sample < 1:
            extra = f" (sampled {route.sample:g})"
        lines.append(f"  {route.describe():<24} -> {route.upstream.url}{extra}")
        clients = client_base_urls(route, proxy_url)
        lines.append("      " + "; ".join(f"{who}: {url}" for who, url in clients))
    if not config.capture.enabled:
        lines.append("capture is off")
    else:
        lines.append(f"capturing to {capture}")
        if not config.capture.redact:
            lines.append("REDACTION IS OFF: credentials will be stored in the capture")
    return "\n".join(lines)
