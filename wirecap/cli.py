"""The ``wirecap`` command line. Argument handling and output only; the work lives in the packages."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
import trio

from wirecap import __version__
from wirecap.capture import Capture, CaptureError, FileDamage, open_capture, repair_index
from wirecap.capture.reader import segment_paths
from wirecap.capture.redact import Redactor, Rules
from wirecap.faults import FaultPlan, FaultSpec, FaultSpecError, parse_faults
from wirecap.faults.spec import KINDS
from wirecap.fleet import FleetError
from wirecap.fleet.beside import run_shipper_beside
from wirecap.fleet.beside import ship_command as shipper_command_line
from wirecap.fleet.commands import collect, make_collector, make_shipper, ship
from wirecap.inspect.analysis import analyze_exchange
from wirecap.inspect.detectors import (
    SEVERITY_RANK,
    DuplicateTracker,
    Thresholds,
    detect,
)
from wirecap.inspect.follow import analyzed_as_they_end, follow_lines
from wirecap.inspect.paint import Paint, plain
from wirecap.inspect.rows import Row, row_findings, selected_rows, with_findings
from wirecap.inspect.select import (
    FilterError,
    Filters,
    UnknownId,
    analyzed_exchanges,
    parse_time,
    resolve_id,
)
from wirecap.inspect.stats import compute as compute_stats
from wirecap.inspect.stats import table_lines as stats_table
from wirecap.inspect.views import TABLE_HEADER, detail_lines, findings_lines, table_lines
from wirecap.inspect.words import plural
from wirecap.interop.curl import write_curl
from wirecap.interop.export import open_private, open_private_bytes, write_har, write_jsonl
from wirecap.interop.imports import FORMATS as IMPORT_FORMATS
from wirecap.interop.imports import ImportFailed, import_files
from wirecap.interop.imports import report_lines as import_report_lines
from wirecap.interop.parquet import ParquetUnavailable, write_parquet
from wirecap.interop.parquet import schema as parquet_schema
from wirecap.interop.vcr import CassetteError, write_vcr, yaml_module
from wirecap.proxy.admin import AdminListenError
from wirecap.proxy.app import exit_summary, run_proxy
from wirecap.proxy.config import (
    DEFAULT_REDACT_BODY,
    DEFAULT_REDACT_HEADERS,
    LOG_FORMATS,
    MAX_LEVEL,
    MAX_WORKERS,
    MIN_LEVEL,
    ON_FULL_POLICIES,
    ConfigError,
    build_config,
    load_toml,
    parse_listen,
    parse_upstream,
)
from wirecap.proxy.workers import run_workers
from wirecap.replay.compare import MODES, parse_ignores
from wirecap.replay.demo import DemoError, default_fixtures, run_demo
from wirecap.replay.fault_capture import FaultRecorder, fault_writer, serve_recording
from wirecap.replay.normalize import PathError
from wirecap.replay.runner import (
    ReplayOptions,
    TargetUnreachable,
    json_report,
    junit_xml,
    parse_pace,
    replay,
    text_lines,
)
from wirecap.replay.serve import MockServer, Served, load_catalog, served_lines
from wirecap.replay.spy import SpyForwarder, parse_miss, serve_with_spy
from wirecap.ui.app import DEFAULT_LISTEN as DEFAULT_UI_LISTEN
from wirecap.ui.app import run_beside_proxy, run_ui, run_until_stdin_closes
from wirecap.ui.http import is_loopback

#: The environment variable that gives the inspector (wirecap ui, proxy --ui) its token.
UI_TOKEN_VARIABLE = "WIRECAP_UI_TOKEN"

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

    from wirecap.capture.writer import RecordWriter


#: An option's or argument's value that must name a file that exists.
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)

#: How each role of :mod:`wirecap.inspect.paint` looks on a terminal.
_STYLES: dict[str, dict[str, Any]] = {
    "status-1xx": {"fg": "cyan"},
    "status-2xx": {"fg": "green"},
    "status-3xx": {"fg": "cyan"},
    "status-4xx": {"fg": "yellow"},
    "status-5xx": {"fg": "red", "bold": True},
    "status-none": {"fg": "red"},
    "error": {"fg": "red", "bold": True},
    "warning": {"fg": "yellow"},
    "info": {"fg": "blue"},
    "pass": {"fg": "green", "bold": True},
    "fail": {"fg": "red", "bold": True},
    "muted": {"dim": True},
}


def _ansi(text: str, role: str) -> str:
    return click.style(text, **_STYLES.get(role, {}))


def _painter(err: bool = False) -> Paint:
    """Colour on a terminal; none when piped or with ``NO_COLOR`` set (``FORCE_COLOR`` colours a
    pipe too). https://no-color.org"""
    if os.environ.get("NO_COLOR"):
        return plain
    if os.environ.get("FORCE_COLOR"):
        return _ansi
    stream = sys.stderr if err else sys.stdout
    return _ansi if stream.isatty() else plain


def _echo(lines: Iterable[str], paint: Paint) -> None:
    """Print ``lines``, keeping their colour when ``paint`` added it (click strips it on a pipe),
    a few hundred lines per write: a table of 100,000 exchanges is one of the things printed."""
    colour = paint is not plain
    lines = iter(lines)
    while batch := list(itertools.islice(lines, 256)):
        click.echo("\n".join(batch), color=colour or None)


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """``1048576``, ``512KiB``, ``256MiB``, ``1G``: a size in bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size (e.g. 256MiB)", param, ctx)
        number, unit = float(match.group(1)), match.group(2).lower()
        return int(number * 1024 ** "_kmgt".index(unit or "_"))


class ConfigProblem(click.ClickException):
    """A configuration mistake: a usage error (exit 2), told in one line without the usage text."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wirecap")
def main() -> None:
    """Capture LLM API traffic at the wire, byte for byte, and replay it.

    Point an SDK's base URL at `wirecap proxy`: it forwards every request untouched and records
    both directions in compressed capture files. The other commands read those files (a file, or
    a directory of segments): what happened, what went wrong, did a backend change, and a mock
    backend that answers from them. `wirecap COMMAND --help` says more about each.

    \b
    Examples:
      wirecap demo                                   # the whole loop offline
      wirecap proxy                                  # then base_url=http://127.0.0.1:5601/openai/v1
      wirecap inspect captures/ --last 20
      wirecap inspect captures/ --detect-issues
      wirecap ui                                     # a web page over ./captures, live
      wirecap serve "$(wirecap fixtures)"           # the fixtures wirecap ships, as a mock
    """


