"""``wirecap proxy --workers N``: N proxy processes behind one listening socket.

A proxy process uses one core: trio and h11 run the relay in one thread. With ``--workers N`` the
``wirecap proxy`` process (which has created the capture directory) binds the listening sockets
(and the admin one) and forks N workers before it runs trio, so that the config and the sockets
are simply inherited. Each worker is a whole proxy on the shared socket: relay, connection pool, capture
writer process, console lines. The kernel gives each new connection to one of the workers waiting
in accept, so a busy worker takes fewer. Each worker's capture writer writes segments of its own
into the capture directory (their names carry its pid); readers merge the segments of a directory
by time and exchange id, as they do for rotated ones.

The first process then supervises, in a trio run of its own:

- it prints the banner once every worker listens;
- it serves ``--admin``: ``/metrics`` is the sum of the workers' series (each worker sends a
  snapshot of its registry every :data:`REPORT_SECONDS`), and ``/readyz`` fails while a worker is
  missing;
- it runs ``--ui`` and ``--ship`` beside, once, on the capture directory;
- it alone acts on SIGINT/SIGTERM (workers ignore them, so a Ctrl-C that reaches the whole
  process group counts once), and tells every worker to finish or to stop at once;
- it prints one last line for the whole run and exits with its status: the exchanges of all
  workers, all their capture files, 3 when any worker's capture stopped, lost or dropped records,
  1 when a worker died.

Each worker has two pipes to the supervisor. On *control* the supervisor writes ``g`` (finish the
exchanges in flight, then stop) or ``s`` (stop now); its end of input (the supervisor died) also
means ``g``. On *report* the worker writes JSON lines: ``listening`` once, then its statistics and
metrics (when ``--admin`` is on) every :data:`REPORT_SECONDS`, and a last report with ``done``.

Faults (``--fault``) are injected by each worker into its own exchanges: ``every=N`` counts the
exchanges of one worker, and a ``seed`` gives each worker the same sequence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from wirecap.capture.frames import SEGMENT_SUFFIX
from wirecap.capture.writer import WriterStatistics
from wirecap.proxy.admin import PATHS, AdminServer
from wirecap.proxy.app import (
    ShutdownSignals,
    banner_text,
    bind_all,
    exit_summary,
    run_proxy,
    watch_signals,
)
from wirecap.proxy.config import AdminSettings
from wirecap.proxy.metrics import ProxyMetrics
from wirecap.proxy.server import ProxyServer, ProxyStatistics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

    from wirecap.proxy.config import ProxyConfig

logger = logging.getLogger("wirecap.proxy")

#: Seconds between two reports of a worker's statistics (and metrics, with ``--admin``).
REPORT_SECONDS: Final = 1.0
#: What the supervisor writes on a worker's control pipe.
FINISH: Final = b"g"
STOP_NOW: Final = b"s"
#: Exit status when a worker died before its last report.
EXIT_WORKER_DIED: Final = 1
#: The signals the supervisor acts on and the workers ignore.
SHUTDOWN_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})
#: Gauges whose sum over workers means nothing: the supervisor reports the largest.
LARGEST_OF: Final = frozenset({"wirecap_capture_enabled", "wirecap_capture_stopped"})


# -- the supervisor's side -------------------------------------------------------------------------


@dataclasses.dataclass(slots=True, eq=False)
class Worker:
    """One worker process, as its supervisor knows it from its reports."""

    pid: int
    report_fd: int  # the supervisor's end of the worker's report pipe
    control_fd: int  # the supervisor's end of the worker's control pipe
    listening: bool = False
    capture: str | None = None  # its first capture file
    stats: ProxyStatistics = dataclasses.field(default_factory=ProxyStatistics)
    writer: WriterStatistics | None = None
    metrics: list[Any] = dataclasses.field(default_factory=list)  # its registry, as JSON
    done: bool = False  # it sent its last report
    exit_status: int | None = None  # os.waitpid's status, once it has ended

    def take(self, report: dict[str, Any]) -> None:
        """Update from one report line."""
        if "listening" in report:
            self.listening = True
            self.capture = report.get("capture")
        if "stats" in report:
            self.stats = ProxyStatistics(**report["stats"])
            writer = report.get("writer")
            self.writer = None if writer is None else _writer_statistics(writer)
            self.metrics = report.get("metrics") or []
            self.done = bool(report.get("done"))

    def tell(self, command: bytes) -> None:
        """Write ``command`` on the control pipe, unless the worker has ended (the descriptor is
        closed then, and its number may be another file's)."""
        if self.control_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.control_fd, command)

    def death(self) -> str | None:
        """How the worker ended without its last report, or None."""
        if self.exit_status is None or self.done:
            return None
        code = os.waitstatus_to_exitcode(self.exit_status)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return f"worker {self.pid} died ({how})"


