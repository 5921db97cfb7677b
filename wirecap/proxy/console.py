"""One console line per exchange, as text or JSON. Sans-IO formatting; the caller prints."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeSummary:
    """What the console says about a finished exchange."""

    id: str
    wall_ns: int
    method: str
    target: str
    upstream_url: str | None
    status: int | None
    outcome: str
    duration_ns: int
    ttfb_ns: int | None
    ttft_ns: int | None  # first response body byte
    req_bytes: int
    res_bytes: int
    captured: bool
    error: str | None = None
    fault: str | None = None  # the spec of a fault the proxy injected

    def to_json(self) -> dict[str, Any]:
        return {
            "time": _iso(self.wall_ns),
            "id": self.id,
            "method": self.method,
            "path": self.target,
            "upstream": self.upstream_url,
            "status": self.status,
            "outcome": self.outcome,
            "duration_ms": round(self.duration_ns / 1e6, 3),
            "ttfb_ms": None if self.ttfb_ns is None else round(self.ttfb_ns / 1e6, 3),
            "ttft_ms": None if self.ttft_ns is None else round(self.ttft_ns / 1e6, 3),
            "req_bytes": self.req_bytes,
            "res_bytes": self.res_bytes,
            "captured": self.captured,
            "error": self.error,
            "fault": self.fault,
        }


def _iso(wall_ns: int) -> str:
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}Z"


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    for unit in ("KiB", "MiB", "GiB"):
        n_f = n / 1024
        if n_f < 1024 or unit == "GiB":
            return f"{n_f:.1f}{unit}"
        n = int(n_f)
    return f"{n}B"


def human_seconds(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def format_text(s: ExchangeSummary) -> str:
    """``2026-11-23 12:00:01 [a1b2c3d4e5f6] POST /openai/v1/chat -> https://... 200 1.20s ttft=310ms 1.2KiB/8.0KiB``"""
    seconds = s.wall_ns // 1_000_000_000
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    status = str(s.status) if s.status is not None else "---"
    line = (
        f"{stamp} [{s.id}] {s.method} {s.target} -> {s.upstream_url or '(no route)'} {status} "
        f"{human_seconds(s.duration_ns)} ttft={human_seconds(s.ttft_ns)} "
        f"{human_bytes(s.req_bytes)}/{human_bytes(s.res_bytes)}"
    )
    if s.outcome != "ok":
        line += f" {s.outcome}"
    if s.error:
        line += f" ({s.error})"
    if s.fault:
        line += f" fault {s.fault}"
    if not s.captured:
        line += " [not captured]"
    return line


def format_json(s: ExchangeSummary) -> str:
    return json.dumps(s.to_json(), separators=(",", ":"))
