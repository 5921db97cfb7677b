"""``wirecap collect``: consume the stream with a durable pull consumer and write central runs.

Each fetched batch is written to runs (:mod:`wirecap.fleet.central`), the runs it touched are
flushed to disk (fsync), and only then is each message acknowledged: a collector killed at any
point loses nothing it acknowledged, and what it wrote but did not acknowledge is delivered again
and recognised as held. Collectors that share the durable consumer share the work: each message
goes to one of them, each writes files of its own (in one directory, so each can see what the
others hold). Runs get their index when they close: when they fill up, after
:data:`IDLE_CLOSE` seconds without a frame, and when the collector stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Final

from wirecap.fleet import require_nats
from wirecap.fleet.central import RUN_MAX_BYTES, RunFile, held_by_runs, repair_orphans, run_name
from wirecap.fleet.shipper import (
    FIRST_BACKOFF,
    HEADER_OFFSET,
    HEADER_SEGMENT,
    HEADER_SOURCE,
    MAX_BACKOFF,
    ConnectionLog,
    _sleep_or_stop,
    connect,
    ensure_stream,
)

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.fleet.config import NatsSettings

logger = logging.getLogger("wirecap.fleet")

#: Messages fetched at a time: written, flushed to disk once, then acknowledged together.
BATCH: Final = 256
#: Seconds a fetch waits for messages before the collector looks after its idle runs.
FETCH_SECONDS: Final = 1.0
#: Seconds the stream waits for an acknowledgement before delivering a message again.
ACK_WAIT: Final = 30.0
#: Seconds without a new frame after which a run is closed (gets its index).
IDLE_CLOSE: Final = 30.0
#: Open runs at most; past it the one idle longest is closed.
MAX_OPEN_RUNS: Final = 256
#: Segment header frames remembered (one per source segment being collected).
MAX_HEADERS: Final = 4096


@dataclasses.dataclass(slots=True)
class CollectorStatistics:
    frames: int = 0  # written
    held: int = 0  # delivered again and already held: acknowledged without writing
    runs: int = 0  # files started
    bytes: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    """One fetched message, read: where its frame comes from, and whether it came before."""

    source: str
    segment: str
    offset: int
    data: bytes
    again: bool  # delivered more than once


def delivered(msg: Any) -> Delivered | None:
    """The frame a message carries, or None when its headers do not say where it is from."""
    headers = msg.headers or {}
    try:
        offset = int(headers[HEADER_OFFSET])
        source, segment = headers[HEADER_SOURCE], headers[HEADER_SEGMENT]
    except (KeyError, ValueError):
        return None
    if offset < 0 or not source or not segment or "/" in segment:
        return None
    return Delivered(source, segment, offset, bytes(msg.data), msg.metadata.num_delivered > 1)


class Runs:
    """The open runs of one collector, by (source, segment, source offset they continue at)."""

    def __init__(self, out: Path, name: str, statistics: CollectorStatistics) -> None:
        self.out = out
        self.name = name
        self.statistics = statistics
        self._open: dict[tuple[str, str, int], tuple[RunFile, float]] = {}

    def store(self, frame: Delivered, header: bytes, now: float) -> RunFile | None:
        """Write ``frame`` unless it is held already; returns the run written to (None: held)."""
        key = (frame.source, frame.segment, frame.offset)
        found = self._open.pop(key, None)
        if found is not None and frame.again and self._held(frame):
            self._open[key] = found
            return None
        if found is None:
            if self._held(frame):
                return None
            run = RunFile(
                self.out,
                run_name(frame.source, frame.segment, frame.offset, self.name),
                header,
                frame.offset,
            )
            self.statistics.runs += 1
        else:
            run = found[0]
        run.append(frame.offset, frame.data)
        self.statistics.frames += 1
        self.statistics.bytes += len(frame.data)
        if run.offset >= RUN_MAX_BYTES:
            run.sync()
            run.close()
        else:
            self._open[(frame.source, frame.segment, run.end)] = (run, now)
        return run

    def _held(self, frame: Delivered) -> bool:
        if held_by_runs(self.out, frame.source, frame.segment, frame.offset, frame.data):
            self.statistics.held += 1
            return True
        return False

    def close_idle(self, now: float, idle: float) -> None:
        """Close runs without a frame for ``idle`` seconds, and the oldest past the bound."""
        by_age = sorted(self._open.items(), key=lambda item: item[1][1])
        excess = len(by_age) - MAX_OPEN_RUNS
        for i, (key, (run, used)) in enumerate(by_age):
            if i < excess or now - used >= idle:
                del self._open[key]
                run.close()

    def close_all(self) -> None:
        for run, _used in self._open.values():
            run.close()
        self._open.clear()


def default_name() -> str:
    """A collector's name unless told: host and process id (file names say who wrote them)."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}".replace("~", "-")


