"""What the detail view offers to take away: a ``curl`` command that sends the request again, a
``wirecap replay`` command line, the exchange as a capture file of its own, and as HAR. Sans-IO.

Credentials never go into a command: every credential header becomes an environment variable
(``"Authorization: Bearer $OPENAI_API_KEY"``), whatever the capture holds, so a command can be
copied into a chat or a ticket.
"""

from __future__ import annotations

import io
import shlex
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from wirecap.capture import frames
from wirecap.capture.index import IndexBuilder
from wirecap.inspect.views import is_binary
from wirecap.interop.export import write_har

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wirecap.capture import Header, Record
    from wirecap.inspect.analysis import Analyzed

#: Headers a command leaves out: curl frames the message itself, and X-Proxy-Path is wirecap's.
_LEFT_OUT: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "expect",
        "x-proxy-path",
    }
)
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
#: A request body larger than this is not written into the command; it names the download.
INLINE_BODY: Final = 64 * 1024


def key_variable(url: str | None) -> str:
    """The environment variable a command reads a credential from, named after the API's host."""
    host = (urlsplit(url).hostname or "") if url else ""
    for word, variable in (
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("openrouter", "OPENROUTER_API_KEY"),
        ("openai", "OPENAI_API_KEY"),
    ):
        if word in host:
            return variable
    return "API_KEY"


def _credential(name: str, value: str, variable: str) -> str:
    """``Name: [scheme] $VARIABLE``, double-quoted so the shell fills it in."""
    lower = name.lower()
    if lower == "cookie":
        variable = "COOKIE"
    scheme = value.split(" ", 1)[0] if " " in value.strip() else ""
    if lower in ("authorization", "proxy-authorization") and scheme.isalnum():
        return f'"{name}: {scheme} ${variable}"'
    return f'"{name}: ${variable}"'


def credential_args(a: Analyzed, variable: str) -> list[str]:
    """``--header`` arguments for ``wirecap replay``: the request's credential headers, each
    taken from an environment variable."""
    head = a.request_head
    if head is None:
        return []
    return [
        f"--header {_credential(k, v, variable)}"
        for k, v in head.headers
        if k.lower() in CREDENTIAL_HEADERS
    ]


def curl_command(a: Analyzed) -> str:
    """A ``curl`` command that sends the request again to the URL it went to upstream (the URL
    the client asked the proxy for when there is none), with the headers as sent."""
    ex = a.exchange
    url = ex.upstream_url or (ex.request.proxy_url if ex.request else None) or ex.target or ""
    variable = key_variable(url)
    parts = ["curl", "-sS"]
    if a.facts.streamed:
        parts.append("-N")
    if ex.method and ex.method != "GET":
        parts += ["-X", shlex.quote(ex.method)]
    parts.append(shlex.quote(url))
    head = a.request_head
    for name, value in head.headers if head is not None else []:
        lower = name.lower()
        if lower in _LEFT_OUT:
            continue
        if lower in CREDENTIAL_HEADERS:
            parts += ["-H", _credential(name, value, variable)]
        else:
            parts += ["-H", shlex.quote(f"{name}: {value}")]
    body = ex.request_body
    if body:
        if len(body) <= INLINE_BODY and not is_binary(body):
            parts += ["--data-binary", shlex.quote(body.decode("utf-8"))]
        else:
            parts += ["--data-binary", shlex.quote(f"@{ex.id}-request-body.bin")]
    return " ".join(parts)


def replay_command(a: Analyzed) -> str:
    """A ``wirecap replay`` command line for this exchange alone: it reads the exchange's own
    capture file (:func:`one_exchange_capture`, downloaded from the page) and sends the request
    to the upstream it went to."""
    ex = a.exchange
    target = ex.upstream_url or (ex.request.proxy_url if ex.request else None) or ""
    parts = urlsplit(target)
    base = f"{parts.scheme}://{parts.netloc}/" if parts.scheme and parts.netloc else "URL"
    command = ["wirecap", "replay", shlex.quote(f"{ex.id}.cbor.zst"), "--target", shlex.quote(base)]
    command += credential_args(a, key_variable(target))
    return " ".join(command)


def commands(a: Analyzed) -> dict[str, Any]:
    ex = a.exchange
    body = ex.request_body
    return {
        "curl": curl_command(a),
        "replay": replay_command(a),
        "curl_needs_body_file": bool(body) and (len(body) > INLINE_BODY or is_binary(body)),
    }


def one_exchange_capture(header: Header, records: Sequence[Record]) -> bytes:
    """A complete capture file (header, one data frame, index, footer) holding ``records``, the
    records of one exchange: what ``wirecap replay``, ``serve`` and ``inspect`` read."""
    compressor = frames.new_compressor()
    out = frames.encode_data_frame([header], compressor)
    builder = IndexBuilder()
    builder.observe_all(records, len(out))
    out += frames.encode_data_frame(records, compressor)
    index = frames.encode_index_frame(builder.build().to_map())
    return out + index + frames.encode_footer(len(out), len(index))


def har_document(a: Analyzed) -> str:
    """The exchange as a HAR 1.2 document of one entry."""
    out = io.StringIO()
    write_har([a], out)
    return out.getvalue()
