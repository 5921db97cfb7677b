"""The ``wirecap`` command line. Argument handling and output only; the work lives in the packages."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click
import trio

from wirecap import __version__
from wirecap.capture import Capture, CaptureError, open_capture, repair_index
from wirecap.inspect.analysis import analyze_exchange
from wirecap.inspect.detectors import SEVERITY_RANK, Thresholds, detect_all
from wirecap.inspect.export import jsonl_records, write_har
from wirecap.inspect.select import FilterError, Filters, analyzed_exchanges, parse_time
from wirecap.inspect.stats import compute as compute_stats
from wirecap.inspect.stats import table_lines as stats_table
from wirecap.inspect.views import detail_lines, findings_lines, table_lines
from wirecap.proxy.app import run_proxy
from wirecap.proxy.config import (
    LOG_FORMATS,
    MAX_LEVEL,
    MIN_LEVEL,
    ON_FULL_POLICIES,
    ConfigError,
    build_config,
    load_toml,
    parse_listen,
    parse_upstream,
)
from wirecap.replay.compare import MODES, parse_ignores
from wirecap.replay.demo import DemoError, run_demo
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
from wirecap.replay.serve import MockServer, load_catalog

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


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
    """Capture LLM API traffic at the wire, byte for byte, and replay it."""


@main.command("proxy")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML config file; each flag below is also a key there (dashes as underscores), and flags override it.",
)
@click.option(
    "--listen", metavar="HOST:PORT", help="Address to listen on [default: 127.0.0.1:5601]."
)
@click.option("--upstream", metavar="URL", help="Forward everything (route '/') to this base URL.")
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="[METHOD] PREFIX=URL",
    help="Add a route ([[route]] in the config); repeatable. The longest matching prefix wins.",
)
@click.option(
    "--upstream-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
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
def proxy_command(config_path: Path | None, quiet: bool, **settings: Any) -> None:
    """Run the recording reverse proxy.

    With no arguments it listens on 127.0.0.1:5601 with the routes /openai/, /anthropic/, /ollama/ and
    /openrouter/ and writes to ./captures. Point your SDK's base URL at it, e.g.
    http://127.0.0.1:5601/openai/v1.
    """
    # Every other option is a setting that build_config takes by the same name.
    if quiet:
        settings["log_format"] = "quiet"
    try:
        config = build_config(doc=load_toml(config_path) if config_path else None, **settings)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    logging.basicConfig(
        level=logging.WARNING, format="wirecap: %(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        server = trio.run(lambda: run_proxy(config, banner=sys.stderr))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror or exc}"
        ) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if server.writer is not None:
        stats = server.writer.statistics()
        message = f"wirecap: {server.stats.exchanges} exchanges; capture: {', '.join(str(p) for p in stats.paths)}"
        if stats.records_dropped:
            message += f"; {stats.records_dropped} records dropped"
        if stats.failed:
            message += f"; CAPTURE FAILED ({stats.failed}), {stats.records_lost} records lost"
        click.echo(message, err=True)


def _time_option(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except FilterError as exc:
        raise click.BadParameter(str(exc)) from None


def _filter_options(fn: Any) -> Any:
    options = [
        click.option(
            "--route", metavar="PREFIX", help="Only exchanges of this route (e.g. /openai)."
        ),
        click.option(
            "--status",
            metavar="SPEC",
            help="Only these statuses: 200, 4xx, >=500, or a comma list.",
        ),
        click.option(
            "--model",
            metavar="GLOB",
            help="Only this model (glob or substring, requested or returned).",
        ),
        click.option(
            "--since",
            metavar="TIME",
            help="Only exchanges that started at or after TIME (ISO 8601, or 30m / 2h / 1d ago).",
        ),
        click.option(
            "--until", metavar="TIME", help="Only exchanges that started at or before TIME."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _filters(
    route: str | None, status: str | None, model: str | None, since: str | None, until: str | None
) -> Filters:
    try:
        return Filters(
            route=route,
            status=status,
            model=model,
            since_ns=_time_option(since),
            until_ns=_time_option(until),
        )
    except FilterError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("inspect")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines: one object per exchange (or per finding)."
)
@click.option("--id", "exchange_id", metavar="ID", help="Show one exchange in full.")
@click.option(
    "--raw",
    type=click.Choice(["request", "response", "upstream"]),
    help="With --id: the exact stored bytes of one side, to stdout.",
)
@_filter_options
@click.option("--detect-issues", is_flag=True, help="Run every detector and list what went wrong.")
@click.option(
    "--fail-on",
    type=click.Choice(["info", "warning", "error"]),
    default="error",
    show_default=True,
    help="With --detect-issues: exit 1 when a finding of this severity or above fires.",
)
@click.option(
    "--slow-ttft",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="slow-ttft threshold.",
)
@click.option(
    "--stall",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="stream-stall threshold (largest gap between chunks).",
)
@click.option(
    "--duplicate-window",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="duplicate-request window.",
)
@click.option(
    "--duplicate-count",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    help="Identical requests within the window that make a duplicate-request finding.",
)
def inspect_command(
    captures: tuple[Path, ...],
    as_json: bool,
    exchange_id: str | None,
    raw: str | None,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
    detect_issues: bool,
    fail_on: str,
    slow_ttft: float,
    stall: float,
    duplicate_window: float,
    duplicate_count: int,
) -> None:
    """Show what happened: a table of exchanges, one exchange in detail, or the issues found.

    CAPTURES are capture files or directories of segments.
    """
    if raw and not exchange_id:
        raise click.UsageError("--raw needs --id")
    filters = _filters(route, status, model, since, until)
    thresholds = Thresholds(
        slow_ttft_s=slow_ttft,
        stall_s=stall,
        duplicate_window_s=duplicate_window,
        duplicate_count=duplicate_count,
    )
    worst = -1
    try:
        with open_capture(*captures) as capture:
            if exchange_id:
                _show_exchange(capture, exchange_id, raw, as_json)
            elif detect_issues:
                findings = list(detect_all(analyzed_exchanges(capture, filters), thresholds))
                lines = (
                    (json.dumps(f.to_json()) for f in findings)
                    if as_json
                    else findings_lines(findings)
                )
                for line in lines:
                    click.echo(line)
                worst = max((SEVERITY_RANK[f.severity] for f in findings), default=-1)
            else:
                analyzed = analyzed_exchanges(capture, filters)
                rows = (
                    (json.dumps(a.row(), separators=(",", ":")) for a in analyzed)
                    if as_json
                    else table_lines(analyzed)
                )
                for line in rows:
                    click.echo(line)
            for damage in capture.damage:
                click.echo(f"wirecap: damaged: {damage}", err=True)
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    if detect_issues and worst >= SEVERITY_RANK[fail_on]:
        raise SystemExit(1)


def _show_exchange(capture: Capture, exchange_id: str, raw: str | None, as_json: bool) -> None:
    exchange = capture.get(exchange_id)
    if exchange is None:
        raise click.ClickException(f"no exchange {exchange_id!r} in the capture")
    out = sys.stdout.buffer
    if raw == "request":
        out.write(exchange.request_bytes())
    elif raw == "response":
        out.write(exchange.response_bytes())
    elif raw == "upstream":
        out.write(exchange.upstream_request_bytes())
    elif as_json:
        record = next(jsonl_records([analyze_exchange(exchange)]))
        click.echo(json.dumps(record, ensure_ascii=False))
    else:
        for line in detail_lines(analyze_exchange(exchange)):
            click.echo(line)
    sys.stdout.flush()


@main.command("stats")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per route and model.")
@_filter_options
def stats_command(
    captures: tuple[Path, ...],
    as_json: bool,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Per route and model: requests, error rate, tokens, TTFT and duration percentiles, bytes."""
    filters = _filters(route, status, model, since, until)
    try:
        with open_capture(*captures) as capture:
            groups = compute_stats(analyzed_exchanges(capture, filters))
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    lines = (json.dumps(g.to_json()) for g in groups) if as_json else stats_table(groups)
    for line in lines:
        click.echo(line)


