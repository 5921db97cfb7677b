"""``wirecap ship``: publish every closed frame of a capture directory to a JetStream stream.

The loop: list the segments, scan each unfinished one from its saved offset for closed frames
(:mod:`wirecap.fleet.source`), publish a batch of them and await every acknowledgement, then save
the new offset (an atomic rename beside the segments). Each frame is published as its bytes, with
headers that say where it came from, and ``Nats-Msg-Id`` = source/segment/offset: a frame published
again (a retry after a lost acknowledgement, a shipper killed before it saved its position) is
dropped by the stream's duplicate window. When NATS is away, publishing fails or times out; the
shipper waits (backing off up to :data:`MAX_BACKOFF`) and tries the same batch again, while the
local files keep everything. Each segment's header frame goes first, on a subject of its own,
where collectors fetch it to start their files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Final

from wirecap.fleet import require_nats
from wirecap.fleet.source import Frame, Position, SortKey, pending_segments, scan_segment

if TYPE_CHECKING:
    from pathlib import Path

    from wirecap.fleet.config import NatsSettings

logger = logging.getLogger("wirecap.fleet")

#: Seconds between looks at the directory once everything is shipped: frames close within 250 ms.
POLL_SECONDS: Final = 0.2
#: Seconds to wait for one acknowledgement before the batch is tried again.
ACK_TIMEOUT: Final = 5.0
#: First and largest wait before trying again after a failure, in seconds.
FIRST_BACKOFF: Final = 0.2
MAX_BACKOFF: Final = 5.0
#: Seconds a cancelled connection attempt gets to end before it is cancelled again.
CANCEL_AGAIN_AFTER: Final = 0.5
#: The stream's duplicate window, in seconds: a frame published twice within it is stored once.
#: An hour covers a shipper restart or an outage during which an acknowledgement was lost.
DUPLICATE_WINDOW: Final = 3600.0

HEADER_SOURCE: Final = "Wirecap-Source"
HEADER_SEGMENT: Final = "Wirecap-Segment"
HEADER_OFFSET: Final = "Wirecap-Offset"
HEADER_MSG_ID: Final = "Nats-Msg-Id"


def message_id(source: str, segment: str, offset: int) -> str:
    """The de-duplication id of a frame: one per (source, segment, offset)."""
    return f"{source}/{segment}/{offset}"


def frame_headers(source: str, frame: Frame) -> dict[str, str]:
    return {
        HEADER_SOURCE: source,
        HEADER_SEGMENT: frame.segment,
        HEADER_OFFSET: str(frame.offset),
        HEADER_MSG_ID: message_id(source, frame.segment, frame.offset),
    }


@dataclasses.dataclass(slots=True)
class ShipperStatistics:
    frames: int = 0  # acknowledged as new by the stream
    duplicates: int = 0  # acknowledged as already stored
    bytes: int = 0
    retries: int = 0


async def ensure_stream(js: Any, settings: NatsSettings) -> None:
    """Create the stream (file storage, the duplicate window) unless it exists."""
    nats = require_nats()
    try:
        await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            name=settings.stream,
            subjects=[f"{settings.subject}.>"],
            storage=nats.js.api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        )


class ConnectionLog:
    """The client's callbacks, as one log line each instead of its tracebacks; an error repeated
    while reconnecting is said once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._last_error = ""
        self.closing = False  # a disconnect from our own close is not news

    async def error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if text != self._last_error:
            self._last_error = text
            logger.warning("NATS at %s: %s", self.url, text)

    async def disconnected(self) -> None:
        if not self.closing:
            logger.warning("lost the connection to NATS at %s; reconnecting", self.url)

    async def reconnected(self) -> None:
        self._last_error = ""
        logger.warning("reconnected to NATS at %s", self.url)

    def callbacks(self) -> dict[str, Any]:
        return {
            "error_cb": self.error,
            "disconnected_cb": self.disconnected,
            "reconnected_cb": self.reconnected,
        }


