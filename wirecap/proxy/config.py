"""Proxy configuration: routes, upstreams, limits and timeouts, from flags and/or a TOML file. Sans-IO.

Everything a user can get wrong is checked here, before a socket is opened, and reported as a
:class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

DEFAULT_LISTEN: Final = ("127.0.0.1", 5601)
DEFAULT_OUT: Final = Path("captures")

#: Built-in routes used when no route is configured at all.
PRESETS: Final[Mapping[str, str]] = {
    "/openai/": "https://api.openai.com/",
    "/anthropic/": "https://api.anthropic.com/",
    "/ollama/": "http://127.0.0.1:11434/",
    "/openrouter/": "https://openrouter.ai/",
}

#: Headers whose values never reach a capture file unless redaction is off.
DEFAULT_REDACT_HEADERS: Final = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "set-cookie",
)
#: Credential shapes replaced in stored bodies: OpenAI and Anthropic style keys.
DEFAULT_REDACT_BODY: Final = (r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}",)


class ConfigError(ValueError):
    """A configuration mistake, described in one line."""


@dataclasses.dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route forwards to: scheme, host, port and a base path that prefixes every request."""

    scheme: Literal["http", "https"]
    host: str
    port: int
    base_path: str = ""
    # Derived once, used by every exchange (see __post_init__).
    #: The key of this upstream's connection pool.
    origin: tuple[str, str, int] = dataclasses.field(init=False, repr=False, compare=False)
    #: The Host header requests to it carry (the port only when it is not the scheme's default).
    host_header: str = dataclasses.field(init=False, repr=False, compare=False)
    host_header_bytes: bytes = dataclasses.field(init=False, repr=False, compare=False)
    #: ``scheme://host[:port]``, which the upstream target follows in a URL.
    origin_url: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        host_header = host if self.port == default else f"{host}:{self.port}"
        derived = {
            "origin": (self.scheme, self.host, self.port),
            "host_header": host_header,
            "host_header_bytes": host_header.encode("ascii"),
            "origin_url": f"{self.scheme}://{host_header}",
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen

    @property
    def url(self) -> str:
        return f"{self.origin_url}{self.base_path or '/'}"


def parse_upstream(url: str) -> Upstream:
    """Parse an upstream base URL such as ``https://api.openai.com/`` or ``http://127.0.0.1:8000/v1``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad upstream URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"upstream URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ConfigError(f"upstream URL {url!r} has no host")
    if parts.query or parts.fragment:
        raise ConfigError(f"upstream URL {url!r} must not have a query or fragment")
    scheme: Literal["http", "https"] = "https" if parts.scheme == "https" else "http"
    if port is None:
        port = 443 if scheme == "https" else 80
    return Upstream(scheme, parts.hostname, port, parts.path.rstrip("/"))


def normalize_prefix(prefix: str) -> str:
    """``/openai/`` and ``/openai`` name the same route; ``/`` is the catch-all."""
    if not prefix.startswith("/"):
        raise ConfigError(f"route prefix {prefix!r} must start with '/'")
    if "?" in prefix or "#" in prefix:
        raise ConfigError(f"route prefix {prefix!r} must be a plain path")
    return prefix.rstrip("/") or "/"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A path prefix (optionally a method and a host) mapped to an upstream, with its capture policy."""

    prefix: str
    upstream: Upstream
    method: str | None = None
    host: str | None = None
    capture: bool = True
    sample: float = 1.0
    forward_proxy_path: bool = False
    connect_timeout: float | None = None
    read_timeout: float | None = None
    redact_headers: tuple[str, ...] = ()
    redact_body: tuple[str, ...] = ()
    name: str | None = None

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.prefix, self.method, self.host)

    def describe(self) -> str:
        parts = [self.prefix]
        if self.method:
            parts.append(f"method {self.method}")
        if self.host:
            parts.append(f"host {self.host}")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds; each bounds one wait so that no stalled peer holds a task forever."""

    connect: float = 10.0  # opening a connection (TCP and TLS) to an upstream
    read: float = 600.0  # longest silence from an upstream, head or body (LLMs think slowly)
    write: float = 60.0  # longest a send to either side may block
    client_head: float = 30.0  # a client must deliver a complete request head within this
    keepalive: float = 120.0  # idle client connection between requests
    pool_idle: float = 60.0  # idle upstream connection kept in the pool
    shutdown_grace: float = 5.0  # on SIGINT/SIGTERM, time given to exchanges in flight


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Sizes that bound memory per connection."""

    max_head: int = (
        64 * 1024
    )  # request/response head; larger gets 431 (h11's own default is 16 KiB)
    # Bytes asked of a socket per read: one record at most this big (but for a big response body
    # received straight into the capture ring, ring.RING_SLOT_BYTES a read).
    read_size: int = 64 * 1024
    pool_size: int = 32  # idle connections kept per upstream


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSettings:
    enabled: bool = True
    out: Path = DEFAULT_OUT
    on_full: Literal["block", "drop"] = "block"
    channel_records: int = 4096
    rotate_bytes: int | None = 256 * 1024 * 1024
    rotate_seconds: float | None = 3600.0
    #: zstd level of frames of 256 KiB and more (smaller ones use at least SMALL_FRAME_LEVEL, see
    #: capture/sink.py). 1 keeps up with a 1 GB body (about 750 MiB/s a core here, 580 at level 3)
    #: and costs JSON traffic under a point of ratio (16% of the raw bytes against 15%).
    level: int = 1
    #: Compress large frames at a fast level while the writer falls behind the traffic, and store
    #: frames of big bodies that do not compress (a bigger file instead of slower traffic; see
    #: capture/child.py FrameWriter.write_frame).
    adapt: bool = True
    redact: bool = True
    redact_headers: tuple[str, ...] = DEFAULT_REDACT_HEADERS
    redact_body: tuple[str, ...] = DEFAULT_REDACT_BODY


