"""Header rewriting between client and upstream, framing checks, and proxy-made responses. Sans-IO."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

HeaderList = list[tuple[bytes, bytes]]

#: Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and are never forwarded.
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
PROXY_PATH: Final = b"X-Proxy-Path"


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def framing_error(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why a request's body framing is unsafe to forward, or None when it is fine.

    Rejects the request-smuggling shapes: Content-Length together with Transfer-Encoding, several
    different Content-Length values, a Content-Length that is not a number, and any Transfer-Encoding
    other than a single ``chunked``.
    """
    lengths: set[bytes] = set()
    encodings: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif lower == b"transfer-encoding":
            encodings.extend(v.strip().lower() for v in value.split(b","))
    if lengths and encodings:
        return "request has both Content-Length and Transfer-Encoding"
    if len(lengths) > 1:
        return "request has conflicting Content-Length values"
    if lengths and not next(iter(lengths)).isdigit():
        return "request has a malformed Content-Length"
    if encodings and encodings != [b"chunked"]:
        return "request Transfer-Encoding must be exactly 'chunked'"
    return None


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]], host: bytes, proxy_url: bytes | None = None
) -> HeaderList:
    """The client's headers as they go upstream: same order and casing, Host replaced, hop-by-hop
    headers removed, and ``X-Proxy-Path`` appended last when ``proxy_url`` is given (routes with
    ``forward_proxy_path``)."""
    headers = list(headers)
    drop = HOP_BY_HOP | connection_tokens(headers)
    out: HeaderList = []
    saw_host = False
    for name, value in headers:
        lower = name.lower()
        if lower in drop or lower == PROXY_PATH.lower():
            continue
        if lower == b"host":
            if saw_host:
                continue
            saw_host = True
            value = host
        out.append((name, value))
    if not saw_host:
        out.insert(0, (b"Host", host))
    if proxy_url is not None:
        out.append((PROXY_PATH, proxy_url))
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    """The upstream's response headers as they go to the client: hop-by-hop headers removed.

    Content-Length and Transfer-Encoding stay; h11 checks them against the body it frames.
    """
    headers = list(headers)
    drop = HOP_BY_HOP | connection_tokens(headers)
    return [(n, v) for n, v in headers if n.lower() not in drop]


def add_proxy_path_line(head: bytes, proxy_url: bytes) -> bytes:
    """Insert ``X-Proxy-Path: URL`` as the last header line of a serialized head (see FORMAT.md)."""
    if not head.endswith(b"\r\n\r\n"):
        raise ValueError("not a complete HTTP head")
    return head[:-2] + PROXY_PATH + b": " + proxy_url + b"\r\n\r\n"


def proxy_url(listen_host: str, listen_port: int, host_header: bytes | None, target: str) -> str:
    """The full URL the client asked the proxy for: what X-Proxy-Path records.

    Uses the proxy's listen address; for a wildcard listen address (0.0.0.0, ::) the client's Host
    header says which address it used.
    """
    if listen_host in ("0.0.0.0", "::", "") and host_header:
        authority = host_header.decode("latin-1")
    else:
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        authority = f"{host}:{listen_port}"
    if not target.startswith("/"):
        return target  # absolute-form: the client already sent a full URL
    return f"http://{authority}{target}"


def error_body(status: int, kind: str, message: str, **extra: object) -> tuple[HeaderList, bytes]:
    """Headers and JSON body of a response the proxy makes itself (400, 404, 431, 502, 504...).

    The shape follows the OpenAI-style ``{"error": {...}}`` that LLM clients already know how to print.
    """
    body = json.dumps(
        {
            "error": {
                "type": kind,
                "message": message,
                "status": status,
                "source": "wirecap",
                **extra,
            }
        },
        separators=(",", ":"),
    ).encode()
    headers: HeaderList = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
        (b"X-Wirecap-Error", kind.encode()),
    ]
    return headers, body
