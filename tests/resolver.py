"""A hostname resolver for tests in which some names do not resolve, without asking any DNS server.

Installed with trio's own hook (``trio.socket.set_custom_hostname_resolver``) for the current run;
numeric addresses never reach a resolver, and other names are resolved by the system as usual.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import trio

UNRESOLVABLE = "nowhere.invalid"


class Unresolvable(trio.abc.HostnameResolver):
    """``nowhere.invalid`` fails the way a name without DNS records does (EAI_NONAME)."""

    async def getaddrinfo(self, host, port, family=0, kind=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name == UNRESOLVABLE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await trio.to_thread.run_sync(
            socket.getaddrinfo, host, port, family, kind, proto, flags
        )

    async def getnameinfo(self, sockaddr, flags):
        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


@contextlib.contextmanager
def unresolvable_names() -> Iterator[None]:
    previous = trio.socket.set_custom_hostname_resolver(Unresolvable())
    try:
        yield
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