#: The defaults of the [capture] table, stated once (in CaptureSettings).
_CAPTURE_DEFAULTS: Final = CaptureSettings()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    listen_host: str = DEFAULT_LISTEN[0]
    listen_port: int = DEFAULT_LISTEN[1]
    routes: tuple[Route, ...] = ()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    capture: CaptureSettings = CaptureSettings()
    upstream_ca: Path | None = None  # extra CA bundle trusted for HTTPS upstreams
    log_format: Literal["text", "json", "quiet"] = "text"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT``."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    host = host.strip("[]") or DEFAULT_LISTEN[0]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad listen address {value!r}: expected HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad listen port {port}")
    return host, port


def parse_route_spec(spec: str) -> Route:
    """A ``--route`` flag: ``PREFIX=URL``, optionally ``METHOD PREFIX=URL``."""
    left, sep, url = spec.partition("=")
    if not sep or not url:
        raise ConfigError(f"bad route {spec!r}: expected PREFIX=URL")
    method = None
    words = left.split()
    if len(words) == 2:
        method, prefix = words[0].upper(), words[1]
    elif len(words) == 1:
        prefix = words[0]
    else:
        raise ConfigError(f"bad route {spec!r}: expected [METHOD] PREFIX=URL")
    return Route(
        prefix=normalize_prefix(prefix), upstream=parse_upstream(url.strip()), method=method
    )


def preset_routes() -> tuple[Route, ...]:
    return tuple(
        Route(prefix=normalize_prefix(p), upstream=parse_upstream(u), name=p.strip("/"))
        for p, u in PRESETS.items()
    )


def check_routes(routes: Sequence[Route]) -> tuple[Route, ...]:
    """Reject duplicate routes (same prefix, method and host): which one would win is ambiguous."""
    seen: dict[tuple[str, str | None, str | None], Route] = {}
    for route in routes:
        if route.key in seen:
            raise ConfigError(
                f"duplicate route {route.describe()}: both {seen[route.key].upstream.url} and "
                f"{route.upstream.url}"
            )
        seen[route.key] = route
        if not 0.0 <= route.sample <= 1.0 or math.isnan(route.sample):
            raise ConfigError(f"route {route.describe()}: sample must be between 0 and 1")
    return tuple(routes)


_ROUTE_KEYS: Final = {
    "prefix",
    "upstream",
    "method",
    "host",
    "capture",
    "sample",
    "forward_proxy_path",
    "connect_timeout",
    "read_timeout",
    "redact_headers",
    "redact_body",
    "name",
}