class Supervisor:
    """The first process of ``--workers``: what the admin listener reads (see
    :class:`~wirecap.proxy.admin.ProxyView`), and the end of the run."""

    def __init__(self, config: ProxyConfig, workers: list[Worker]) -> None:
        self.config = config
        self.workers = workers
        self.finishing = False
        self.port = config.listen_port  # the port bound (``--listen`` may ask for any)
        self.all_listening = trio.Event()  # every worker listens, or one ended first
        self.all_ended = trio.Event()

    # -- what the admin listener reads ------------------------------------------------------------

    def not_accepting(self) -> str | None:
        if self.finishing:
            return "the proxy is shutting down"
        missing = [w for w in self.workers if w.exit_status is not None or not w.listening]
        if missing:
            return f"{len(missing)} of {len(self.workers)} workers are not running"
        return None

    def capture_statistics(self) -> WriterStatistics | None:
        if not self.config.capture.enabled:
            return None
        return merged_writer_statistics(self._writer_of(w) for w in self.workers)

    def _writer_of(self, worker: Worker) -> WriterStatistics | None:
        """A worker's capture as it last reported it; for one that died, with every segment its
        writer left in the directory (their names carry the worker's pid)."""
        if worker.death() is None:
            return worker.writer
        pattern = f"*-{worker.pid}-*{SEGMENT_SUFFIX}"
        paths = tuple(sorted(self.config.capture.out.glob(pattern)))
        known = worker.writer or merged_writer_statistics([])
        return dataclasses.replace(known, path=paths[-1] if paths else None, paths=paths)

    # -- the run ----------------------------------------------------------------------------------

    def finish(self) -> None:
        """Tell every worker to finish its exchanges in flight and stop."""
        self.finishing = True
        for worker in self.workers:
            worker.tell(FINISH)

    def stop_now(self) -> None:
        self.finishing = True
        for worker in self.workers:
            worker.tell(STOP_NOW)

    async def follow(self, worker: Worker) -> None:
        """Read ``worker``'s reports until its pipe ends, then reap it."""
        pending = b""
        async with trio.lowlevel.FdStream(worker.report_fd) as reports:
            async for data in reports:
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    with contextlib.suppress(ValueError, TypeError):
                        worker.take(json.loads(line))
                self._update()
        _, worker.exit_status = await trio.to_thread.run_sync(os.waitpid, worker.pid, 0)
        os.close(worker.control_fd)
        worker.control_fd = -1
        death = worker.death()
        if death is not None:
            logger.error("%s", death)
            if not worker.listening:
                self.finish()  # a worker that cannot start: the proxy does not run short
        self._update()

    def _update(self) -> None:
        if all(w.listening or w.exit_status is not None for w in self.workers):
            self.all_listening.set()
        if all(w.exit_status is not None for w in self.workers):
            self.all_ended.set()

    def summary(self) -> tuple[str, int]:
        """The last line of the run, and its exit status."""
        stats = ProxyStatistics()
        for worker in self.workers:
            stats.exchanges += worker.stats.exchanges
            stats.answered_by_proxy += worker.stats.answered_by_proxy
        message, status = exit_summary(stats, self.capture_statistics())
        deaths = [d for d in (w.death() for w in self.workers) if d is not None]
        if deaths:
            message += "; " + "; ".join(deaths)
            status = status or EXIT_WORKER_DIED
        return message, status


def merged_writer_statistics(
    parts: Iterable[WriterStatistics | None],
) -> WriterStatistics:
    """The capture writers of all workers as one: counts added, the first failure, all files."""
    total = WriterStatistics(
        queued_bytes=0,
        records_written=0,
        frames_written=0,
        bytes_written=0,
        records_dropped=0,
        records_lost=0,
        failed=None,
        path=None,
        paths=(),
    )
    for part in parts:
        if part is None:
            continue
        total = dataclasses.replace(
            total,
            queued_bytes=total.queued_bytes + part.queued_bytes,
            records_written=total.records_written + part.records_written,
            frames_written=total.frames_written + part.frames_written,
            bytes_written=total.bytes_written + part.bytes_written,
            records_dropped=total.records_dropped + part.records_dropped,
            records_lost=total.records_lost + part.records_lost,
            failed=total.failed or part.failed,
            path=total.path or part.path,
            paths=total.paths + part.paths,
        )
    return total


