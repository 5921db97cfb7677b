"""Running the shipper or the collector as a command: asyncio until SIGINT or SIGTERM.

nats-py runs on asyncio, so these commands run an asyncio loop of their own (in their own process:
``wirecap proxy --ship`` starts ``wirecap ship`` beside it, see beside.py). A signal asks for a clean
stop: the shipper saves its position, the collector closes its runs with their index.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on a new asyncio loop; SIGINT and SIGTERM set ``stop``."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    logging.basicConfig(
        level=logging.WARNING, format="wirecap: %(levelname)s: %(message)s", stream=sys.stderr
    )
    asyncio.run(wrapper())
