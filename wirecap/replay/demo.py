"""``wirecap demo``: the whole loop on one machine with no network.

Serve the fixtures (mock backend), put a recording proxy in front of it, send the fixtures' requests
through the proxy, then print the inspect table and the detected issues of what the proxy captured.
Everything binds 127.0.0.1 on free ports and is removed afterwards.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import trio

import wirecap
from wirecap.capture import open_capture
from wirecap.inspect.detectors import Thresholds, detect_all
from wirecap.inspect.select import analyzed_exchanges
from wirecap.inspect.views import findings_lines, table_lines
from wirecap.inspect.words import plural
from wirecap.proxy.app import make_redactor, make_writer
from wirecap.proxy.config import build_config, parse_upstream
from wirecap.proxy.server import ProxyServer
from wirecap.replay.client import build_request, client_pool, send
from wirecap.replay.serve import MockServer, load_catalog

if TYPE_CHECKING:
    from collections.abc import Callable


class DemoError(Exception):
    """The demo cannot run (no fixtures)."""


def default_fixtures() -> Path | None:
    """The fixtures wirecap ships: ``wirecap/fixtures/`` inside an installed package, else the
    repository's ``fixtures/`` next to the source tree; None when neither has any."""
    package = Path(wirecap.__file__).resolve().parent
    for directory in (package / "fixtures", package.parent / "fixtures"):
        if any(directory.glob("*.cbor.zst")):
            return directory
    return None


def run_demo(fixtures: Path | None, *, echo: Callable[[str], object] = print) -> None:
    directory = fixtures or default_fixtures()
    files = sorted(directory.glob("*.cbor.zst")) if directory is not None else []
    if not files:
        where = f"in {directory}" if directory is not None else "shipped with this wirecap"
        raise DemoError(f"no fixtures {where}: pass --fixtures DIR")
    workdir = Path(tempfile.mkdtemp(prefix="wirecap-demo-"))
    try:
        trio.run(_demo, files, workdir, echo)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _demo(files: list[Path], workdir: Path, echo: Callable[[str], object]) -> None:
    with open_capture(*files) as fixtures:
        catalog = load_catalog(fixtures, match_on=("method", "path", "query", "body"))
        exchanges = [
            e
            for e in fixtures.exchanges()
            if e.complete and e.request is not None and e.status != 101  # HTTP only: no sessions
        ]
    mock = MockServer(catalog, speed=4.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.run)
        echo(
            f"1. wirecap serve: {plural(len(catalog.entries), 'recorded answer')} from "
            f"{plural(len(files), 'fixture')} on {mock.url}"
        )
        config = build_config(
            listen="127.0.0.1:0", upstream=mock.url + "/", out=workdir / "captures"
        )
        writer = make_writer(config, make_redactor(config))
        proxy = ProxyServer(config, writer, console=io.StringIO())
        await nursery.start(writer.run)
        _host, port = await nursery.start(proxy.run)
        echo(
            f"2. wirecap proxy on http://127.0.0.1:{port} -> {mock.url}, capturing to a temporary directory"
        )
        target = parse_upstream(f"http://127.0.0.1:{port}/")
        pool = client_pool(connect_timeout=5, idle_timeout=30, max_idle=4)
        sent = 0
        for exchange in exchanges:
            request = build_request(exchange, target, via_proxy=True)
            if request is None:
                continue
            await send(pool, target, request, read_timeout=30)
            sent += 1
        await pool.aclose()
        echo(
            f"3. sent {plural(sent, 'request')} through the proxy (streams keep their recorded timing, 4x faster)"
        )
        proxy.shutdown()
        await proxy.wait_stopped()
        await writer.wait_finished()
        nursery.cancel_scope.cancel()
    echo("4. wirecap inspect:")
    with open_capture(workdir / "captures") as capture:
        for line in table_lines(a.row() for a in analyzed_exchanges(capture, progress=False)):
            echo("   " + line)
        echo("5. wirecap inspect --detect-issues:")
        findings = list(detect_all(analyzed_exchanges(capture, progress=False), Thresholds()))
        for line in findings_lines(findings):
            echo("   " + line)
    echo("done; the demo's capture and servers are gone. Try: wirecap proxy --upstream URL")