class Collector:
    """Consumes ``settings``' stream into ``out``."""

    def __init__(
        self,
        settings: NatsSettings,
        out: Path,
        *,
        durable: str,
        name: str | None = None,
        batch: int = BATCH,
        ack_wait: float = ACK_WAIT,
        idle_close: float = IDLE_CLOSE,
    ) -> None:
        self.settings = settings
        self.out = out
        self.durable = durable
        self.statistics = CollectorStatistics()
        self.runs = Runs(out, name or default_name(), self.statistics)
        self._batch = batch
        self._ack_wait = ack_wait
        self._idle_close = idle_close
        self._headers: dict[tuple[str, str], bytes] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Collect until ``stop`` is set; then close every run (index and footer)."""
        nats = require_nats()
        self.out.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(repair_orphans, self.out)
        log = ConnectionLog(self.settings.url)
        nc = await connect(self.settings, stop, log)
        if nc is None:
            return
        try:
            js = nc.jetstream()
            backoff = FIRST_BACKOFF
            sub: Any = None
            while not stop.is_set():
                try:
                    if sub is None:
                        sub = await self._subscribe(js)
                    await self._collect_once(js, sub)
                    backoff = FIRST_BACKOFF
                except (TimeoutError, OSError, nats.errors.Error) as exc:
                    logger.warning("collecting failed (%s); trying again in %.1fs", exc, backoff)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
        finally:
            await asyncio.to_thread(self.runs.close_all)
            log.closing = True
            await nc.close()

    async def _subscribe(self, js: Any) -> Any:
        nats = require_nats()
        await ensure_stream(js, self.settings)
        config = nats.js.api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_ack_pending=16 * self._batch,
            filter_subject=self.settings.data_subjects,
        )
        return await js.pull_subscribe(
            self.settings.data_subjects,
            durable=self.durable,
            stream=self.settings.stream,
            config=config,
        )

    async def _collect_once(self, js: Any, sub: Any) -> None:
        """Fetch one batch, write it, flush it, acknowledge it; close idle runs."""
        nats = require_nats()
        loop = asyncio.get_running_loop()
        try:
            msgs = await sub.fetch(self._batch, timeout=FETCH_SECONDS)
        except nats.errors.TimeoutError:
            msgs = []
        frames = [(msg, delivered(msg)) for msg in msgs]
        for msg, frame in frames:
            if frame is None:
                logger.warning("message on %s is not a shipped frame; dropped", msg.subject)
                await msg.term()
        wanted = [(msg, frame) for msg, frame in frames if frame is not None]
        headers = {
            (f.source, f.segment): await self._header(js, f.source, f.segment) for _m, f in wanted
        }
        await asyncio.to_thread(self._write, [f for _m, f in wanted], headers, loop.time())
        for msg, _frame in wanted:
            await msg.ack()
        await asyncio.to_thread(self.runs.close_idle, loop.time(), self._idle_close)

    def _write(
        self, frames: list[Delivered], headers: dict[tuple[str, str], bytes], now: float
    ) -> None:
        touched: dict[int, RunFile] = {}
        for frame in frames:
            run = self.runs.store(frame, headers[(frame.source, frame.segment)], now)
            if run is not None:
                touched[id(run)] = run
        for run in touched.values():
            run.sync()

    async def _header(self, js: Any, source: str, segment: str) -> bytes:
        """The header frame of ``source``'s ``segment``, from the stream (remembered)."""
        key = (source, segment)
        found = self._headers.get(key)
        if found is None:
            msg = await js.get_last_msg(
                self.settings.stream, self.settings.head_subject(source, segment)
            )
            found = self._headers[key] = bytes(msg.data)
            if len(self._headers) > MAX_HEADERS:
                del self._headers[next(iter(self._headers))]
        return found
