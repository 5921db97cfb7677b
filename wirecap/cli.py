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
from wirecap.capture import CaptureError, open_capture, repair_index
from wirecap.inspect.listing import format_table, rows
from wirecap.proxy import ConfigError, build_config, run_proxy
from wirecap.proxy.config import load_toml

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wirecap")
def main() -> None:
    """Capture LLM API traffic at the wire, byte for byte, and replay it."""


@main.command("proxy")
@click.option(
    "--listen", metavar="HOST:PORT", help="Address to listen on [default: 127.0.0.1:5601]."
)
@click.option("--upstream", metavar="URL", help="Forward everything (route '/') to this base URL.")
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="[METHOD] PREFIX=URL",
    help="Add a route; repeatable. The longest matching prefix wins.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML config file (flags override it).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for capture files [default: ./captures].",
)
@click.option("--no-capture", is_flag=True, help="Proxy only; write no capture.")
@click.option(
    "--on-full",
    type=click.Choice(["block", "drop"]),
    help="When the capture channel is full: wait (lose nothing) or drop records (never slow traffic) [default: block].",
)
@click.option(
    "--no-redact", is_flag=True, help="Store credentials too (the capture header says so)."
)
@click.option(
    "--redact-header", multiple=True, metavar="NAME", help="Another header to redact; repeatable."
)
@click.option(
    "--redact-body",
    multiple=True,
    metavar="REGEX",
    help="Another pattern to redact in bodies, heads and targets; repeatable.",
)
@click.option(
    "--rotate-size",
    type=ByteSize(),
    help="Start a new segment after this many bytes [default: 256MiB].",
)
@click.option(
    "--rotate-interval",
    type=click.FloatRange(min=1),
    help="Start a new segment after this many seconds [default: 3600].",
)
@click.option(
    "--upstream-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Extra CA bundle to trust for HTTPS upstreams.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to connect to an upstream [default: 10].",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Longest upstream silence, in seconds, before 504 [default: 600].",
)
@click.option(
    "--head-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a client has to send a complete request head [default: 30].",
)
@click.option(
    "--max-head",
    type=ByteSize(),
    help="Largest request or response head; larger gets 431 [default: 64KiB].",
)
@click.option("--quiet", "-q", is_flag=True, help="No line per exchange.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Line per exchange as text or JSON [default: text].",
)
def proxy_command(
    listen: str | None,
    upstream: str | None,
    routes: tuple[str, ...],
    config_path: Path | None,
    out: Path | None,
    no_capture: bool,
    on_full: str | None,
    no_redact: bool,
    redact_header: tuple[str, ...],
    redact_body: tuple[str, ...],
    rotate_size: int | None,
    rotate_interval: float | None,
    upstream_ca: Path | None,
    connect_timeout: float | None,
    read_timeout: float | None,
    head_timeout: float | None,
    max_head: int | None,
    quiet: bool,
    log_format: str | None,
) -> None:
    """Run the recording reverse proxy.

    With no arguments it listens on 127.0.0.1:5601 with the routes /openai/, /anthropic/, /ollama/ and
    /openrouter/ and writes to ./captures. Point your SDK's base URL at it, e.g.
    http://127.0.0.1:5601/openai/v1.
    """
    timeouts = {
        key: value
        for key, value in (
            ("connect", connect_timeout),
            ("read", read_timeout),
            ("client_head", head_timeout),
        )
        if value is not None
    }
    try:
        config = build_config(
            doc=load_toml(config_path) if config_path else None,
            listen=listen,
            upstream=upstream,
            routes=routes,
            out=out,
            capture=False if no_capture else None,
            on_full=on_full,
            redact=False if no_redact else None,
            redact_headers=redact_header,
            redact_body=redact_body,
            rotate_bytes=rotate_size,
            rotate_seconds=rotate_interval,
            upstream_ca=upstream_ca,
            log_format="quiet" if quiet else log_format,
            timeouts=timeouts,
            max_head=max_head,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
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


@main.command("inspect")
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--id", "exchange_id", metavar="ID", help="Show one exchange.")
@click.option(
    "--raw",
    type=click.Choice(["request", "response", "upstream"]),
    help="With --id: the exact bytes of one side to stdout.",
)
def inspect_command(
    captures: tuple[Path, ...], as_json: bool, exchange_id: str | None, raw: str | None
) -> None:
    """List the exchanges of capture files or directories, or show one of them."""
    if raw and not exchange_id:
        raise click.UsageError("--raw needs --id")
    try:
        with open_capture(*captures) as capture:
            if exchange_id:
                _show_exchange(capture, exchange_id, raw, as_json)
            else:
                lines = (
                    (json.dumps(r, separators=(",", ":")) for r in rows(capture))
                    if as_json
                    else format_table(rows(capture))
                )
                for line in lines:
                    click.echo(line)
            for damage in capture.damage:
                click.echo(f"wirecap: damaged: {damage}", err=True)
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from None


def _show_exchange(capture: Any, exchange_id: str, raw: str | None, as_json: bool) -> None:
    exchange = capture.get(exchange_id)
    if exchange is None:
        raise click.ClickException(f"no exchange {exchange_id!r} in the capture")
    if raw == "request":
        sys.stdout.buffer.write(exchange.request_bytes())
    elif raw == "response":
        sys.stdout.buffer.write(exchange.response_bytes())
    elif raw == "upstream":
        sys.stdout.buffer.write((exchange.upstream_wire_head or b"") + exchange.request_body)
    elif as_json:
        row = {
            "id": exchange.id,
            "method": exchange.method,
            "path": exchange.target,
            "upstream_url": exchange.upstream_url,
            "status": exchange.status,
            "outcome": exchange.outcome,
            "request_head": (exchange.request.head if exchange.request else b"").decode("latin-1"),
            "response_head": (exchange.response.head if exchange.response else b"").decode(
                "latin-1"
            ),
            "request_body": exchange.request_body.decode("utf-8", "replace"),
            "response_body": exchange.response_body.decode("utf-8", "replace"),
            "chunks": [{"dir": c.dir, "ns": c.ns, "bytes": len(c.data)} for c in exchange.chunks],
        }
        click.echo(json.dumps(row))
    else:
        click.echo(
            f"exchange {exchange.id}: {exchange.method} {exchange.target} -> {exchange.upstream_url}"
        )
        click.echo(f"status {exchange.status}, outcome {exchange.outcome}")
        for label, head in (
            ("request as received", exchange.request.head if exchange.request else None),
            ("request as sent upstream", exchange.upstream.head if exchange.upstream else None),
            ("response", exchange.response.head if exchange.response else None),
        ):
            if head is not None:
                click.echo(f"--- {label}")
                click.echo(head.decode("latin-1").rstrip("\r\n"))
        click.echo(f"--- request body ({len(exchange.request_body)} bytes)")
        click.echo(exchange.request_body.decode("utf-8", "replace"))
        click.echo(
            f"--- response body ({len(exchange.response_body)} bytes, {len(exchange.response_chunks)} chunks)"
        )
        click.echo(exchange.response_body.decode("utf-8", "replace"))
    sys.stdout.flush()


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
        if result.tail_saved_to is not None:
            message += (
                f"; damaged tail after byte {result.truncated_at} moved to {result.tail_saved_to}"
            )
        click.echo(message)
