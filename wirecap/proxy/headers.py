"""What the proxy adds to traffic: the X-Proxy-Path line, the URL it records, and the responses the
proxy makes itself. Sans-IO. (Heads are edited for forwarding in :mod:`wirecap.proxy.http1`.)"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from wirecap.capture.records import proxy_path_line

if TYPE_CHECKING:
    from wirecap.proxy.http1 import Headers


def add_proxy_path_line(head: bytes, proxy_url: bytes) -> bytes:
    """Insert ``X-Proxy-Path: URL`` as the last header line of a serialized head (see FORMAT.md)."""
    if not head.endswith(b"\r\n\r\n"):
        raise ValueError("not a complete HTTP head")
    return head[:-2] + proxy_path_line(proxy_url) + b"\r\n"


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


def error_body(status: int, kind: str, message: str, **extra: object) -> tuple[Headers, bytes]:
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
    headers: Headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
        (b"X-Wirecap-Error", kind.encode()),
    ]
    return headers, body
