from __future__ import annotations

import dataclasses
import io
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["pytester"]

# The row cache of inspect and stats goes to a directory of this run, not the user's home (the
# commands run in subprocesses too, which inherit it). Tests of the cache set their own.
os.environ["WIRECAP_CACHE_DIR"] = tempfile.mkdtemp(prefix="wirecap-test-cache-")

from upstream import Handler, ScriptedUpstream

from wirecap.capture import Capture, open_capture
from wirecap.capture.writer import CaptureWriter
from wirecap.proxy.app import make_redactor, make_writer
from wirecap.proxy.config import build_config
from wirecap.proxy.server import ProxyServer


@dataclasses.dataclass
class RunningProxy:
    server: ProxyServer
    writer: CaptureWriter | None
    port: int
    out: Path
    console: io.StringIO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.shutdown()
        await self.server.wait_stopped()
        if self.writer is not None:
            await self.writer.wait_finished()

    async def capture(self) -> Capture:
        """Stop the proxy (so the file gets its index) and open what it wrote."""
        await self.stop()
        return open_capture(self.out)


@pytest.fixture
async def start_upstream(nursery: trio.Nursery) -> Callable[..., Any]:
    async def start(handler: Handler, ssl_context: Any = None) -> ScriptedUpstream:
        upstream = ScriptedUpstream(handler, ssl_context)
        await nursery.start(upstream.run)
        return upstream

    return start


@pytest.fixture
async def start_proxy(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningProxy] = []
    counter = 0

    async def start(
        capture: bool = True, writer: CaptureWriter | None = None, **config_args: Any
    ) -> RunningProxy:
        nonlocal counter
        counter += 1
        out = tmp_path / f"captures{counter}"
        config_args.setdefault("listen", "127.0.0.1:0")
        config = build_config(out=out, capture=capture, **config_args)
        if writer is None and capture:
            writer = make_writer(config, make_redactor(config))
        console = io.StringIO()
        server = ProxyServer(config, writer, console=console)
        if writer is not None:
            await nursery.start(writer.run)
        _host, port = await nursery.start(server.run)
        proxy = RunningProxy(server, writer, port, out, console)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        with trio.move_on_after(10):
            await proxy.stop()