async def connect(
    settings: NatsSettings, stop: asyncio.Event, log: ConnectionLog | None = None
) -> Any:
    """A connection to NATS, trying again with backoff until one is made (or ``stop`` is set:
    then None). The client reconnects by itself after that; ``log`` tells what happens."""
    nats = require_nats()
    backoff = FIRST_BACKOFF
    log = log or ConnectionLog(settings.url)
    while not stop.is_set():
        attempt = asyncio.ensure_future(
            nats.connect(**settings.connect_options(), **log.callbacks())
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not attempt.done():  # stopped while the client was still trying (e.g. refused auth)
            late = await _cancel(attempt)
            if late is not None:  # it connected as it was cancelled
                await late.close()
            return None
        try:
            return attempt.result()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            logger.warning("cannot reach NATS at %s (%s); trying again", settings.url, exc)
        await _sleep_or_stop(stop, backoff)
        backoff = min(MAX_BACKOFF, backoff * 2)
    return None


async def _cancel(task: asyncio.Future[Any]) -> Any:
    """Cancel ``task`` and wait until it has ended; its result if it finished with one anyway.
    The client's connect loop retries forever, and a cancellation that lands as one of its
    ``asyncio.wait_for`` finishes can be swallowed (Python before 3.12), so the task is cancelled
    again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_AFTER)
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Shipper:
    """Follows ``directory`` and publishes its closed frames as ``source``."""

    def __init__(
        self,
        directory: Path,
        settings: NatsSettings,
        source: str,
        *,
        poll_seconds: float = POLL_SECONDS,
        ack_timeout: float = ACK_TIMEOUT,
        window: int | None = None,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.source = source
        self.position = Position.load(Position.file_for(directory, source))
        self.statistics = ShipperStatistics()
        self._poll = poll_seconds
        self._ack_timeout = ack_timeout
        self._limits = {"max_frames": window} if window else {}
        self._known: dict[str, SortKey] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop`` is set: connect, make sure the stream exists, then follow."""
        nats = require_nats()
        log = ConnectionLog(self.settings.url)
        nc = await connect(self.settings, stop, log)
        if nc is None:
            return
        try:
            js = nc.jetstream(timeout=self._ack_timeout)
            backoff = FIRST_BACKOFF
            while not stop.is_set():
                try:
                    await ensure_stream(js, self.settings)
                    shipped = await self.ship_pending(js)
                    backoff = FIRST_BACKOFF
                except (TimeoutError, OSError, nats.errors.Error) as exc:
                    self.statistics.retries += 1
                    logger.warning("publishing failed (%s); trying again in %.1fs", exc, backoff)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    continue
                if not shipped:
                    await _sleep_or_stop(stop, self._poll)
        finally:
            log.closing = True
            await nc.close()

    async def ship_pending(self, js: Any) -> int:
        """Publish what is closed and not yet shipped, a batch per segment; returns the frames
        published. Raises on a failed or missing acknowledgement (the batch is tried again)."""
        shipped = 0
        for path, finished in list(pending_segments(self.directory, self.position, self._known)):
            start = self.position.offset(path.name)
            scan = await asyncio.to_thread(scan_segment, path, start, finished, **self._limits)
            for offset, end, reason in scan.damage:
                logger.warning("%s: bytes %d-%d skipped (%s)", path.name, offset, end, reason)
            if scan.frames:
                await self._publish(js, scan.frames)
                shipped += len(scan.frames)
            if scan.frames or scan.done or scan.next_offset != start:
                self.position.advance(path.name, scan.next_offset, scan.done)
                await asyncio.to_thread(self.position.save)
        return shipped

    async def _publish(self, js: Any, batch: list[Frame]) -> None:
        """Publish ``batch`` and await every acknowledgement (the header frame first, alone)."""
        if batch[0].offset == 0:
            head, batch = batch[0], batch[1:]
            subject = self.settings.head_subject(self.source, head.segment)
            self._count(
                await js.publish(subject, head.data, headers=frame_headers(self.source, head)), head
            )
        subject = self.settings.data_subject(self.source)
        acks = await asyncio.gather(
            *(
                js.publish(subject, frame.data, headers=frame_headers(self.source, frame))
                for frame in batch
            )
        )
        for ack, frame in zip(acks, batch, strict=True):
            self._count(ack, frame)

    def _count(self, ack: Any, frame: Frame) -> None:
        if ack.duplicate:
            self.statistics.duplicates += 1
        else:
            self.statistics.frames += 1
            self.statistics.bytes += len(frame.data)
