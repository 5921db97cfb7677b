"""``wirecap serve`` with a capture beside it, from start to SIGINT or SIGTERM.

Spy mode (``--miss forward=URL --out DIR``) and ``--fault SPEC --out DIR`` both keep a capture
open while the mock serves. The capture starts first, so its first segment is known when the mock
listens; the first signal stops the mock taking requests (answers under way are cut, and whatever
records them records that); then the capture gets a grace period, shielded from cancellation, to
finish what is in flight and write its index.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from wirecap.replay.serve import MockServer


async def serve_with_capture(
    server: MockServer,
    run_capture: Callable[..., Awaitable[object]],
    close_capture: Callable[[], Awaitable[object]],
    *,
    grace: float,
    ready: Callable[[Path | None], object] | None = None,
) -> None:
    """Run the capture (``run_capture``, started like a nursery task that reports its first
    segment's path) and ``server`` until SIGINT or SIGTERM, then stop ``server`` and give
    ``close_capture()`` at most ``grace`` seconds. ``ready(path)`` is called once ``server``
    listens. ``server`` listens before the capture starts, so a taken address leaves no capture
    file; once started, the capture is closed however this ends."""
    await server.bind()  # a taken address fails before the capture writes a file
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(run_capture)
            try:
                async with trio.open_nursery() as front:
                    await front.start(server.run)
                    if ready is not None:
                        ready(path)
                    async for _signum in signals:
                        break
                    front.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(grace):
                    await close_capture()
                nursery.cancel_scope.cancel()
