"""Connect failures said in words a user acts on. Sans-IO.

A host name that does not resolve reaches Python as :class:`socket.gaierror`, whose errno is a
resolver code (``EAI_NONAME`` is -2 on Linux), not an errno: ``os.strerror`` turns it into
"Unknown error -2". These functions name the resolver failure instead.
"""

from __future__ import annotations

import socket


def resolver_failure(exc: BaseException) -> str | None:
    """``"the host name does not resolve (<the resolver's reason>)"`` when ``exc`` is a resolver
    error, else None (the caller describes other errors its own way)."""
    if not isinstance(exc, socket.gaierror):
        return None
    reason = exc.strerror or (exc.args[-1] if exc.args else "") or "no address"
    return f"the host name does not resolve ({reason})"


def resolver_failure_in(exc: BaseException) -> str | None:
    """:func:`resolver_failure` of ``exc`` or of any exception in its cause/context chain (a
    connect error raised ``from`` the resolver's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = resolver_failure(current)
        if text is not None:
            return text
        current = current.__cause__ or current.__context__
    return None