def _route_from_table(table: Any, where: str) -> Route:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a route must be a table")
    unknown = set(table) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown route keys {', '.join(sorted(unknown))}")
    for key in ("prefix", "upstream"):
        if not isinstance(table.get(key), str):
            raise ConfigError(f"{where}: route needs a text {key!r}")
    try:
        return Route(
            prefix=normalize_prefix(table["prefix"]),
            upstream=parse_upstream(table["upstream"]),
            method=_opt(table, "method", str, where) and str(table["method"]).upper(),
            host=_opt(table, "host", str, where) and str(table["host"]).lower(),
            capture=_opt(table, "capture", bool, where, True),
            sample=float(_opt(table, "sample", (int, float), where, 1.0)),
            forward_proxy_path=_opt(table, "forward_proxy_path", bool, where, False),
            connect_timeout=_opt(table, "connect_timeout", (int, float), where),
            read_timeout=_opt(table, "read_timeout", (int, float), where),
            redact_headers=tuple(h.lower() for h in _opt_list(table, "redact_headers", where)),
            redact_body=tuple(_opt_list(table, "redact_body", where)),
            name=_opt(table, "name", str, where),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _opt(table: Mapping[str, Any], key: str, kind: Any, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is not None and (
        not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: {key!r} has the wrong type")
    return value


def _opt_list(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key!r} must be a list of text")
    return value


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; errors become :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def routes_from_toml(doc: Mapping[str, Any], where: str = "config") -> list[Route]:
    """Routes from ``[[route]]`` tables."""
    tables = doc.get("route", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: 'route' must be an array of tables ([[route]])")
    return [_route_from_table(t, f"{where} route {i + 1}") for i, t in enumerate(tables)]


def build_config(
    *,
    doc: Mapping[str, Any] | None = None,
    listen: str | None = None,
    upstream: str | None = None,
    routes: Iterable[str] = (),
    out: Path | None = None,
    capture: bool | None = None,
    on_full: str | None = None,
    redact: bool | None = None,
    redact_headers: Iterable[str] = (),
    redact_body: Iterable[str] = (),
    rotate_bytes: int | None = None,
    rotate_seconds: float | None = None,
    upstream_ca: Path | None = None,
    log_format: str | None = None,
    timeouts: Mapping[str, float] | None = None,
    max_head: int | None = None,
) -> ProxyConfig:
    """Merge a TOML document and command-line values (flags win) into a checked :class:`ProxyConfig`.

    Routes: ``--upstream`` is a catch-all ``/`` route; ``--route`` flags and ``[[route]]`` tables add
    more. With no route at all, the built-in presets apply.
    """
    doc = doc or {}
    proxy = _table(doc, "proxy")
    cap = _table(doc, "capture")
    tmo = _table(doc, "timeouts")

    all_routes = routes_from_toml(doc)
    all_routes += [parse_route_spec(r) for r in routes]
    if upstream is not None:
        all_routes.append(Route(prefix="/", upstream=parse_upstream(upstream)))
    if not all_routes:
        all_routes = list(preset_routes())

    host, port = parse_listen(
        listen or str(proxy.get("listen", f"{DEFAULT_LISTEN[0]}:{DEFAULT_LISTEN[1]}"))
    )
    timeout_values = {**tmo, **(timeouts or {})}
    unknown = set(timeout_values) - {f.name for f in dataclasses.fields(Timeouts)}
    if unknown:
        raise ConfigError(f"unknown timeouts: {', '.join(sorted(unknown))}")
    for key, value in timeout_values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"timeout {key!r} must be a positive number of seconds")

    on_full_value = on_full or cap.get("on_full", _CAPTURE_DEFAULTS.on_full)
    if on_full_value not in ("block", "drop"):
        raise ConfigError(f"on_full must be 'block' or 'drop', not {on_full_value!r}")
    on_full_policy: Literal["block", "drop"] = "drop" if on_full_value == "drop" else "block"
    fmt_value = log_format or proxy.get("log_format", "text")
    if fmt_value not in ("text", "json", "quiet"):
        raise ConfigError(f"log_format must be text, json or quiet, not {fmt_value!r}")
    fmt: Literal["text", "json", "quiet"] = (
        "json" if fmt_value == "json" else "quiet" if fmt_value == "quiet" else "text"
    )
    level = cap.get("level", _CAPTURE_DEFAULTS.level)
    if not isinstance(level, int) or not 1 <= level <= 19:
        raise ConfigError("capture level must be an integer from 1 to 19")
    adapt = cap.get("adapt", _CAPTURE_DEFAULTS.adapt)
    if not isinstance(adapt, bool):
        raise ConfigError("capture adapt must be true or false")

    extra_headers = tuple(
        h.lower() for h in (*_opt_list(cap, "redact_headers", "capture"), *redact_headers)
    )
    extra_body = (*_opt_list(cap, "redact_body", "capture"), *redact_body)
    settings = CaptureSettings(
        enabled=capture
        if capture is not None
        else bool(cap.get("enabled", _CAPTURE_DEFAULTS.enabled)),
        out=out or Path(str(cap.get("out", _CAPTURE_DEFAULTS.out))),
        on_full=on_full_policy,
        rotate_bytes=rotate_bytes
        if rotate_bytes is not None
        else cap.get("rotate_bytes", _CAPTURE_DEFAULTS.rotate_bytes),
        rotate_seconds=rotate_seconds
        if rotate_seconds is not None
        else cap.get("rotate_seconds", _CAPTURE_DEFAULTS.rotate_seconds),
        level=level,
        adapt=adapt,
        redact=redact if redact is not None else bool(cap.get("redact", _CAPTURE_DEFAULTS.redact)),
        redact_headers=DEFAULT_REDACT_HEADERS + extra_headers,
        redact_body=DEFAULT_REDACT_BODY + tuple(extra_body),
    )
    _check_patterns(settings.redact_body, *(r.redact_body for r in all_routes))
    ca = upstream_ca or (Path(str(proxy["upstream_ca"])) if "upstream_ca" in proxy else None)
    return ProxyConfig(
        listen_host=host,
        listen_port=port,
        routes=check_routes(all_routes),
        timeouts=dataclasses.replace(
            Timeouts(), **{k: float(v) for k, v in timeout_values.items()}
        ),
        limits=Limits(max_head=max_head) if max_head else Limits(),
        capture=settings,
        upstream_ca=ca,
        log_format=fmt,
    )


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config: [{key}] must be a table")
    return value


def _check_patterns(*groups: Iterable[str]) -> None:
    import re

    for group in groups:
        for pattern in group:
            try:
                re.compile(pattern.encode())
            except re.error as exc:
                raise ConfigError(f"bad redaction pattern {pattern!r}: {exc}") from None
