"""What ``wirecap ship`` and ``wirecap collect`` do with their flags and the TOML config: build
the shipper or collector (every problem a one-line :class:`~wirecap.fleet.FleetError`), run it,
and say what it did."""

from __future__ import annotations

import tomllib
from typing import TYPE_CHECKING, Any

from wirecap.fleet import FleetError, require_nats
from wirecap.fleet.collector import ACK_WAIT, BATCH, Collector
from wirecap.fleet.config import (
    COLLECT_KEYS,
    DEFAULT_DURABLE,
    SHIP_KEYS,
    check_name,
    default_source,
    merged,
    nats_settings,
)
from wirecap.fleet.runner import run_until_signal
from wirecap.fleet.shipper import Shipper

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def config_table(path: Path | None, name: str) -> dict[str, Any] | None:
    """The ``[name]`` table of the TOML file at ``path`` (None without a file or table)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise FleetError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"config {path} is not valid TOML: {exc}") from None
    table = doc.get(name)
    if table is not None and not isinstance(table, dict):
        raise FleetError(f"[{name}] in {path} must be a table")
    return table


def _number(values: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise FleetError(f"[{where}] {key} must be a positive number")
    return float(value)


def make_shipper(directory: Path, config: Path | None, flags: Mapping[str, Any]) -> Shipper:
    """The shipper that ``wirecap ship DIRECTORY`` runs."""
    values = merged(config_table(config, "ship"), flags, SHIP_KEYS, "ship")
    if not values.get("to"):
        raise FleetError("where to ship: --to nats://HOST:4222 (or 'to' in [ship])")
    settings = nats_settings(values["to"], values, "ship")
    source = check_name(str(values.get("source") or default_source()), "source name")
    window = int(_number(values, "window", 256, "ship"))
    require_nats()
    try:
        return Shipper(directory, settings, source, window=window)
    except ValueError as exc:  # a position file that is not one
        raise FleetError(str(exc)) from None


def make_collector(url: str | None, config: Path | None, flags: Mapping[str, Any]) -> Collector:
    """The collector that ``wirecap collect URL --out DIR`` runs."""
    values = merged(config_table(config, "collect"), {"url": url, **flags}, COLLECT_KEYS, "collect")
    if not values.get("url"):
        raise FleetError("which stream to collect: give nats://HOST:4222 (or 'url' in [collect])")
    if "out" not in values:
        raise FleetError("where to write: --out DIR (or 'out' in [collect])")
    settings = nats_settings(values["url"], values, "collect")
    durable = check_name(str(values.get("durable") or DEFAULT_DURABLE), "durable consumer name")
    name = values.get("name")
    if name is not None:
        check_name(str(name), "collector name")
    require_nats()
    out: Path = values["out"]
    if out.exists() and not out.is_dir():
        raise FleetError(f"--out {out} is not a directory")
    return Collector(
        settings,
        out,
        durable=durable,
        name=name,
        batch=int(_number(values, "batch", BATCH, "collect")),
        ack_wait=_number(values, "ack_wait", ACK_WAIT, "collect"),
    )


def ship(shipper: Shipper) -> str:
    """Run ``shipper`` until a signal; the line that says what it shipped."""
    run_until_signal(shipper.run)
    s = shipper.statistics
    return (
        f"shipped {s.frames} frames ({s.bytes} bytes) from {shipper.directory} as "
        f"{shipper.source}; {s.duplicates} already in the stream"
    )


def collect(collector: Collector) -> str:
    """Run ``collector`` until a signal; the line that says what it wrote."""
    run_until_signal(collector.run)
    s = collector.statistics
    return (
        f"collected {s.frames} frames ({s.bytes} bytes) into {collector.out} in {s.runs} files; "
        f"{s.held} delivered again and already held"
    )
