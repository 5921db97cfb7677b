"""Proxy configuration: routes, upstreams, limits and timeouts, from flags and/or a TOML file. Sans-IO.

Every setting has one name: the TOML key (in its table, see :data:`SETTINGS`) and the keyword of
:func:`build_config`; the flag of ``wirecap proxy`` is the same name with dashes. Everything a user can
get wrong, an unknown or misspelt key included, is checked here, before a socket is opened, and
reported as a :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast
from urllib.parse import urlsplit

from wirecap.faults.spec import FaultSpec, FaultSpecError, parse_fault

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

DEFAULT_LISTEN: Final = ("127.0.0.1", 5601)
DEFAULT_OUT: Final = Path("captures")
LOG_FORMATS: Final = ("text", "json", "quiet")
ON_FULL_POLICIES: Final = ("block", "drop")
#: zstd levels a capture may use (the library's negative and ultra levels are left out).
MIN_LEVEL: Final = 1
MAX_LEVEL: Final = 19

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
    """Seconds; each bounds one wait so that no stalled peer holds a task forever.

    The TOML keys and flags name these fields with a ``_timeout`` suffix (``client_head`` is
    ``head_timeout``, ``client_body`` is ``body_timeout``, ``shutdown_grace`` is ``shutdown_timeout``; see :data:`TIMEOUT_FIELDS`).
    """

    connect: float = 10.0  # opening a connection (TCP and TLS) to an upstream
    read: float = 600.0  # longest silence from an upstream, head or body (LLMs think slowly)
    write: float = 60.0  # longest a send to either side may block
    client_head: float = 30.0  # a client must deliver a complete request head within this
    client_body: float = 30.0  # longest silence from a client in the middle of a request body
    keepalive: float = 120.0  # idle client connection between requests
    pool_idle: float = 60.0  # idle upstream connection kept in the pool
    shutdown_grace: float = 5.0  # on SIGINT/SIGTERM, time given to exchanges in flight


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Sizes that bound memory per connection."""

    #: Request or response head; larger gets 431 (h11's own default is 16 KiB).
    max_head: int = 64 * 1024
    #: Bytes asked of a socket per read, so one read is one record of at most this size.
    read_size: int = 64 * 1024
    #: Bytes asked of an upstream socket per read: a big answer arrives in a quarter of the reads
    #: (each read is one capture record at most).
    upstream_read_size: int = 256 * 1024
    pool_size: int = 32  # idle connections kept per upstream


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSettings:
    enabled: bool = True
    out: Path = DEFAULT_OUT
    on_full: Literal["block", "drop"] = "block"
    rotate_bytes: int | None = 256 * 1024 * 1024
    rotate_seconds: float | None = 3600.0
    #: zstd level of large frames (small ones get a higher level, which costs little on them).
    level: int = 1
    redact: bool = True
    redact_headers: tuple[str, ...] = DEFAULT_REDACT_HEADERS
    redact_body: tuple[str, ...] = DEFAULT_REDACT_BODY


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DiskThreshold:
    """The free space the capture directory's disk must keep for the proxy to be ready: a number
    of bytes, a percentage of the disk, or both (the larger applies)."""

    free_bytes: int = 0
    free_percent: float = 0.0

    def required(self, total: int) -> int:
        """Bytes that must be free on a disk of ``total`` bytes."""
        return max(self.free_bytes, math.ceil(total * self.free_percent / 100))


#: Free disk below which readiness fails, unless ``ready_min_free_disk`` says otherwise.
DEFAULT_MIN_FREE_DISK: Final = DiskThreshold(free_bytes=1024**3)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """The admin listener (``/healthz``, ``/readyz``, ``/metrics``): off unless given an address."""

    address: tuple[str, int] | None = None
    #: Every request must carry ``Authorization: Bearer <token>`` (required off loopback).
    token: str | None = dataclasses.field(default=None, repr=False)
    min_free_disk: DiskThreshold = DEFAULT_MIN_FREE_DISK


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
    admin: AdminSettings = AdminSettings()
    faults: tuple[FaultSpec, ...] = ()  # injected into the exchanges their selectors pick
    workers: int = 1  # proxy processes on the listening socket (see proxy/workers.py)


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """A size in bytes: ``65536``, ``"512KiB"``, ``"256MiB"``, ``"1G"`` (units are powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"{value!r} is not a size (e.g. 65536 or '256MiB')")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit or "_"))


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


# Value checks. Each takes a value from TOML, a flag or a keyword argument and returns it in the
# form the config holds, or raises _Invalid saying what the value must be.


class _Invalid(ValueError):
    """A value of the wrong type or out of range; the text completes "<key> must be ..."."""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("text")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise _Invalid("a path")
    return Path(value)


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _Invalid("a list of text")
    return tuple(value)


def _faults(value: Any) -> tuple[FaultSpec, ...]:
    """``--fault`` specs (text, or already parsed), each checked."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str | FaultSpec) for v in value
    ):
        raise _Invalid("a list of fault specs (text)")
    try:
        return tuple(v if isinstance(v, FaultSpec) else parse_fault(v) for v in value)
    except FaultSpecError as exc:
        raise ConfigError(str(exc)) from None


