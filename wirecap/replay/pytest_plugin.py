"""pytest plugin: serve a capture to a test, or record one through the proxy (like VCR.py).

Registered through the ``pytest11`` entry point as ``wirecap``. A test asks for the ``wirecap_server``
fixture and points its client's base URL at ``wirecap_server.url``::

    @pytest.mark.wirecap("openai_chat_json.cbor.zst", upstream="https://api.openai.com/")
    def test_hello(wirecap_server):
        client = OpenAI(base_url=wirecap_server.url + "/v1", api_key="sk-test")
        ...

Record modes (``--wirecap-record``, default ``none`` so that CI never reaches the network):

- ``none``: serve the capture; a request that matches nothing fails the test with the closest
  recorded requests and what differs. A missing capture fails the test.
- ``once``: serve the capture if it exists, else record one through ``wirecap proxy`` to ``upstream``.
- ``new``: serve what is recorded; requests that match nothing go through the proxy to ``upstream`` and
  are recorded too (a new segment next to the old ones).
- ``all``: record everything again (appended: earlier recordings stay).
- ``rewrite``: delete the capture, then record.

Captures live in ``--wirecap-dir`` (ini ``wirecap_dir``, default ``fixtures`` under the rootdir). The
marker's first argument names the capture: a ``.cbor.zst`` file, or a directory of segments; without
it, the directory ``<module>/<test name>``. In mode ``none``, a name that is not there but is one of
the fixtures wirecap ships (``wirecap fixtures``) serves the shipped one. Marker options: ``upstream`` (needed to record),
``timing`` (``recorded``, the default; ``none``; ``x4``), ``match`` (e.g. ``"method,path"``),
``ignore`` (JSON paths of request bodies), ``sequence``, ``faults`` (a list of ``--fault`` specs
that the served capture answers with, e.g. ``faults=["429,retry-after=1,every=2"]``; not applied
while recording).
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from wirecap.capture import open_capture
from wirecap.capture.reader import append_capture
from wirecap.faults import FaultPlan, FaultSpecError, parse_faults
from wirecap.replay.catalog import MATCH_ON, Catalog, Miss
from wirecap.replay.normalize import parse_path
from wirecap.replay.runner import parse_pace
from wirecap.replay.serve import InThread, MockServer, load_catalog

if TYPE_CHECKING:
    from collections.abc import Iterator

MODES = ("none", "once", "new", "all", "rewrite")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wirecap", "wirecap captures")
    group.addoption(
        "--wirecap-record",
        choices=MODES,
        default=None,
        help="none (default): serve captures only; once, new, all, rewrite: record through the proxy.",
    )
    group.addoption(
        "--wirecap-dir",
        default=None,
        help="Directory of captures (default: fixtures/ under the rootdir).",
    )
    parser.addini("wirecap_record", "default record mode", default="none")
    parser.addini(
        "wirecap_dir", "directory of captures, relative to the rootdir", default="fixtures"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "wirecap(capture=None, *, upstream=None, timing='recorded', match=None, ignore=(), sequence=False, "
        "faults=()): "
        "the capture the wirecap_server fixture serves or records",
    )


@dataclasses.dataclass
class WirecapHandle:
    """What a test gets: the base URL to use, and what happened."""

    url: str
    mode: str
    capture: Path
    recording: bool
    misses: list[Miss] = dataclasses.field(default_factory=list, repr=False)
    reported: int = dataclasses.field(default=0, repr=False)  # misses already reported

    def miss_report(self) -> str:
        report = "\n".join(m.describe() for m in self.misses)
        return f"wirecap: {len(self.misses)} request(s) not in {self.capture}:\n{report}"


_HANDLE = pytest.StashKey[WirecapHandle]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A request the capture does not have is reported once, with the test's own result: a test
    that passed fails with the closest recorded requests; a test that failed (its client got the
    miss's 404) carries them in a ``wirecap`` section. Teardown then has nothing left to report."""
    report: pytest.TestReport = yield
    handle = item.stash.get(_HANDLE, None)
    if report.when != "call" or handle is None or len(handle.misses) <= handle.reported:
        return report
    handle.reported = len(handle.misses)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = handle.miss_report()
    elif report.failed:
        report.sections.append(("wirecap: requests not in the capture", handle.miss_report()))
    return report


def _settings(request: pytest.FixtureRequest) -> tuple[Path, str, dict[str, Any]]:
    config = request.config
    mode = config.getoption("--wirecap-record") or config.getini("wirecap_record") or "none"
    if mode not in MODES:
        raise pytest.UsageError(f"wirecap_record must be one of {', '.join(MODES)}")
    base = Path(config.getoption("--wirecap-dir") or config.rootpath / config.getini("wirecap_dir"))
    marker = request.node.get_closest_marker("wirecap")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    name = (marker.args[0] if marker and marker.args else None) or options.pop("capture", None)
    if name is None:
        module = Path(str(request.node.fspath)).stem
        name = f"{module}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}"
    path = base / name
    if mode == "none" and not _exists(path):
        path = _shipped(name) or path
    return path, mode, options


def _shipped(name: str) -> Path | None:
    """A fixture wirecap ships with this name (``wirecap fixtures`` lists them), if any: a test
    that names one runs without a capture directory of its own."""
    from wirecap.replay.demo import default_fixtures

    directory = default_fixtures()
    if directory is None or "/" in name or "\\" in name:
        return None
    candidate = directory / name
    return candidate if candidate.is_file() else None


def _exists(path: Path) -> bool:
    if path.is_dir():
        return any(path.glob("*.cbor.zst"))
    return path.is_file()