def merged_metrics(snapshots: Iterable[list[Any]]) -> list[Metric]:
    """The workers' metric families as one registry's: each sample added up over the workers,
    except the ``_created`` times (the earliest) and the :data:`LARGEST_OF` gauges (the
    largest)."""
    families: dict[str, tuple[Metric, dict[tuple[Any, ...], list[Any]]]] = {}
    for snapshot in snapshots:
        for name, documentation, kind, unit, samples in snapshot:
            if name not in families:
                families[name] = (Metric(name, documentation, kind, unit), {})
            merged = families[name][1]
            for sample_name, labels, value in samples:
                key = (sample_name, *sorted(labels.items()))
                seen = merged.get(key)
                if seen is None:
                    merged[key] = [sample_name, labels, value]
                elif sample_name.endswith("_created"):
                    seen[2] = min(seen[2], value)
                elif name in LARGEST_OF:
                    seen[2] = max(seen[2], value)
                else:
                    seen[2] += value
    out = []
    for metric, merged in families.values():
        for sample_name, labels, value in merged.values():
            metric.add_sample(sample_name, labels, value)
        out.append(metric)
    return out


class _WorkersCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        workers = self.supervisor.workers
        yield GaugeMetricFamily(
            "wirecap_proxy_workers",
            "Worker processes running.",
            value=sum(w.exit_status is None for w in workers),
        )
        yield from merged_metrics(w.metrics for w in workers)


class WorkersMetrics:
    """``/metrics`` of ``--workers``: the sum of the workers' latest snapshots."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_WorkersCollector(supervisor))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


def run_workers(
    config: ProxyConfig,
    *,
    banner: TextIO,
    beside: Callable[[Path], Awaitable[object]] | None = None,
) -> tuple[str, int]:
    """Run ``config.workers`` proxy processes until a signal; returns the last line and the exit
    status. Raises OSError (or AdminListenError) when an address is taken, as :func:`run_proxy`
    does, before any worker starts."""
    server = ProxyServer(config)  # binds the proxy's sockets as a single proxy would
    supervisor = Supervisor(config, [])
    admin = None
    if config.admin.address is not None:
        admin = AdminServer(supervisor, config.admin, WorkersMetrics(supervisor))
    listeners = trio.run(bind_all, server, admin)
    supervisor.port = server.listen_port
    theirs = [listener.socket for listener in (admin.listeners if admin else [])]
    # A SIGINT/SIGTERM from now until the supervisor watches them waits (a Ctrl-C while workers
    # start is then a graceful stop like any other); each worker ignores them before it unblocks.
    signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
    try:
        for _ in range(config.workers):
            supervisor.workers.append(_start_worker(config, listeners, supervisor.workers, theirs))
        for listener in listeners:  # the workers accept: a connection must not wait here at the end
            os.close(listener.socket.detach())  # (a trio socket's close needs a trio run)
        trio.run(_supervise, supervisor, admin, banner, beside)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)
    return supervisor.summary()


async def _supervise(
    supervisor: Supervisor,
    admin: AdminServer | None,
    banner: TextIO,
    beside: Callable[[Path], Awaitable[object]] | None,
) -> None:
    config = supervisor.config
    async with trio.open_nursery() as nursery:
        policy = ShutdownSignals()
        await nursery.start(watch_signals, policy, supervisor.finish, supervisor.stop_now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)  # (blocked since the forks)
        for worker in supervisor.workers:
            nursery.start_soon(supervisor.follow, worker)
        await supervisor.all_listening.wait()
        if supervisor.not_accepting() is None:
            files = ", ".join(w.capture or "none" for w in supervisor.workers)
            workers = len(supervisor.workers)
            text = banner_text(config, config.listen_host, supervisor.port, files, workers=workers)
            print(text, file=banner, flush=True)
            if admin is not None:
                await nursery.start(admin.run)
                print(f"admin on {admin.url} ({', '.join(PATHS)})", file=banner, flush=True)
            if beside is not None and config.capture.enabled:
                nursery.start_soon(beside, config.capture.out)
        await supervisor.all_ended.wait()
        nursery.cancel_scope.cancel()


# -- the worker's side ----------------------------------------------------------------------------


def _start_worker(
    config: ProxyConfig, listeners: list[Any], siblings: list[Worker], admin_sockets: list[Any]
) -> Worker:
    """Fork one worker; returns the supervisor's view of it. The child never returns."""
    report_read, report_write = os.pipe()
    control_read, control_write = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    pid = os.fork()
    if pid:
        os.close(report_write)
        os.close(control_read)
        return Worker(pid=pid, report_fd=report_read, control_fd=control_write)
    status = 1
    try:
        for signum in SHUTDOWN_SIGNALS:  # the supervisor passes them on; a pending one is dropped
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)
        # Only this worker's own ends stay open: a sibling's pipes held here would keep the
        # supervisor from seeing that sibling end, and it from seeing the supervisor die.
        for fd in (report_read, control_write):
            os.close(fd)
        for sibling in siblings:
            os.close(sibling.report_fd)
            os.close(sibling.control_fd)
        for sock in admin_sockets:
            os.close(sock.detach())  # (a trio socket's close needs a trio run)
        status = _worker_main(config, listeners, report_write, control_read)
    except BaseException:  # a worker must never return into the supervisor's code
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def _worker_main(config: ProxyConfig, listeners: list[Any], report_fd: int, control_fd: int) -> int:
    """A worker's life: the proxy on the inherited sockets, stopped by its supervisor only."""
    with_metrics = config.admin.address is not None
    own = dataclasses.replace(config, admin=AdminSettings())  # the supervisor serves --admin
    trio.run(_serve_worker, own, listeners, report_fd, control_fd, with_metrics)
    return 0


