"""Running the inspector: on its own (``wirecap ui``), or beside a proxy (``wirecap proxy --ui``).

Beside a proxy, the inspector runs in a process of its own (``wirecap ui --child``), like the
capture writer: reading and analysing exchanges is Python work that would otherwise take the proxy's
event loop's time. The child says where it listens on its stdout, ignores Ctrl-C (the proxy decides
when to stop and then ends it) and exits when its stdin closes, so it never outlives the proxy.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from functools import partial
from typing import TYPE_CHECKING, Final, TextIO

import trio

from wirecap.ui.api import Api
from wirecap.ui.http import is_loopback, serve
from wirecap.ui.inspector import Inspector

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from wirecap.inspect.detectors import Thresholds

logger = logging.getLogger("wirecap.ui")

DEFAULT_LISTEN: Final = "127.0.0.1:5610"
#: How long ``proxy --ui`` waits for the inspector's process to say where it listens.
CHILD_START_TIMEOUT: Final = 60.0


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def run_ui(
    targets: Iterable[str | os.PathLike[str]],
    *,
    host: str = "127.0.0.1",
    port: int = 5610,
    token: str | None = None,
    thresholds: Thresholds | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the inspector over ``targets`` until cancelled; ``task_status`` gets its URL."""
    inspector = Inspector(targets, thresholds=thresholds)
    try:
        api = Api(inspector, token=token, loopback=is_loopback(host))
        async with trio.open_nursery() as nursery:
            bound_host, bound_port = await nursery.start(serve, api, host, port)
            await nursery.start(inspector.run)
            task_status.started(url_of(bound_host, bound_port))
    finally:
        inspector.close()


async def run_until_stdin_closes(**kwargs: object) -> None:
    """``wirecap ui --child``: :func:`run_ui`, the URL printed alone on stdout once listening,
    until the parent closes our stdin."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(run_ui, **kwargs))  # type: ignore[arg-type]
        print(url, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            while await stdin.receive_some(4096):
                pass
        nursery.cancel_scope.cancel()


async def run_beside_proxy(
    directory: Path, listen: str, banner: TextIO | None, *, token_set: bool = False
) -> None:
    """Run ``wirecap ui DIRECTORY --listen LISTEN --child`` until cancelled (the proxy stopped),
    saying on ``banner`` where it listens. An inspector that cannot start is logged; the proxy
    goes on."""
    command = [sys.executable, "-m", "wirecap", "ui", str(directory), "--listen", listen, "--child"]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        assert process.stdout is not None
        line = b""
        with trio.move_on_after(CHILD_START_TIMEOUT):
            while b"\n" not in line and (data := await process.stdout.receive_some(1024)):
                line += data
        url = line.decode("utf-8", "replace").strip()
        if not url:
            logger.warning("the inspector (--ui) did not start; the proxy goes on without it")
            nursery.cancel_scope.cancel()
            return
        if banner is not None:
            note = " (needs its token: open it once with ?token=...)" if token_set else ""
            print(f"inspector on {url}{note}", file=banner, flush=True)
        await process.wait()
        if process.returncode:
            logger.warning("the inspector (--ui) stopped (exit status %s)", process.returncode)
