"""Where and how to reach NATS: server URL, stream, subject, credentials and TLS. Sans-IO.

Settings come from flags and from a table of the TOML config (``[ship]`` for the shipper and
``wirecap proxy --ship``, ``[collect]`` for the collector); a flag overrides the same key of the
table. Keys are the flag names with underscores. Everything is checked here, so a bad value is a
one-line :class:`~wirecap.fleet.FleetError` before anything connects.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from wirecap.fleet import FleetError

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_STREAM: Final = "WIRECAP"
DEFAULT_SUBJECT: Final = "wirecap"
DEFAULT_DURABLE: Final = "wirecap-collector"
#: Letters, digits, ``-`` and ``_``: safe as one NATS subject token, a stream or consumer name,
#: and a file name part.
_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_SUBJECT: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
URL_SCHEMES: Final = ("nats", "tls")
#: Keys a ``[ship]`` or ``[collect]`` table may hold besides the shared connection keys.
SHIP_KEYS: Final = frozenset({"to", "source", "window"})
COLLECT_KEYS: Final = frozenset({"url", "out", "durable", "name", "ack_wait", "batch"})
CONNECTION_KEYS: Final = frozenset(
    {"stream", "subject", "user", "password", "token", "creds", "tls_ca", "tls_cert", "tls_key"}
)


def token_of(text: str) -> str:
    """``text`` made into one subject token and file name part: other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def default_source() -> str:
    """The source name a shipper uses unless told: this host's name, as a token."""
    return token_of(socket.gethostname())


def check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise FleetError(f"{what} {value!r}: use letters, digits, '-' and '_' only")
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NatsSettings:
    """How to reach the stream. ``subject`` is the prefix: data frames go to
    ``SUBJECT.data.SOURCE``, segment header frames to ``SUBJECT.head.SOURCE.SEGMENT``."""

    url: str
    stream: str = DEFAULT_STREAM
    subject: str = DEFAULT_SUBJECT
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in URL_SCHEMES or not parts.hostname:
            raise FleetError(f"NATS URL {self.url!r}: use nats://HOST:PORT (or tls://HOST:PORT)")
        check_name(self.stream, "stream name")
        if not _SUBJECT.fullmatch(self.subject):
            raise FleetError(
                f"subject {self.subject!r}: dot-separated tokens of letters, digits, '-' and '_'"
            )
        if self.password is not None and self.user is None:
            raise FleetError("a NATS password needs a user (--user)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise FleetError("a TLS client certificate needs both --tls-cert and --tls-key")
        for path in (self.creds, self.tls_ca, self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise FleetError(f"no such file: {path}")

    @property
    def data_subjects(self) -> str:
        """The subjects a collector consumes: every source's data frames."""
        return f"{self.subject}.data.>"

    def data_subject(self, source: str) -> str:
        return f"{self.subject}.data.{source}"

    def head_subject(self, source: str, segment: str) -> str:
        return f"{self.subject}.head.{source}.{token_of(segment)}"

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "tls" or self.tls_ca is not None

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connection, or None for plain TCP."""
        if not self.uses_tls and self.tls_cert is None:
            return None
        context = ssl.create_default_context(
            cafile=str(self.tls_ca) if self.tls_ca is not None else None
        )
        if self.tls_cert is not None and self.tls_key is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (credentials and TLS; reconnect forever)."""
        options: dict[str, Any] = {
            "servers": [self.url],
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
        }
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password or ""
        if self.token is not None:
            options["token"] = self.token
        if self.creds is not None:
            options["user_credentials"] = str(self.creds)
        tls = self.tls_context()
        if tls is not None:
            options["tls"] = tls
        return options


def merged(
    table: Mapping[str, Any] | None, flags: Mapping[str, Any], keys: frozenset[str], where: str
) -> dict[str, Any]:
    """The settings of a TOML ``table`` with the ``flags`` given (not None) laid over them.

    Unknown keys in the table are an error naming the table; paths become :class:`Path`."""
    values: dict[str, Any] = {}
    valid = keys | CONNECTION_KEYS
    for key, value in (table or {}).items():
        if key not in valid:
            raise FleetError(
                f"unknown key {key!r} in [{where}]; valid keys: {', '.join(sorted(valid))}"
            )
        values[key] = value
    values.update({k: v for k, v in flags.items() if v is not None})
    for key in ("creds", "tls_ca", "tls_cert", "tls_key", "out"):
        if key in values and not isinstance(values[key], Path):
            values[key] = Path(_text(values[key], key, where))
    return values


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise FleetError(f"[{where}] {key} must be a string")
    return value


def nats_settings(url: str, values: Mapping[str, Any], where: str) -> NatsSettings:
    """The :class:`NatsSettings` of merged ``values`` (see :func:`merged`)."""
    texts: dict[str, Any] = {
        key: _text(values[key], key, where)
        for key in ("stream", "subject", "user", "password", "token")
        if key in values
    }
    paths = {
        key: values[key] for key in ("creds", "tls_ca", "tls_cert", "tls_key") if key in values
    }
    return NatsSettings(url=_text(url, "url", where), **texts, **paths)
