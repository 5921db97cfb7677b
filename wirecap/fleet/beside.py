"""``wirecap proxy --ship URL``: a shipper beside the proxy, in a process of its own.

The proxy never waits on the network: the shipper reads the capture directory the proxy writes and
publishes on its own; when it fails or NATS is away, traffic and capture go on, and the files hold
everything until it catches up (a later ``wirecap ship`` resumes from the saved position).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from functools import partial
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

logger = logging.getLogger("wirecap.fleet")


def ship_command(directory: Path, url: str, extra: Sequence[str] = ()) -> list[str]:
    """The command line of the shipper for ``directory``."""
    return [sys.executable, "-m", "wirecap", "ship", str(directory), "--to", url, *extra]


async def run_shipper_beside(command: Sequence[str]) -> None:
    """Run the shipper ``command`` until cancelled (the proxy stopped): trio then sends it SIGTERM
    (it saves its position and exits) and SIGKILL after 5 seconds. A shipper that exits on its own
    is logged; the proxy goes on."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, list(command), stdin=subprocess.DEVNULL, check=False)
        )
        await process.wait()
        if process.returncode:
            logger.warning("the shipper (--ship) stopped (exit status %s)", process.returncode)