def _catalog(path: Path, options: dict[str, Any]) -> Catalog:
    match = options.get("match")
    fields = (
        [f.strip() for f in match.split(",")] if isinstance(match, str) else list(match or MATCH_ON)
    )
    ignore = [parse_path(p) for p in options.get("ignore", ())]
    with open_capture(path) as capture:
        return load_catalog(
            capture, match_on=fields, ignore=ignore, sequence=bool(options.get("sequence"))
        )


def _faults(options: dict[str, Any]) -> FaultPlan | None:
    """The marker's ``faults=[...]`` as a plan; a bad spec fails the test with its one-line error."""
    specs = options.get("faults") or ()
    if isinstance(specs, str):
        specs = [specs]
    try:
        return FaultPlan(parse_faults(list(specs))) if specs else None
    except FaultSpecError as exc:
        pytest.fail(f"wirecap: faults=[...]: {exc}", pytrace=False)


def _proxy_in_thread(upstream: str, out: Path) -> InThread:
    from wirecap.proxy.app import make_redactor, make_writer
    from wirecap.proxy.config import build_config
    from wirecap.proxy.server import ProxyServer

    config = build_config(listen="127.0.0.1:0", upstream=upstream, out=out)
    writer = make_writer(config, make_redactor(config))
    server = ProxyServer(config, writer, console=io.StringIO())

    async def serve(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            _host, port = await nursery.start(server.run)
            task_status.started(f"http://127.0.0.1:{port}")

    async def stop() -> None:
        server.shutdown()
        await server.wait_stopped()
        await writer.wait_finished()

    return InThread(serve, stop)


@pytest.fixture
def wirecap_server(request: pytest.FixtureRequest) -> Iterator[WirecapHandle]:
    """Serve (or record) this test's capture; ``.url`` is the base URL to send requests to."""
    path, mode, options = _settings(request)
    upstream = options.get("upstream")
    exists = _exists(path)
    record = (
        mode in ("all", "rewrite")
        or (mode == "once" and not exists)
        or (mode == "new" and not exists)
    )
    if mode == "none" and not exists:
        pytest.fail(
            f"wirecap: no capture at {path}; record one with --wirecap-record=once", pytrace=False
        )
    if (record or mode == "new") and not upstream:
        pytest.fail(
            f"wirecap: recording ({mode}) needs @pytest.mark.wirecap(..., upstream=URL)",
            pytrace=False,
        )
    timing = parse_pace(str(options.get("timing", "recorded")))

    if record:
        if mode == "rewrite" and exists:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        with _recording(path, str(upstream), append=mode == "all") as url:
            yield WirecapHandle(url=url, mode=mode, capture=path, recording=True)
        return

    catalog = _catalog(path, options)
    fallback_service = None
    fallback = None
    # A directory capture gets the new exchanges as a segment; a file capture has them appended.
    new_segments = path
    if mode == "new" and path.is_file():
        new_segments = Path(tempfile.mkdtemp(prefix="wirecap-new-"))
    if mode == "new":
        fallback_service = _proxy_in_thread(str(upstream), new_segments).start()
        fallback = _forwarder(fallback_service.url)
    server = MockServer(catalog, speed=timing, fallback=fallback, faults=_faults(options))
    from wirecap.replay.serve import serve_in_thread

    service = serve_in_thread(server).start()
    handle = WirecapHandle(
        url=service.url, mode=mode, capture=path, recording=False, misses=server.misses
    )
    request.node.stash[_HANDLE] = handle
    try:
        yield handle
    finally:
        service.stop()
        if fallback_service is not None:
            fallback_service.stop()
            if new_segments != path:
                _store_single(new_segments, path, append=True)
    if new_segments != path and new_segments.exists():
        shutil.rmtree(new_segments, ignore_errors=True)
    if len(handle.misses) > handle.reported:  # a miss after the test's call (in a teardown)
        pytest.fail(handle.miss_report(), pytrace=False)


class _recording:
    """Record through a proxy into ``path``: a directory gets a new segment; a ``.cbor.zst`` file is
    replaced (``rewrite``), created, or has the new exchanges appended (``all``)."""

    def __init__(self, path: Path, upstream: str, *, append: bool) -> None:
        self.path = path
        self.append = append
        self.single_file = path.name.endswith(".cbor.zst")
        self.out = Path(tempfile.mkdtemp(prefix="wirecap-rec-")) if self.single_file else path
        self.service = _proxy_in_thread(upstream, self.out)

    def __enter__(self) -> str:
        self.service.start()
        return self.service.url

    def __exit__(self, *exc: object) -> None:
        self.service.stop()
        if self.single_file:
            _store_single(self.out, self.path, append=self.append)


def _store_single(recorded: Path, path: Path, *, append: bool) -> None:
    """Move what was recorded in directory ``recorded`` into the capture file ``path``."""
    segments = sorted(recorded.glob("*.cbor.zst"))
    path.parent.mkdir(parents=True, exist_ok=True)
    for segment in segments:
        if append and path.is_file():
            append_capture(path, segment)
        else:
            shutil.move(str(segment), path)
    shutil.rmtree(recorded, ignore_errors=True)


def _forwarder(proxy_url: str) -> Any:
    """A serve fallback that sends misses through the recording proxy and answers with its reply."""
    from wirecap.proxy.config import parse_upstream
    from wirecap.replay.client import client_pool, prepare, send

    target = parse_upstream(proxy_url + "/")

    async def forward(
        method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        pool = client_pool(connect_timeout=10, idle_timeout=1, max_idle=1)
        prepared = prepare(method, path, headers, body, target)
        try:
            response = await send(pool, target, prepared, read_timeout=600)
        finally:
            await pool.aclose()
        from wirecap.llm import parse_head

        head = parse_head(response.head)
        return (
            response.status or 502,
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.headers],
            b"".join(c for _, c in response.chunks),
        )

    return forward