async def _serve_worker(
    config: ProxyConfig,
    listeners: list[Any],
    report_fd: int,
    control_fd: int,
    with_metrics: bool,
) -> None:
    server = ProxyServer(config)
    server.adopt(listeners)
    if with_metrics:
        server.metrics = ProxyMetrics(server)
    async with trio.lowlevel.FdStream(report_fd) as reports:

        async def obey(server: ProxyServer, scope: trio.CancelScope) -> None:
            async with trio.lowlevel.FdStream(control_fd) as control:
                async for data in control:
                    if STOP_NOW in data:
                        scope.cancel()
                        return
                    server.shutdown()
            server.shutdown()  # the supervisor is gone: finish as after a Ctrl-C

        async with trio.open_nursery() as nursery:

            async def proxy(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                await run_proxy(config, server=server, control=obey, task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(proxy)
            capture = server.capture_statistics()
            path = None if capture is None or capture.path is None else str(capture.path)
            await _send(reports, {"listening": server.listen_port, "capture": path})
            nursery.start_soon(_report_every, reports, server)  # what is known if it dies
        await _send(reports, _state(server, done=True))


async def _report_every(reports: trio.lowlevel.FdStream, server: ProxyServer) -> None:
    while True:
        await trio.sleep(REPORT_SECONDS)
        await _send(reports, _state(server, done=False))


def _state(server: ProxyServer, *, done: bool) -> dict[str, Any]:
    capture = server.capture_statistics()
    state: dict[str, Any] = {
        "stats": dataclasses.asdict(server.stats),
        "writer": None if capture is None else _writer_json(capture),
        "done": done,
    }
    if server.metrics is not None:
        state["metrics"] = [
            [
                m.name,
                m.documentation,
                m.type,
                m.unit,
                [[s.name, s.labels, s.value] for s in m.samples],
            ]
            for m in server.metrics.registry.collect()
        ]
    return state


async def _send(reports: trio.lowlevel.FdStream, message: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await reports.send_all(json.dumps(message).encode() + b"\n")


def _writer_json(statistics: WriterStatistics) -> dict[str, Any]:
    out = dataclasses.asdict(statistics)
    out["path"] = None if statistics.path is None else str(statistics.path)
    out["paths"] = [str(p) for p in statistics.paths]
    return out


def _writer_statistics(data: dict[str, Any]) -> WriterStatistics:
    path = data.get("path")
    return WriterStatistics(
        **{
            **data,
            "path": None if path is None else Path(path),
            "paths": tuple(Path(p) for p in data.get("paths", ())),
        }
    )
