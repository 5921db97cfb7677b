"""Captures written as a bash script of curl commands, one per exchange, to send the recorded
requests again by hand.

Each command names the method and the recorded URL and sends the recorded headers (hop-by-hop
and framing headers left out: curl frames the body itself) and the exact body bytes: a small
UTF-8 body as ``--data-binary $'...'`` (ANSI-C quoting, every byte exact, no trailing newline
added); a large or binary one decoded from a base64 here-document and piped to
``--data-binary @-``. Everything is quoted for bash, so no recorded byte is run as shell. Secrets
redacted in the capture stay redacted: put real credentials back before running the script.
"""

from __future__ import annotations

import base64
import shlex
from typing import IO, TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from wirecap.interop.export import Analyzed

#: Headers curl does not get: the connection's own, framing (curl sets them for the body it
#: sends), and wirecap's X-Proxy-Path.
SKIPPED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "host",
        "expect",
        "x-proxy-path",
    }
)
#: Bodies up to this size go on the command line (Linux allows 128 KiB per argument).
INLINE_MAX: Final = 32 * 1024

PREAMBLE: Final = """#!/usr/bin/env bash
# Recorded requests as curl commands (wirecap export --format curl), one per exchange.
# Secrets redacted in the capture are still redacted here: put real credentials back first.
set -u
"""


def ansi_c(data: bytes) -> str:
    """``data`` as a bash ``$'...'`` word that stands for exactly these bytes (no NUL allowed)."""
    out = ["$'"]
    for byte in data:
        char = chr(byte)
        if char in "\\'":
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif 0x20 <= byte < 0x7F or byte >= 0x80:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    out.append("'")
    return "".join(out).encode("latin-1").decode("utf-8", "surrogateescape")


def _inline(body: bytes) -> bool:
    if len(body) > INLINE_MAX or b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def command_lines(a: Analyzed) -> Iterator[str]:
    """The comment and curl command of one exchange (nothing for one without a request)."""
    ex = a.exchange
    if ex.request is None or not ex.method or ex.method == "-":
        return
    url = ex.upstream_url or ex.request.proxy_url or ex.target or "/"
    yield f"# {ex.id}  {ex.method} {ex.target} -> {ex.status if ex.status is not None else '-'}"
    if a.session is not None:
        yield "# a WebSocket session: curl cannot send it again (wirecap replay can)"
        yield ""
        return
    body = a.request_payload.join()
    words = [f"curl -sS --request {shlex.quote(ex.method)} {shlex.quote(url)}"]
    headers = a.request_head.headers if a.request_head is not None else ()
    words += [f"-H {shlex.quote(f'{n}: {v}')}" for n, v in headers if n.lower() not in SKIPPED]
    tag = f"WIRECAP_BODY_{ex.id}"
    if body and _inline(body):
        words.append(f"--data-binary {ansi_c(body)}")
    elif body:
        words.append("--data-binary @-")
        yield f"base64 -d <<'{tag}' |"
        encoded = base64.b64encode(body).decode()
        yield from (encoded[i : i + 76] for i in range(0, len(encoded), 76))
        yield tag
    yield " \\\n  ".join(words)
    yield ""


def write_curl(analyzed: Iterable[Analyzed], out: IO[str]) -> int:
    """Write the script; returns how many commands it holds."""
    out.write(PREAMBLE)
    count = 0
    for a in analyzed:
        for line in command_lines(a):
            out.write("\n" if not line else line + "\n")
            if line.startswith("# "):
                count += 1
    return count