@main.command("export")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["har", "jsonl"]),
    required=True,
    help="HAR 1.2 or JSON Lines.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write ('-' for stdout).",
)
@_filter_options
def export_command(
    captures: tuple[Path, ...],
    fmt: str,
    output: Path,
    route: str | None,
    status: str | None,
    model: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Export exchanges as HAR 1.2 (opens in browser devtools) or JSON Lines."""
    filters = _filters(route, status, model, since, until)
    try:
        with (
            open_capture(*captures) as capture,
            click.open_file(str(output), "w", encoding="utf-8") as out,
        ):
            analyzed = analyzed_exchanges(capture, filters)
            if fmt == "har":
                count = write_har(analyzed, out)
            else:
                count = 0
                for record in jsonl_records(analyzed):
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    if str(output) != "-":
        click.echo(f"{count} exchanges written to {output}", err=True)


def _speed(value: str, what: str) -> float | None:
    try:
        return parse_pace(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace("pace", what)) from None


def _headers(values: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"bad header {value!r}: expected 'Name: value'")
        out.append((name.strip(), content.strip()))
    return out


def _ignores(paths: tuple[str, ...]) -> list[list[str | int | None]]:
    try:
        return parse_ignores(paths)
    except PathError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("replay")
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
    help="Write a JUnit XML report here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of text.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Capture the replay's own traffic into this directory.",
)
@click.option(
    "--target-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Extra CA bundle to trust for an HTTPS target.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds to wait for each answer.",
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
    """Send recorded requests to a target and report what changed (exit 1 on any failure, 2 when the
    target is unreachable)."""
    try:
        base = parse_upstream(target)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None
    options = ReplayOptions(
        target=base,
        mode=mode,  # type: ignore[arg-type]
        ignore=_ignores(ignore),
        concurrency=concurrency,
        pace=_speed(pace, "pace"),
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
        junit.write_text(junit_xml(results), encoding="utf-8")
    if as_json:
        click.echo(json_report(results))
    else:
        for line in text_lines(results):
            click.echo(line)
    if any(not r.verdict.passed for r in results):
        raise SystemExit(1)


@main.command("serve")
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
    help="Status for requests that match nothing.",
)
def serve_command(
    captures: tuple[Path, ...],
    listen: str,
    timing: str,
    match_on: str,
    ignore: tuple[str, ...],
    sequence: bool,
    miss_status: int,
) -> None:
    """A mock backend answering from captures, with the recorded timing."""
    try:
        host, port = parse_listen(listen)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    speed = _speed(timing, "timing")
    fields = [f.strip() for f in match_on.split(",") if f.strip()]
    logging.basicConfig(level=logging.WARNING, format="wirecap: %(message)s", stream=sys.stderr)
    try:
        with open_capture(*captures) as capture:
            catalog = load_catalog(
                capture, match_on=fields, ignore=_ignores(ignore), sequence=sequence
            )
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--match") from None
    server = MockServer(catalog, host=host, port=port, speed=speed, miss_status=miss_status)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            click.echo(
                f"wirecap serve on {server.url}: {len(catalog.entries)} recorded answers", err=True
            )

    try:
        trio.run(run)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


@main.command("demo")
@click.option(
    "--fixtures",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Fixture directory [default: the repository's fixtures/].",
)
def demo_command(fixtures: Path | None) -> None:
    """The whole loop offline: serve a fixture, put the proxy in front, send requests, inspect."""
    try:
        run_demo(fixtures, echo=click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("index")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def index_command(files: tuple[Path, ...]) -> None:
    """Rebuild and append the index of capture files left without one (after a crash)."""
    for path in files:
        try:
            result = repair_index(path)
        except (CaptureError, OSError) as exc:
            raise click.ClickException(f"{path}: {exc}") from None
        if result.already_indexed:
            click.echo(f"{path}: already indexed ({result.exchanges} exchanges)")
            continue
        message = f"{path}: index written ({result.exchanges} exchanges)"
        if result.replaced is not None:
            message += f"; it replaces the stored one: {result.replaced}"
        if result.tail_saved_to is not None:
            message += (
                f"; damaged tail after byte {result.truncated_at} moved to {result.tail_saved_to}"
            )
        click.echo(message)