def _seconds(value: Any) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 < value < math.inf  # also rejects NaN
    ):
        raise _Invalid("a positive number of seconds")
    return float(value)


def _size(value: Any) -> int:
    try:
        size = parse_size(value)
    except ConfigError:
        size = 0
    if size <= 0:
        raise _Invalid("a positive size in bytes (e.g. 65536 or '64KiB')")
    return size


def _level(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_LEVEL <= value <= MAX_LEVEL:
        raise _Invalid(f"an integer from {MIN_LEVEL} to {MAX_LEVEL}")
    return value


#: Most proxy processes ``--workers`` starts: each costs a process and a capture writer process.
MAX_WORKERS: Final = 64


def _workers(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
        raise _Invalid(f"an integer from 1 to {MAX_WORKERS}")
    return value


def _sample(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise _Invalid("a number from 0 to 1")
    return float(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise _Invalid(" or ".join(repr(c) for c in choices))
        return cast("str", value)

    return check


def _listen(value: Any) -> tuple[str, int]:
    return parse_listen(_text(value))


def _upstream(value: Any) -> Upstream:
    return parse_upstream(_text(value))


def _token(value: Any) -> str:
    token = value.strip() if isinstance(value, str) else ""
    if not token or not token.isprintable():
        raise _Invalid("non-empty printable text")
    return token


def _disk_threshold(value: Any) -> DiskThreshold:
    """``"5%"`` (of the disk) or a size (``"1GiB"``, ``0`` for no threshold)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            percent = math.nan
        if not 0 <= percent < 100:
            raise _Invalid("a size (e.g. '1GiB') or a percentage from 0 to 100 (e.g. '5%')")
        return DiskThreshold(free_percent=percent)
    try:
        size = parse_size(value)
    except ConfigError:
        size = -1
    if size < 0:
        raise _Invalid("a size (e.g. '1GiB') or a percentage from 0 to 100 (e.g. '5%')")
    return DiskThreshold(free_bytes=size)


#: Every setting, by table, with the check its value passes. A key is unique across tables, so it is
#: also the setting's name: the keyword of build_config and, with dashes, the flag.
SETTINGS: Final[Mapping[str, Mapping[str, Callable[[Any], Any]]]] = {
    "proxy": {
        "listen": _listen,
        "upstream": _upstream,
        "upstream_ca": _path,
        "log_format": _choice(*LOG_FORMATS),
        "max_head": _size,
        "capture": _bool,
        "admin": _listen,
        "admin_token": _token,
        "ready_min_free_disk": _disk_threshold,
        "fault": _faults,
        "workers": _workers,
    },
    "capture": {
        "out": _path,
        "on_full": _choice(*ON_FULL_POLICIES),
        "redact": _bool,
        "redact_headers": _texts,
        "redact_body": _texts,
        "rotate_bytes": _size,
        "rotate_seconds": _seconds,
        "compression_level": _level,
    },
    "timeouts": {
        "connect_timeout": _seconds,
        "read_timeout": _seconds,
        "write_timeout": _seconds,
        "head_timeout": _seconds,
        "body_timeout": _seconds,
        "keepalive_timeout": _seconds,
        "pool_idle_timeout": _seconds,
        "shutdown_timeout": _seconds,
    },
}
_CHECKS: Final = {key: check for table in SETTINGS.values() for key, check in table.items()}

#: The [timeouts] keys and the Timeouts fields they set.
TIMEOUT_FIELDS: Final[Mapping[str, str]] = {
    "connect_timeout": "connect",
    "read_timeout": "read",
    "write_timeout": "write",
    "head_timeout": "client_head",
    "body_timeout": "client_body",
    "keepalive_timeout": "keepalive",
    "pool_idle_timeout": "pool_idle",
    "shutdown_timeout": "shutdown_grace",
}

#: The keys of a [[route]] table.
ROUTE_KEYS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "prefix": _text,
    "upstream": _upstream,
    "method": _text,
    "host": _text,
    "capture": _bool,
    "sample": _sample,
    "forward_proxy_path": _bool,
    "connect_timeout": _seconds,
    "read_timeout": _seconds,
    "redact_headers": _texts,
    "redact_body": _texts,
    "name": _text,
}

#: Other names a setting is known by: the field it sets in ProxyConfig, or a former flag. An
#: unknown key that is one of them gets the setting's name as its hint (close spellings can mislead
#: there: ``rotate_size`` is nearer to ``rotate_seconds`` than to ``rotate_bytes``).
_OTHER_NAMES: Final[Mapping[str, str]] = {
    **{field: key for key, field in TIMEOUT_FIELDS.items()},
    "level": "compression_level",
    "enabled": "capture",
    "rotate_size": "rotate_bytes",
    "rotate_interval": "rotate_seconds",
}


def _checked(
    key: str, value: Any, where: str = "", checks: Mapping[str, Callable[[Any], Any]] = _CHECKS
) -> Any:
    """``value`` checked for the setting ``key``; ``where`` names its table in the message."""
    name = f"{key} in {where}" if where else key
    try:
        return checks[key](value)
    except _Invalid as exc:
        raise ConfigError(f"{name} must be {exc}, not {value!r}") from None
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _hint(key: str, valid: Collection[str]) -> str | None:
    """The key that ``key`` was probably meant to be: the setting it is another name for, or a
    close spelling; with its table when it lives in another one."""
    meant = _OTHER_NAMES.get(key, key)
    if meant in valid and meant != key:
        return f"did you mean {meant!r}?"
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    home = next((name for name, keys in SETTINGS.items() if meant in keys), None)
    return f"did you mean {meant!r} in [{home}]?" if home else None


def _reject_unknown(keys: Iterable[str], valid: Collection[str], where: str) -> None:
    """Raise for the first key not in ``valid``, naming the closest valid one."""
    for key in keys:
        if key not in valid:
            hint = _hint(key, valid) or f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown key {key!r} in {where}; {hint}")


def _settings_from_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The checked settings of a TOML document (its [[route]] tables aside), by key."""
    tables = [*SETTINGS, "route"]
    for name, value in doc.items():
        if name in tables:
            continue
        if isinstance(value, dict):
            close = difflib.get_close_matches(name, tables, n=1)
            hint = f"did you mean [{close[0]}]?" if close else f"tables: {', '.join(tables)}"
            raise ConfigError(f"unknown table [{name}]; {hint}")
        hint = _hint(name, ()) or f"settings go in the tables {', '.join(tables)}"
        raise ConfigError(f"unknown key {name!r} outside any table; {hint}")
    values: dict[str, Any] = {}
    for table, keys in SETTINGS.items():
        content = doc.get(table, {})
        if not isinstance(content, dict):
            raise ConfigError(f"[{table}] must be a table")
        _reject_unknown(content, keys, f"[{table}]")
        values.update((key, _checked(key, value, f"[{table}]")) for key, value in content.items())
    return values


def _route_from_table(table: Any, where: str) -> Route:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a route must be a table")
    _reject_unknown(table, ROUTE_KEYS, where)
    for key in ("prefix", "upstream"):
        if not isinstance(table.get(key), str):
            raise ConfigError(f"{where}: route needs a text {key!r}")
    values = {key: _checked(key, value, where, ROUTE_KEYS) for key, value in table.items()}
    try:
        prefix = normalize_prefix(values.pop("prefix"))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for key in ("method", "host"):
        if key in values:
            values[key] = values[key].upper() if key == "method" else values[key].lower()
    if "redact_headers" in values:
        values["redact_headers"] = tuple(h.lower() for h in values["redact_headers"])
    return Route(prefix=prefix, **values)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; errors become :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def routes_from_toml(doc: Mapping[str, Any]) -> list[Route]:
    """Routes from ``[[route]]`` tables."""
    tables = doc.get("route", [])
    if not isinstance(tables, list):
        raise ConfigError("'route' must be an array of tables ([[route]])")
    return [_route_from_table(t, f"[[route]] {i + 1}") for i, t in enumerate(tables)]


def build_config(
    *,
    doc: Mapping[str, Any] | None = None,
    listen: str | None = None,
    upstream: str | None = None,
    routes: Iterable[str] = (),
    upstream_ca: Path | str | None = None,
    log_format: str | None = None,
    max_head: int | str | None = None,
    capture: bool | None = None,
    out: Path | str | None = None,
    on_full: str | None = None,
    redact: bool | None = None,
    redact_headers: Iterable[str] = (),
    redact_body: Iterable[str] = (),
    rotate_bytes: int | str | None = None,
    rotate_seconds: float | None = None,
    compression_level: int | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    write_timeout: float | None = None,
    head_timeout: float | None = None,
    body_timeout: float | None = None,
    keepalive_timeout: float | None = None,
    pool_idle_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    admin: str | None = None,
    admin_token: str | None = None,
    ready_min_free_disk: int | str | None = None,
    timeouts: Mapping[str, float] | None = None,
    fault: Iterable[str | FaultSpec] = (),
    workers: int | None = None,
) -> ProxyConfig:
    """Merge a TOML document and command-line values into a checked :class:`ProxyConfig`.

    A keyword given (not None) wins over the document; the lists (``routes``, ``fault``, ``redact_headers``,
    ``redact_body``) add to it. Routes: ``upstream`` is a catch-all ``/`` route; ``--route`` specs
    and ``[[route]]`` tables add more; with no route at all, the built-in presets apply.
    ``timeouts`` maps :class:`Timeouts` field names to seconds (the ``*_timeout`` keywords win).
    """
    doc = doc or {}
    values = _settings_from_doc(doc)
    fields = {field: key for key, field in TIMEOUT_FIELDS.items()}
    for field, seconds in (timeouts or {}).items():
        if field not in fields:
            raise ConfigError(f"unknown timeout {field!r}; fields: {', '.join(fields)}")
        values[fields[field]] = _checked(fields[field], seconds)
    given = {
        "listen": listen,
        "upstream": upstream,
        "upstream_ca": upstream_ca,
        "log_format": log_format,
        "max_head": max_head,
        "capture": capture,
        "out": out,
        "on_full": on_full,
        "redact": redact,
        "rotate_bytes": rotate_bytes,
        "rotate_seconds": rotate_seconds,
        "compression_level": compression_level,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "write_timeout": write_timeout,
        "head_timeout": head_timeout,
        "body_timeout": body_timeout,
        "keepalive_timeout": keepalive_timeout,
        "pool_idle_timeout": pool_idle_timeout,
        "shutdown_timeout": shutdown_timeout,
        "admin": admin,
        "admin_token": admin_token,
        "ready_min_free_disk": ready_min_free_disk,
        "workers": workers,
    }
    values.update((key, _checked(key, value)) for key, value in given.items() if value is not None)
    for key, more in (
        ("redact_headers", redact_headers),
        ("redact_body", redact_body),
        ("fault", fault),
    ):
        values[key] = (*values.get(key, ()), *_checked(key, tuple(more)))

    all_routes = _all_routes(doc, routes, values.get("upstream"))
    settings = _capture_settings(values)
    _check_patterns(settings.redact_body, *(r.redact_body for r in all_routes))
    host, port = values.get("listen", DEFAULT_LISTEN)
    return ProxyConfig(
        listen_host=host,
        listen_port=port,
        routes=check_routes(all_routes),
        timeouts=Timeouts(
            **{field: values[key] for key, field in TIMEOUT_FIELDS.items() if key in values}
        ),
        limits=Limits(max_head=values.get("max_head", Limits().max_head)),
        capture=settings,
        upstream_ca=values.get("upstream_ca"),
        log_format=values.get("log_format", "text"),
        admin=_admin_settings(values),
        faults=values.get("fault", ()),
        workers=values.get("workers", 1),
    )


def _all_routes(
    doc: Mapping[str, Any], specs: Iterable[str], upstream: Upstream | None
) -> list[Route]:
    """``[[route]]`` tables, then ``--route`` specs, then the ``upstream`` catch-all; the presets
    when there is none at all."""
    routes = routes_from_toml(doc)
    routes += [parse_route_spec(r) for r in specs]
    if upstream is not None:
        routes.append(Route(prefix="/", upstream=upstream))
    return routes or list(preset_routes())


def _capture_settings(values: Mapping[str, Any]) -> CaptureSettings:
    """The [capture] settings from checked ``values``, defaults for the rest."""
    defaults = CaptureSettings()
    return CaptureSettings(
        enabled=values.get("capture", defaults.enabled),
        out=values.get("out", defaults.out),
        on_full=values.get("on_full", defaults.on_full),
        rotate_bytes=values.get("rotate_bytes", defaults.rotate_bytes),
        rotate_seconds=values.get("rotate_seconds", defaults.rotate_seconds),
        level=values.get("compression_level", defaults.level),
        redact=values.get("redact", defaults.redact),
        redact_headers=DEFAULT_REDACT_HEADERS + tuple(h.lower() for h in values["redact_headers"]),
        redact_body=DEFAULT_REDACT_BODY + values["redact_body"],
    )


def _admin_settings(values: Mapping[str, Any]) -> AdminSettings:
    """The admin listener's settings; an address off loopback without a token is refused."""
    address = values.get("admin")
    token = values.get("admin_token")
    if address is not None and token is None and not is_loopback(address[0]):
        raise ConfigError(
            f"admin address {address[0]}:{address[1]} is not loopback: give --admin-token "
            "(or WIRECAP_ADMIN_TOKEN), which every admin request must then carry"
        )
    return AdminSettings(
        address=address,
        token=token,
        min_free_disk=values.get("ready_min_free_disk", DEFAULT_MIN_FREE_DISK),
    )


def _check_patterns(*groups: Iterable[str]) -> None:
    for group in groups:
        for pattern in group:
            try:
                re.compile(pattern.encode())
            except re.error as exc:
                raise ConfigError(f"bad redaction pattern {pattern!r}: {exc}") from None