def _parse_faults(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    try:
        return parse_faults(value)
    except FaultSpecError as exc:
        raise click.BadParameter(str(exc)) from None


def _fault_kinds() -> str:
    """Each fault kind with the keys it takes and their defaults: ``stall (ms=6000,
    after-events=1)``; a key without a default shows what it takes."""
    named = []
    for name, kind in KINDS.items():
        keys = ", ".join(f"{k}={'N' if v is None else v}" for k, v in kind.params.items())
        named.append(f"{name} ({keys})" if keys else name)
    return ", ".join(named)


_fault_option = click.option(
    "--fault",
    "fault",
    multiple=True,
    metavar="KIND[,key=value...]",
    callback=_parse_faults,
    help="Inject a fault into the requests its selectors pick (every=N, after=N, rate=R with "
    f"seed=S, route=PREFIX, model=GLOB); repeatable. Kinds and their keys: {_fault_kinds()}.",
)


@main.command("proxy", short_help="Run the recording reverse proxy.")
@click.option(
    "--config",
    "config_path",
    type=EXISTING_FILE,
    help="TOML config file; each flag below is also a key there (dashes as underscores), and flags override it.",
)
@click.option(
    "--listen", metavar="HOST:PORT", help="Address to listen on [default: 127.0.0.1:5601]."
)
@click.option("--upstream", metavar="URL", help="Forward everything (route '/') to this base URL.")
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    metavar="N",
    help="Proxy processes sharing the listening socket, each with its own capture files; more "
    "than one uses more cores when one is not enough [default: 1].",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="[METHOD] PREFIX=URL",
    help="Add a route ([[route]] in the config); repeatable. The longest matching prefix wins.",
)
@click.option(
    "--upstream-ca",
    type=EXISTING_FILE,
    help="Extra CA bundle to trust for HTTPS upstreams.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help="Line per exchange as text, as JSON, or none [default: text].",
)
@click.option("--quiet", "-q", is_flag=True, help="No line per exchange (--log-format quiet).")
@click.option(
    "--max-head",
    type=ByteSize(),
    help="Largest request or response head; larger gets 431 [default: 64KiB].",
)
@click.option(
    "--capture/--no-capture",
    default=None,
    help="Capture, or proxy only and write nothing [default: capture].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Directory for capture files [default: ./captures].",
)
@click.option(
    "--on-full",
    type=click.Choice(ON_FULL_POLICIES),
    help="When the capture channel is full: wait (lose nothing) or drop records (never slow traffic) [default: block].",
)
@click.option(
    "--redact/--no-redact",
    default=None,
    help="Redact credentials, or store them too (the capture header says so) [default: redact].",
)
@click.option(
    "--redact-headers",
    multiple=True,
    metavar="NAME",
    help="Another header to redact; repeatable.",
)
@click.option(
    "--redact-body",
    multiple=True,
    metavar="REGEX",
    help="Another pattern to redact in bodies, heads and targets; repeatable.",
)
@click.option(
    "--rotate-bytes",
    type=ByteSize(),
    help="Start a new segment after this many bytes [default: 256MiB].",
)
@click.option(
    "--rotate-seconds",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Start a new segment after this many seconds [default: 3600].",
)
@click.option(
    "--compression-level",
    type=click.IntRange(MIN_LEVEL, MAX_LEVEL),
    metavar="LEVEL",
    help="zstd level of large capture frames [default: 1].",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds to connect to an upstream [default: 10].",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Longest upstream silence, in seconds, before 504 [default: 600].",
)
@click.option(
    "--write-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Longest a send to the client or the upstream may block, in seconds [default: 60].",
)
@click.option(
    "--head-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds a client has to send a complete request head before 408 [default: 30].",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Longest silence, in seconds, from a client in the middle of a request body before 408 [default: 30].",
)
@click.option(
    "--keepalive-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds an idle client connection is kept between requests [default: 120].",
)
@click.option(
    "--pool-idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds an idle upstream connection is kept in the pool [default: 60].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds exchanges in flight get to finish on SIGINT/SIGTERM [default: 5].",
)
@click.option(
    "--admin",
    metavar="HOST:PORT",
    help="Serve /healthz, /readyz and Prometheus /metrics here (e.g. 127.0.0.1:5603; serve listens on 5602) [default: off].",
)
@click.option(
    "--admin-token",
    envvar="WIRECAP_ADMIN_TOKEN",
    metavar="TOKEN",
    help="Admin requests must carry 'Authorization: Bearer TOKEN'; required off loopback [env: WIRECAP_ADMIN_TOKEN].",
)
@click.option(
    "--ready-min-free-disk",
    metavar="SIZE|PCT%",
    help="/readyz fails when the capture disk has less free space [default: 1GiB].",
)
@click.option(
    "--ui",
    "ui_listen",
    is_flag=False,
    flag_value=DEFAULT_UI_LISTEN,
    default=None,
    metavar="[HOST:PORT]",
    help=f"Also serve the web inspector on the capture directory [default: {DEFAULT_UI_LISTEN}].",
)
@_fault_option
@click.option(
    "--ship",
    "ship_url",
    metavar="URL",
    help="Also run 'wirecap ship' on the capture directory to this NATS URL; the [ship] table of --config applies.",
)
def proxy_command(
    config_path: Path | None,
    quiet: bool,
    ui_listen: str | None,
    ship_url: str | None,
    **settings: Any,
) -> None:
    """Run the recording reverse proxy.

    With no arguments it listens on 127.0.0.1:5601 with the routes /openai/, /anthropic/, /ollama/
    and /openrouter/ and writes to ./captures; its banner prints the base URL to give each SDK.
    Every option is also a key of the TOML config file (dashes as underscores). Ctrl-C or SIGTERM
    lets exchanges in flight finish (--shutdown-timeout) and closes the capture with its index; a
    second Ctrl-C stops at once.

    With --ui the web inspector (wirecap ui) runs beside it, in its own process, on the capture
    directory; the banner says where.

    Exit status: 0 after a clean stop; 3 when capture stopped, or lost or dropped records, during
    the run (the last line says how many); 1 or 2 when it cannot start.

    \b
    Examples:
      wirecap proxy
      wirecap proxy --ui                             # and the inspector on 127.0.0.1:5610
      wirecap proxy --upstream http://127.0.0.1:8000/ --out /var/captures
      wirecap proxy --route /openai=https://api.openai.com/ --config wirecap.toml
      wirecap proxy --fault 503,rate=0.1,seed=1      # one request in ten gets a 503
    """
    # Every other option is a setting that build_config takes by the same name.
    if quiet:
        settings["log_format"] = "quiet"
    try:
        doc = load_toml(config_path) if config_path else None
        ship_table = doc.pop("ship", None) if doc is not None else None  # the shipper's settings
        config = build_config(doc=doc, **settings)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    beside = _ship_beside(ship_url, ship_table, config_path, config.capture.enabled)
    if ui_listen is not None:
        if not config.capture.enabled:
            raise click.UsageError("--ui shows what the proxy captures: it needs capture on")
        _ui_address(ui_listen, os.environ.get(UI_TOKEN_VARIABLE), "--ui")
        ui_beside = functools.partial(
            run_beside_proxy,
            listen=ui_listen,
            banner=sys.stderr,
            token_set=bool(os.environ.get(UI_TOKEN_VARIABLE)),
        )
        beside = ui_beside if beside is None else _both(ui_beside, beside)
    logging.basicConfig(
        level=logging.WARNING, format="wirecap: %(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        if config.workers > 1:
            message, status = run_workers(config, banner=sys.stderr, beside=beside)
        else:
            server = trio.run(lambda: run_proxy(config, banner=sys.stderr, beside=beside))
            message, status = exit_summary(server.stats, server.capture_statistics())
    except AdminListenError as exc:
        raise click.ClickException(
            f"cannot listen on {exc.address} (--admin): {exc.strerror}"
        ) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror or exc}"
        ) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    click.echo(message, err=True)
    if status:
        sys.exit(status)


def _ship_beside(
    url: str | None, table: Any, config_path: Path | None, capturing: bool
) -> Callable[[Path], Awaitable[None]] | None:
    """What runs the shipper beside the proxy (--ship, or 'to' in [ship]), or None."""
    if url is None and not (isinstance(table, dict) and table.get("to")):
        return None
    if not capturing:
        raise click.UsageError("--ship ships what the proxy captures: it needs capture on")
    extra = ["--config", str(config_path)] if config_path is not None else []
    to = url or str(table["to"])

    async def run(directory: Path) -> None:
        await run_shipper_beside(shipper_command_line(directory, to, extra))

    return run


def _both(
    first: Callable[[Path], Awaitable[None]], second: Callable[[Path], Awaitable[None]]
) -> Callable[[Path], Awaitable[None]]:
    async def run(directory: Path) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first, directory)
            nursery.start_soon(second, directory)

    return run


def _time_option(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except FilterError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _filter_options(fn: Any) -> Any:
    options = [
        click.option(
            "--route", metavar="PREFIX", help="Only exchanges of this route (e.g. /openai)."
        ),
        click.option(
            "--status",
            metavar="SPEC",
            help="Only these statuses: 200, 4xx, >=500, !=200, or a comma list.",
        ),
        click.option(
            "--model",
            metavar="GLOB",
            help="Only this model (glob or substring, requested or returned).",
        ),
        click.option(
            "--since",
            metavar="TIME",
            help="Only exchanges that started at or after TIME (ISO 8601, UTC unless a zone is "
            "given, or 30m / 2h / 1d ago).",
        ),
        click.option(
            "--until", metavar="TIME", help="Only exchanges that started at or before TIME."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _stream_threshold_options(fn: Any) -> Any:
    """--slow-ttft and --stall: the detector thresholds of inspect and ui."""
    options = [
        click.option(
            "--slow-ttft",
            type=click.FloatRange(min=0),
            default=10.0,
            show_default=True,
            metavar="SECONDS",
            help="A time to first token above this is a slow-ttft finding.",
        ),
        click.option(
            "--stall",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            metavar="SECONDS",
            help="A gap between two response chunks above this is a stream-stall finding.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _count_options(fn: Any) -> Any:
    """``--last N`` and ``--limit N``: inspect, stats and export."""
    fn = click.option(
        "--limit",
        type=click.IntRange(min=1),
        metavar="N",
        help="Only the first N matching exchanges.",
    )(fn)
    return click.option(
        "--last",
        type=click.IntRange(min=1),
        metavar="N",
        help="Only the last N matching exchanges (the most recent).",
    )(fn)


def _filters(
    route: str | None, status: str | None, model: str | None, since: str | None, until: str | None
) -> Filters:
    try:
        return Filters(
            route=route,
            status=status,
            model=model,
            since_ns=_time_option(since, "--since"),
            until_ns=_time_option(until, "--until"),
        )
    except FilterError as exc:
        raise click.BadParameter(str(exc), param_hint="'--status'") from None


def _check_counts(last: int | None, limit: int | None) -> None:
    if last is not None and limit is not None:
        raise click.UsageError("--last and --limit do not go together: choose one")


def _none_match() -> None:
    click.echo("0 exchanges match", err=True)


def _counted(rows: Iterable[Row], seen: list[int]) -> Iterator[Row]:
    for row in rows:
        seen[0] += 1
        yield row


@main.command("inspect", short_help="List exchanges, show one in full, or find what went wrong.")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines: one object per exchange (or per finding)."
)
@click.option(
    "--id",
    "exchange_id",
    metavar="ID",
    help="Show one exchange in full; any unique start of its id will do.",
)
@click.option(
    "--raw",
    type=click.Choice(["request", "response", "upstream"]),
    help="With --id: the exact stored bytes of one side, to stdout.",
)
@click.option("--full", is_flag=True, help="With --id: every chunk of the timeline, not a summary.")
@_filter_options
@_count_options
@click.option("--detect-issues", is_flag=True, help="Run every detector and list what went wrong.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep running: print each exchange as it ends, like tail -f (Ctrl-C stops).",
)
@click.option(
    "--fail-on",
    type=click.Choice(["info", "warning", "error"]),
    default="error",
    show_default=True,
    help="With --detect-issues: exit 1 when a finding of this severity or above fires.",
)
@_stream_threshold_options
@click.option(
    "--duplicate-window",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Identical requests this close together count towards a duplicate-request finding.",
)
@click.option(
    "--duplicate-count",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    metavar="N",
    help="Identical requests within the window that make a duplicate-request finding.",
)
def inspect_command(
    captures: tuple[Path, ...],
    as_json: bool,
    exchange_id: str | None,
    raw: str | None,
    full: bool,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
    last: int | None,
    limit: int | None,
    detect_issues: bool,
    follow: bool,
    fail_on: str,
    slow_ttft: float,
    stall: float,
    duplicate_window: float,
    duplicate_count: int,
) -> None:
    """Show what a capture holds: a table of exchanges (time, id, method, status, model, duration,
    TTFT, tokens, bytes, outcome, path), one exchange in full with --id (heads, bodies, the answer
    reassembled, the chunk timeline), or with --detect-issues what went wrong, grouped by severity.
    CAPTURES are capture files or directories of segments, read as one capture. With --follow it
    keeps running while a proxy writes and prints each exchange as it ends (with --detect-issues,
    its findings below it; --last N first prints the last N already there; --limit N stops after
    N); Ctrl-C ends it.

    \b
    Examples:
      wirecap inspect captures/ --last 20
      wirecap inspect captures/ --follow --detect-issues
      wirecap inspect captures/ --status '>=400' --model 'gpt-4o*' --since 2h
      wirecap inspect captures/ --id a1b2 --full
      wirecap inspect captures/ --id a1b2 --raw response > response.bin
      wirecap inspect captures/ --detect-issues --fail-on warning
    """
    if raw and not exchange_id:
        raise click.UsageError("--raw needs --id")
    if full and not exchange_id:
        raise click.UsageError("--full needs --id")
    if follow and exchange_id:
        raise click.UsageError("--follow prints exchanges as they end; it does not go with --id")
    filters = _filters(route, status, model, since, until)
    _check_counts(last, limit)
    thresholds = Thresholds(
        slow_ttft_s=slow_ttft,
        stall_s=stall,
        duplicate_window_s=duplicate_window,
        duplicate_count=duplicate_count,
    )
    paint = _painter()
    if follow:
        checks = thresholds if detect_issues else None
        worst = _follow(captures, filters, last, limit, checks, as_json, paint)
        if detect_issues and worst >= SEVERITY_RANK[fail_on]:
            raise SystemExit(1)
        return
    worst = -1
    try:
        with open_capture(*captures) as capture:
            if exchange_id:
                _show_exchange(capture, exchange_id, raw, as_json, full, paint)
            else:
                asked = thresholds if detect_issues else None
                rows = selected_rows(capture, filters, thresholds=asked, last=last, limit=limit)
                if detect_issues:
                    worst = _show_issues(rows, thresholds, as_json, paint)
                else:
                    _show_table(rows, as_json, paint)
            for damage in capture.damage:
                click.echo(f"wirecap: damaged: {damage}", err=True)
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    if detect_issues and worst >= SEVERITY_RANK[fail_on]:
        raise SystemExit(1)


def _follow(
    captures: tuple[Path, ...],
    filters: Filters,
    last: int | None,
    limit: int | None,
    thresholds: Thresholds | None,
    as_json: bool,
    paint: Paint,
) -> int:
    """``inspect --follow``: each exchange as it ends until Ctrl-C (or ``limit`` of them); with
    ``thresholds``, its findings below it. Returns the worst severity's rank (-1: none)."""

    def damaged(damage: FileDamage) -> None:
        click.echo(f"wirecap: damaged: {damage}", err=True)

    worst = -1
    duplicates = DuplicateTracker(thresholds) if thresholds is not None else None
    try:
        if not as_json:
            _echo([TABLE_HEADER], paint)
            sys.stdout.flush()
        found = analyzed_as_they_end(captures, filters, last=last, on_damage=damaged)
        for a in itertools.islice(found, limit):
            findings = detect(a, thresholds) if thresholds is not None else []
            dup = duplicates.observe(a) if duplicates is not None else None
            findings += [dup] if dup is not None else []
            worst = max([worst, *(SEVERITY_RANK[f.severity] for f in findings)])
            lines = follow_lines(
                a, findings, as_json=as_json, with_findings=thresholds is not None, paint=paint
            )
            _echo(lines, paint)
            sys.stdout.flush()
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends
    except BrokenPipeError:  # the reader went away (| head): end quietly, without a flush error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return worst


def _show_table(rows: Iterator[Row], as_json: bool, paint: Paint) -> None:
    first = next(rows, None)
    if first is None:
        _none_match()
        return
    fields = (row.fields for row in itertools.chain([first], rows))
    if as_json:
        _echo((json.dumps(f, separators=(",", ":")) for f in fields), plain)
    else:
        _echo(table_lines(fields, paint), paint)


def _show_issues(rows: Iterator[Row], thresholds: Thresholds, as_json: bool, paint: Paint) -> int:
    """Print the findings; returns the worst severity's rank (-1: none)."""
    seen = [0]
    findings = list(row_findings(_counted(rows, seen), thresholds))
    if not seen[0]:
        _none_match()
        return -1
    if as_json:
        _echo((json.dumps(f.to_json()) for f in findings), plain)
    else:
        _echo(findings_lines(findings, paint), paint)
    return max((SEVERITY_RANK[f.severity] for f in findings), default=-1)


def _show_exchange(
    capture: Capture, prefix: str, raw: str | None, as_json: bool, full: bool, paint: Paint
) -> None:
    try:
        exchange_id = resolve_id(capture, prefix)
    except UnknownId as exc:
        raise click.BadParameter(str(exc), param_hint="'--id'") from None
    exchange = capture.get(exchange_id)
    if exchange is None:
        raise click.BadParameter(f"no exchange {prefix!r} in the capture", param_hint="'--id'")
    out = sys.stdout.buffer
    if raw is not None:
        pieces = {
            "request": exchange.iter_request_bytes,
            "response": exchange.iter_response_bytes,
            "upstream": exchange.iter_upstream_request_bytes,
        }[raw]()
        for piece in pieces:  # written as each frame is decompressed: constant memory
            out.write(piece)
    elif as_json:
        write_jsonl([analyze_exchange(exchange)], sys.stdout)
    else:
        _echo(detail_lines(analyze_exchange(exchange), full=full, paint=paint), paint)
    sys.stdout.flush()


@main.command("stats", short_help="Requests, errors, tokens and latency per route and model.")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per route and model.")
@_filter_options
@_count_options
def stats_command(
    captures: tuple[Path, ...],
    as_json: bool,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
    last: int | None,
    limit: int | None,
) -> None:
    """Sum up a capture per route and model: requests, error rate, input and output tokens, TTFT and
    duration percentiles (p50/p95/p99) and bytes each way, over the exchanges the filters pick.

    \b
    Examples:
      wirecap stats captures/
      wirecap stats captures/ --route /openai --since 1d --json
    """
    filters = _filters(route, status, model, since, until)
    _check_counts(last, limit)
    try:
        with open_capture(*captures) as capture:
            rows = selected_rows(capture, filters, last=last, limit=limit)
            groups = compute_stats(row.fields for row in rows)
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    if not groups:
        _none_match()
        return
    _echo((json.dumps(g.to_json()) for g in groups) if as_json else stats_table(groups), plain)


@main.command(
    "export", short_help="Write exchanges as HAR, JSON Lines, a VCR cassette, curl or Parquet."
)
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["har", "jsonl", "vcr", "curl", "parquet"]),
    required=True,
    help="HAR 1.2, JSON Lines, a VCR.py cassette (YAML), a bash script of curl commands, or "
    "Parquet (one row of facts and finding codes per exchange, no bodies).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="File to write, mode 0600 like the capture ('-' for stdout).",
)
@click.option(
    "--max-body",
    type=ByteSize(),
    metavar="SIZE",
    help="Leave out bodies (and answers) larger than this, saying so in the entry (e.g. 16MiB).",
)
@_filter_options
@_count_options
def export_command(
    captures: tuple[Path, ...],
    fmt: str,
    output: Path,
    max_body: int | None,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
    last: int | None,
    limit: int | None,
) -> None:
    """Export exchanges as HAR 1.2 (opens in browser devtools and HAR viewers, with timings and the
    chunk timeline), as JSON Lines (the inspect row, heads, bodies and LLM facts per exchange), as
    a VCR.py cassette (vcrpy and pytest-recording play it back; needs PyYAML, the vcr extra) or as
    a bash script of curl commands (one per exchange; redacted secrets stay redacted), or as
    Parquet for DuckDB, Spark or ClickHouse (one row per exchange: time, route, method, path,
    status, outcome, model, tokens, TTFT, duration, bytes and the codes of its findings; needs
    pyarrow, the parquet extra). The file holds what the capture holds, so it is written with mode
    0600.

    \b
    Examples:
      wirecap export captures/ --format har -o capture.har
      wirecap export captures/ --format har --max-body 16MiB -o small.har
      wirecap export captures/ --format jsonl -o - --status 5xx | jq .path
      wirecap export captures/ --format vcr -o tests/cassettes/chat.yaml
      wirecap export captures/ --format curl --last 1 -o again.sh
      wirecap export captures/ --format parquet -o exchanges.parquet
    """
    _not_an_input(output, captures)
    if fmt == "parquet":
        _export_parquet(captures, output, _filters(route, status, model, since, until), last, limit)
        return
    if max_body is not None and fmt in ("vcr", "curl"):
        raise click.UsageError(f"--max-body applies to har and jsonl, not to {fmt}")
    filters = _filters(route, status, model, since, until)
    _check_counts(last, limit)
    left_out = 0
    try:
        if fmt == "vcr":
            yaml_module("writing")  # before the output file is made
        with open_capture(*captures) as capture, _output(output) as out:
            analyzed = analyzed_exchanges(capture, filters, last=last, limit=limit)
            if fmt == "vcr":
                count, left_out = write_vcr(analyzed, out)
            elif fmt == "curl":
                count = write_curl(analyzed, out)
            else:
                write = write_har if fmt == "har" else write_jsonl
                count = write(analyzed, out, max_body=max_body)
    except (CaptureError, CassetteError) as exc:
        raise click.ClickException(str(exc)) from None
    if left_out:
        click.echo(
            f"{plural(left_out, 'exchange')} left out: no response, or a WebSocket session "
            "(a cassette holds neither)",
            err=True,
        )
    if not count and not left_out:
        _none_match()
    elif str(output) != "-":
        click.echo(f"{plural(count, 'exchange')} written to {output}", err=True)


def _not_an_input(output: Path, captures: tuple[Path, ...]) -> None:
    """Refuse an output file that is one of the capture files read (it would be emptied first)."""
    if str(output) == "-" or not output.exists():
        return
    try:
        inputs = [p for c in captures for p in segment_paths(c)]
    except CaptureError:
        return  # reported when the capture is opened
    if any(os.path.samefile(output, p) for p in inputs):
        raise click.BadParameter(f"{output} is a capture file being read", param_hint="'--output'")


def _export_parquet(
    captures: tuple[Path, ...], output: Path, filters: Filters, last: int | None, limit: int | None
) -> None:
    """``export --format parquet``: the rows, with the codes of their findings at the default
    thresholds, through the row cache."""
    if str(output) == "-":
        raise click.UsageError("--format parquet writes a file; give -o FILE")
    _check_counts(last, limit)
    try:
        parquet_schema()  # pyarrow is there, before the output file is made
    except ParquetUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    thresholds = Thresholds()
    try:
        with open_capture(*captures) as capture, _binary_output(output) as out:
            rows = selected_rows(capture, filters, thresholds=thresholds, last=last, limit=limit)
            found = with_findings(rows, thresholds)
            count = write_parquet(((row.fields, [f.code for f in fs]) for row, fs in found), out)
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{plural(count, 'exchange')} written to {output}", err=True)


def _binary_output(path: Path) -> IO[bytes]:
    try:
        return open_private_bytes(path)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {path}: {exc.strerror or exc}", param_hint="'--output'"
        ) from None


def _output(path: Path) -> IO[str]:
    """Where an export goes: stdout for ``-``, else a new 0600 file."""
    if str(path) == "-":
        return click.open_file("-", "w")  # stdout, left open
    return _output_file(path, "--output")


def _speed(value: str, option: str) -> float | None:
    try:
        return parse_pace(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _headers(values: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"bad header {value!r}: expected 'Name: value'", param_hint="'--header'"
            )
        out.append((name.strip(), content.strip()))
    return out


def _ignores(paths: tuple[str, ...]) -> list[list[str | int | None]]:
    try:
        return parse_ignores(paths)
    except PathError as exc:
        raise click.BadParameter(str(exc), param_hint="'--ignore'") from None


@main.command("replay", short_help="Send recorded requests to a target and compare the answers.")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--target", required=True, metavar="URL", help="Base URL to send the recorded requests to."
)
@click.option(
    "--via-proxy",
    is_flag=True,
    help="Use the path the client gave the proxy (X-Proxy-Path), for a wirecap proxy target.",
)
@click.option(
    "--compare",
    "mode",
    type=click.Choice(list(MODES)),
    default="json",
    show_default=True,
    help="exact bytes, JSON data without volatile fields, schema (shape only), or status.",
)
@click.option(
    "--ignore",
    multiple=True,
    metavar="JSONPATH",
    help="Also ignore this path in JSON comparisons (e.g. $.usage); repeatable.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Add or replace a request header (credentials were redacted at capture time); repeatable.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Requests in flight at once.",
)
@click.option(
    "--pace",
    default="none",
    show_default=True,
    metavar="recorded|none|xN",
    help="Keep the recorded gaps between requests (xN: N times faster).",
)
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write a JUnit XML report here (mode 0600: failures carry bodies).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of text.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Capture the replay's own traffic into this directory.",
)
@click.option(
    "--target-ca",
    type=EXISTING_FILE,
    metavar="FILE",
    help="Extra CA bundle to trust for an HTTPS target.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait for each answer.",
)
@_filter_options
def replay_command(
    captures: tuple[Path, ...],
    target: str,
    via_proxy: bool,
    mode: str,
    ignore: tuple[str, ...],
    headers: tuple[str, ...],
    concurrency: int,
    pace: str,
    junit: Path | None,
    as_json: bool,
    out: Path | None,
    target_ca: Path | None,
    timeout: float,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Send each recorded request to a target (any backend, or a wirecap proxy with --via-proxy) and
    compare its answer with the recorded one: PASS or FAIL per exchange, with the first difference
    and a diff. Exit 1 on any failure, 2 when the target is unreachable.

    \b
    Examples:
      wirecap replay fixtures/ --target http://127.0.0.1:5602/
      wirecap replay captures/ --target http://127.0.0.1:8000/ --compare schema --junit out.xml
      wirecap replay captures/ --target https://api.openai.com/ --header "Authorization: Bearer $KEY"
    """
    try:
        base = parse_upstream(target)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from None
    options = ReplayOptions(
        target=base,
        mode=mode,  # type: ignore[arg-type]
        ignore=_ignores(ignore),
        concurrency=concurrency,
        pace=_speed(pace, "--pace"),
        via_proxy=via_proxy,
        headers=_headers(headers),
        read_timeout=timeout,
        ca_file=target_ca,
    )
    filters = _filters(route, status, model, since, until)
    try:
        with open_capture(*captures) as capture:
            results = trio.run(lambda: replay(capture, options, filters, out=out))
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    except TargetUnreachable as exc:
        click.echo(f"Error: target unreachable: {exc}", err=True)
        raise SystemExit(2) from None
    if junit is not None:
        with _output_file(junit, "--junit") as report:
            report.write(junit_xml(results))
    if as_json:
        click.echo(json_report(results))
    else:
        paint = _painter()
        _echo(text_lines(results, paint), paint)
    if any(not r.verdict.passed for r in results):
        raise SystemExit(1)


@main.command("serve", short_help="A mock backend that answers from captures.")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--listen",
    default="127.0.0.1:5602",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on.",
)
@click.option(
    "--timing",
    default="recorded",
    show_default=True,
    metavar="recorded|none|xN",
    help="Stream answers with the recorded chunk timing (xN: N times faster).",
)
@click.option(
    "--match",
    "match_on",
    default="method,path,query,body",
    show_default=True,
    metavar="FIELDS",
    help="What a request must share with a recording (comma list of method, path, query, body).",
)
@click.option(
    "--ignore",
    multiple=True,
    metavar="JSONPATH",
    help="Ignore this path of request bodies when matching; repeatable.",
)
@click.option(
    "--sequence",
    is_flag=True,
    help="Also match the request that came before (agent loops repeat requests).",
)
@click.option(
    "--miss-status",
    type=click.IntRange(400, 599),
    default=404,
    show_default=True,
    metavar="STATUS",
    help="Status for requests that match nothing (400 to 599).",
)
@_fault_option
@click.option(
    "--miss",
    default="error",
    show_default=True,
    metavar="error|forward=TARGET",
    help="What a request that matches nothing gets: the error answer, or (spy mode) forwarded, "
    "its answer relayed as it streams and recorded into --out. forward=URL sends the path as "
    "received; forward=PREFIX=URL takes a route prefix off; forward=presets uses the proxy's "
    "built-in routes.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="A capture directory that records every answer given under --fault (with what was "
    "injected) and, in spy mode, every forwarded exchange. Plain hits (copies of CAPTURES) are "
    "not recorded. Needs --fault or --miss forward=URL.",
)
@click.option("-q", "--quiet", is_flag=True, help="No line per request.")
def serve_command(
    captures: tuple[Path, ...],
    listen: str,
    timing: str,
    match_on: str,
    ignore: tuple[str, ...],
    sequence: bool,
    miss_status: int,
    fault: tuple[FaultSpec, ...],
    miss: str,
    out: Path | None,
    quiet: bool,
) -> None:
    """Answer requests from captures, as a mock backend: a request that matches a recorded one (method,
    path, query and body, JSON compared as data) gets the recorded answer with its chunk timing; one
    that matches nothing gets a 404 naming the closest recorded requests. Each request prints a
    line: time, method, path, the recording that answered (or miss) and the status.

    \b
    Examples:
      wirecap serve fixtures/
      wirecap serve "$(wirecap fixtures)" --timing none     # the fixtures wirecap ships
      wirecap serve captures/ --match method,path --listen 127.0.0.1:8000
      wirecap serve fixtures/ --fault 429,retry-after=1,every=2   # every 2nd request: a 429
      wirecap serve captures/ --miss forward=presets --out new/   # spy mode
      wirecap serve fixtures/ --fault disconnect --out faulted/   # record what was injected
    """
    spy = _spy_forwarder(miss, out, faulted=bool(fault))
    try:
        host, port = parse_listen(listen)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--listen'") from None
    speed = _speed(timing, "--timing")
    fields = [f.strip() for f in match_on.split(",") if f.strip()]
    try:
        with open_capture(*captures) as capture:
            catalog = load_catalog(
                capture, match_on=fields, ignore=_ignores(ignore), sequence=sequence
            )
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--match'") from None
    paint = _painter()

    def log(served: Served) -> None:
        _echo(served_lines(served, paint), paint)
        sys.stdout.flush()

    server = MockServer(
        catalog,
        host=host,
        port=port,
        speed=speed,
        miss_status=miss_status,
        on_answer=None if quiet else log,
        faults=FaultPlan(fault) if fault else None,
    )

    answers = plural(len(catalog.entries), "recorded answer")
    if catalog.sessions:
        answers += f" and {plural(len(catalog.sessions.sessions), 'WebSocket session')}"

    if out is not None and fault:  # into the spy's capture, or a writer of its own
        server.recorder = FaultRecorder(spy.writer if spy else _fault_writer(out, listen))

    try:
        status = trio.run(_serve, server, spy, answers)
    except BaseException as exc:  # trio's nursery may wrap a Ctrl-C or a bind error in a group
        cause = _only_cause(exc)
        if isinstance(cause, KeyboardInterrupt):
            raise SystemExit(130) from None
        if isinstance(cause, OSError):
            raise click.ClickException(
                f"cannot listen on {listen}: {cause.strerror or cause}"
            ) from None
        raise
    if status:
        raise SystemExit(status)


async def _serve(server: MockServer, spy: SpyForwarder | None, answers: str) -> int:
    """Run ``wirecap serve`` (spy mode, recording injected faults, or neither) until it stops;
    the exit status (not 0 when the capture of injected faults is incomplete)."""
    if spy is not None:
        ready = functools.partial(_recording_banner, server, f"{answers}; misses forwarded and")
        await serve_with_spy(server, spy, ready=ready)
        click.echo(f"wirecap serve: {plural(spy.forwarded, 'request')} forwarded", err=True)
    elif server.recorder is not None:
        ready = functools.partial(_recording_banner, server, f"{answers}; injected faults")
        await serve_recording(server, server.recorder, ready=ready)
    else:
        return await _serve_until_signal(server, answers)
    if server.recorder is None:
        return 0
    line, status = server.recorder.summary()
    click.echo(line, err=True)
    return status


async def _serve_until_signal(server: MockServer, answers: str) -> int:
    """Serve until SIGINT (exit status 130, as a Ctrl-C) or SIGTERM (0). The signals are caught
    whatever their disposition was: a shell starts background jobs with SIGINT ignored."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            click.echo(f"wirecap serve on {server.url}: {answers}", err=True)
            async for signum in signals:
                nursery.cancel_scope.cancel()
                return 130 if signum == signal.SIGINT else 0
    return 0


def _spy_forwarder(miss: str, out: Path | None, *, faulted: bool) -> SpyForwarder | None:
    """The recording forwarder ``--miss forward=URL --out DIR`` asks for (None for ``error``).
    ``--out`` with neither ``--fault`` nor ``forward`` would record nothing: a usage error."""
    try:
        url = parse_miss(miss)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--miss'") from None
    if url is None:
        if out is not None and not faulted:
            raise click.BadParameter(
                "records injected faults and forwarded misses: needs --fault SPEC or "
                "--miss forward=URL",
                param_hint="'--out'",
            )
        return None
    if out is None:
        raise click.BadParameter("forward=URL needs --out DIR", param_hint="'--miss'")
    try:
        return SpyForwarder(url, out)
    except (ConfigError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--out'") from None


def _recording_banner(server: MockServer, what: str, path: Path | None) -> None:
    """serve's first line when it records (spy mode, injected faults): what, and where to."""
    click.echo(f"wirecap serve on {server.url}: {what} recorded to {path}", err=True)


def _fault_writer(out: Path, listen: str) -> RecordWriter:
    """The capture writer of ``serve --fault SPEC --out DIR`` (DIR created now)."""
    try:
        return fault_writer(out, listen)
    except (ConfigError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--out'") from None


def _ui_address(listen: str, token: str | None, option: str) -> tuple[str, int]:
    """The inspector's address; one reachable from other machines needs a token."""
    try:
        host, port = parse_listen(listen)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None
    if not is_loopback(host) and not token:
        raise click.UsageError(
            f"{option} {listen} can be reached from other machines: give a token "
            f"(--token or {UI_TOKEN_VARIABLE}) that every request must carry"
        )
    return host, port


@main.command("ui", short_help="A web page over captures, live while a proxy writes.")
@click.argument("captures", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--listen",
    default=DEFAULT_UI_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address of the page; one other machines can reach needs --token.",
)
@click.option(
    "--token",
    envvar=UI_TOKEN_VARIABLE,
    metavar="TOKEN",
    help=f"Every request must carry it: open /?token=TOKEN once, or send Bearer [env: {UI_TOKEN_VARIABLE}].",
)
@_stream_threshold_options
@click.option("--child", is_flag=True, hidden=True, help="Run for wirecap proxy --ui.")
def ui_command(
    captures: tuple[Path, ...],
    listen: str,
    token: str | None,
    slow_ttft: float,
    stall: float,
    child: bool,
) -> None:
    """Serve a web page that lists the exchanges of CAPTURES (files or directories of segments;
    default ./captures) with their model, status, TTFT, duration, tokens and findings; sorts and
    filters them like inspect, searches prompts and answers, and opens one in full: heads, the
    conversation, the answer, a timeline of its chunks, its findings, its raw bytes, and
    downloads (raw, HAR, its own capture file) with curl and wirecap replay command lines. While
    a proxy writes into a directory, new exchanges appear as they come and streams grow. /metrics
    serves tokens, TTFT and findings by model and code for Prometheus.

    \b
    Examples:
      wirecap ui                                     # ./captures on http://127.0.0.1:5610/
      wirecap ui "$(wirecap fixtures)" --listen 127.0.0.1:8080
      WIRECAP_UI_TOKEN=s3cret wirecap ui captures/ --listen 0.0.0.0:5610
    """
    targets = captures or (Path("captures"),)
    for target in targets:
        if not target.exists():
            raise click.BadParameter(f"no such capture: {target}", param_hint="'CAPTURES'")
    host, port = _ui_address(listen, token, "--listen")
    thresholds = Thresholds(slow_ttft_s=slow_ttft, stall_s=stall)
    options: dict[str, Any] = {"host": host, "port": port, "token": token}

    async def run() -> None:
        if child:
            await run_until_stdin_closes(targets=targets, thresholds=thresholds, **options)
            return
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(run_ui, targets, thresholds=thresholds, **options)
            )
            shown = ", ".join(str(t) for t in targets)
            click.echo(f"wirecap ui on {url}: {shown} (Ctrl-C stops)", err=True)

    if child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy stops it when it is done
    try:
        trio.run(run)
    except BaseException as exc:
        cause = _only_cause(exc)
        if isinstance(cause, KeyboardInterrupt):
            raise SystemExit(130) from None
        if isinstance(cause, OSError):
            raise click.ClickException(
                f"cannot listen on {listen}: {cause.strerror or cause}"
            ) from None
        if isinstance(cause, CaptureError):
            raise click.ClickException(str(cause)) from None
        raise


def _only_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (trio's nurseries wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@main.command("demo", short_help="The whole loop offline, on the fixtures wirecap ships.")
@click.option(
    "--fixtures",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="Fixture directory [default: the fixtures wirecap ships].",
)
def demo_command(fixtures: Path | None) -> None:
    """Run the whole loop on this machine with no network: serve the fixtures as a mock backend,
    put a recording proxy in front of it, send the fixtures' requests through the proxy, then print
    the inspect table and the detected issues of what it captured. Nothing is left behind.

    \b
    Example:
      wirecap demo
    """
    try:
        run_demo(fixtures, echo=click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("fixtures", short_help="Print where the fixtures wirecap ships are.")
def fixtures_command() -> None:
    """Print the directory of the small captures wirecap ships (OpenAI, Anthropic and Ollama calls,
    streamed and not, a tool call, a 429, a truncated stream), to serve, replay or inspect them. The
    pytest plugin finds them by name when your own capture directory does not have them.

    \b
    Examples:
      wirecap inspect "$(wirecap fixtures)"
      wirecap serve "$(wirecap fixtures)"
    """
    directory = default_fixtures()
    if directory is None:
        raise click.ClickException("this installation of wirecap has no fixtures")
    click.echo(str(directory))


@main.command("import", short_help="Make a capture of HAR files, VCR cassettes, mitmproxy flows.")
@click.argument("files", nargs=-1, required=True, type=EXISTING_FILE)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    metavar="DIR",
    help="Capture directory to write the new segment into (made if missing).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(IMPORT_FORMATS),
    help="Read every FILE as this format instead of telling it by content.",
)
@click.option(
    "--redact/--no-redact",
    default=True,
    show_default=True,
    help="Replace credential headers and API keys as the proxy does.",
)
def import_command(files: tuple[Path, ...], out: Path, fmt: str | None, redact: bool) -> None:
    """Import HAR 1.2 files (browser devtools, mitmproxy), VCR cassettes (VCR.py, pytest-recording;
    YAML or JSON) and mitmproxy flow files into a capture that every wirecap command reads. Each
    exchange carries a note saying where it came from and what the source did not hold (raw heads,
    chunk timing). Skipped entries are counted with the reason.

    \b
    Examples:
      wirecap import session.har -o captures/
      wirecap import tests/cassettes/*.yaml -o captures/ --format vcr
      wirecap import flows.mitm -o captures/
    """
    redactor = (
        Redactor(Rules.compile(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_BODY)) if redact else None
    )
    try:
        report = import_files(list(files), out, fmt, redactor)
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    _echo(import_report_lines(report, out), plain)
    if not report.written:
        raise SystemExit(1)  # nothing to read: a script's next step should not go on


@main.command("index", short_help="Rebuild the index of capture files left without one.")
@click.argument("targets", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def index_command(targets: tuple[Path, ...]) -> None:
    """Give capture files left without an index (after a crash) their index and footer, so that
    readers seek instead of scanning. TARGETS are files or directories of segments; a file that has
    its index is left as it is, and a damaged tail is moved aside to FILE.tail first.

    \b
    Examples:
      wirecap index captures/
      wirecap index captures/capture-20261123T120000Z-4242-0000.cbor.zst
    """
    for target in targets:
        try:
            paths = segment_paths(target)
        except CaptureError as exc:
            raise click.ClickException(str(exc)) from None
        for path in paths:
            _index_one(path)


def _index_one(path: Path) -> None:
    try:
        result = repair_index(path)
    except (CaptureError, OSError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    exchanges = plural(result.exchanges, "exchange")
    if result.already_indexed:
        click.echo(f"{path}: already indexed ({exchanges})")
        return
    message = f"{path}: index written ({exchanges})"
    if result.replaced is not None:
        message += f"; it replaces the stored one: {result.replaced}"
    if result.tail_saved_to is not None:
        message += (
            f"; damaged tail after byte {result.truncated_at} moved to {result.tail_saved_to}"
        )
    click.echo(message)


def _output_file(path: Path, option: str) -> IO[str]:
    """A report or export file, mode 0600 (it holds bodies from the capture)."""
    try:
        return open_private(path)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {path}: {exc.strerror or exc}", param_hint=f"'{option}'"
        ) from None


def _nats_options(fn: Any) -> Any:
    """The options ship and collect share: stream, subject, credentials, TLS, config."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=EXISTING_FILE,
            help="TOML config; its [ship] (ship) or [collect] (collect) table holds these options (dashes as underscores); flags override it.",
        ),
        click.option(
            "--stream",
            metavar="NAME",
            help="JetStream stream name (made when missing) [default: WIRECAP].",
        ),
        click.option(
            "--subject",
            metavar="PREFIX",
            help="Subject prefix: frames go to SUBJECT.data.SOURCE [default: wirecap].",
        ),
        click.option("--user", metavar="NAME", help="NATS user name."),
        click.option(
            "--password",
            metavar="PASSWORD",
            envvar="WIRECAP_NATS_PASSWORD",
            help="NATS password [env: WIRECAP_NATS_PASSWORD].",
        ),
        click.option(
            "--token",
            metavar="TOKEN",
            envvar="WIRECAP_NATS_TOKEN",
            help="NATS token [env: WIRECAP_NATS_TOKEN].",
        ),
        click.option("--creds", type=EXISTING_FILE, help="NATS credentials file (JWT and seed)."),
        click.option(
            "--tls-ca",
            type=EXISTING_FILE,
            help="CA bundle to trust for the NATS server (turns TLS on).",
        ),
        click.option(
            "--tls-cert", type=EXISTING_FILE, help="TLS client certificate (with --tls-key)."
        ),
        click.option("--tls-key", type=EXISTING_FILE, help="TLS client key."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("ship", short_help="Publish a capture directory's frames to NATS JetStream.")
@click.argument(
    "directory", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--to", metavar="URL", help="NATS server: nats://HOST:4222 or tls://HOST:4222.")
@click.option(
    "--source", metavar="NAME", help="This capture's name in the stream [default: the host name]."
)
@click.option(
    "--window",
    metavar="FRAMES",
    type=click.IntRange(min=1),
    help="Frames awaiting acknowledgement at once [default: 256].",
)
@_nats_options
def ship_command(directory: Path, config_path: Path | None, **flags: Any) -> None:
    """Publish every closed frame of the capture directory DIR to a JetStream stream, and keep
    following it until Ctrl-C or SIGTERM.

    Each frame goes as written, with its source, segment and offset, and waits for the stream's
    acknowledgement; the position is saved beside the segments, so a restart resumes there.
    Through a NATS outage it keeps trying; the files hold everything meanwhile.

    \b
    Examples:
      wirecap ship captures/ --to nats://127.0.0.1:4222
      wirecap ship captures/ --to tls://nats.internal:4222 --creds app.creds --source web-1
    """
    try:
        shipper = make_shipper(directory, config_path, flags)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(ship(shipper), err=True)


@main.command(
    "collect", short_help="Write a JetStream stream of shipped frames to a capture directory."
)
@click.argument("url", required=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Directory for the central capture.",
)
@click.option(
    "--durable",
    metavar="NAME",
    help="Durable consumer name; collectors with the same one share the work [default: wirecap-collector].",
)
@click.option(
    "--name", metavar="NAME", help="This collector's name in its file names [default: host-pid]."
)
@click.option(
    "--ack-wait",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds before an unacknowledged frame is delivered again [default: 30].",
)
@click.option(
    "--batch",
    metavar="FRAMES",
    type=click.IntRange(min=1),
    help="Frames fetched, written and flushed at a time [default: 256].",
)
@_nats_options
def collect_command(url: str | None, config_path: Path | None, **flags: Any) -> None:
    """Consume the stream at URL (nats://HOST:4222) with a durable consumer and write what the
    shippers sent into --out DIR, until Ctrl-C or SIGTERM. Every wirecap command reads DIR as one
    capture. Collectors with the same --durable and --out share the work.

    \b
    Examples:
      wirecap collect nats://127.0.0.1:4222 --out central/
      wirecap inspect central/ --detect-issues
    """
    try:
        collector = make_collector(url, config_path, flags)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(collect(collector), err=True)
